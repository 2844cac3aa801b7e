"""Command handlers: load -> decide -> append -> wait until the read model has the event.

One command appends at most one event, so every append is atomic. A concurrent writer on the
same subject makes the append fail; the handler reloads and decides again (bounded), unless
the client sent If-Match, in which case the conflict is the client's to resolve.
"""

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import aiosqlite
import msgspec
import nats.errors
import nats.js.errors

from commands import keys, normalize, state
from commands.log import EventLog, Unavailable, WrongSequence
from commands.passwords import hash_password
from commands.sealing import Sealer, dkim_aad, tls_aad
from core import alias as alias_agg
from core import backup as backup_doc
from core import dkim as dkim_agg
from core import domain as domain_agg
from core import limits
from core import mailbox as mailbox_agg
from core import revert as revert_agg
from core import security as security_agg
from core import tiers as tiers_agg
from core import tls as tls_agg
from core import token as token_agg
from core import whitelist as whitelist_agg
from core.config import ANTISPAM_FIELDS, DomainOverrides, GlobalConfig, MailboxOverrides, Tier
from core.errors import Conflict, DomainError, LimitExceeded, NotFound, ValidationFailed
from core.events import (
    AliasCreated,
    AliasDeleted,
    AliasRestored,
    AliasUpdated,
    DomainCreated,
    DomainDeleted,
    DomainOverridesSet,
    DomainRestored,
    DomainUpdated,
    Envelope,
    Event,
    MailboxCreated,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxRestored,
    MailboxUpdated,
    Meta,
    SequenceReserved,
    Snapshot,
    SystemRestored,
    TlsCertRegistered,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    WhitelistEntryRestored,
    decode,
    encode,
)
from core.ids import sequence
from core.mailbox import DomainRef

MAX_ATTEMPTS = 8
LEAST_USED_IP = (
    "SELECT outgoing_ip, count(*) FROM domains WHERE outgoing_ip IN ({}) GROUP BY outgoing_ip"
)
EVENT_BY_COMMAND = (
    "SELECT seq, data, outcome FROM events WHERE command_id = ? AND command_id GLOB 'idem-*' "
    "ORDER BY seq LIMIT 1"
)
EVENT_AT = "SELECT seq, data, outcome FROM events WHERE seq = ?"
# Events the projector may leave without effect (a cap reached, the domain deleted meanwhile,
# the name or address of an undelete taken meanwhile).
REJECTABLE = (
    MailboxCreated,
    MailboxUpdated,
    AliasCreated,
    DomainRestored,
    MailboxRestored,
    AliasRestored,
    WhitelistEntryRestored,
)
TAKEN_MEANWHILE = ("is in use", "exists again", "is listed again")
RESTORE_SUBJECT = "system.restore"
RESERVE_SUBJECT = "system.reserve"
RESERVE_WINDOW = 1000  # filler publishes in flight at once
MAX_RESERVED = 1_000_000  # fillers one restore may append (a crafted id must not run forever)
# The first later event (that took effect) of the same resource, or a restore since.
LATER_CHANGE = (
    "SELECT seq, type FROM events WHERE seq > ?1 AND outcome = '' "
    "AND (resource = ?2 OR type = 'system.restored') ORDER BY seq LIMIT 1"
)
# After a restore, any later change of the data plane it restored.
LATER_DATA_CHANGE = (
    "SELECT seq, type FROM events WHERE seq > ? AND outcome = '' AND (type = 'system.restored' "
    "OR resource GLOB 'domain:*' OR resource GLOB 'mailbox:*' OR resource GLOB 'alias:*' "
    "OR resource GLOB 'config:*' OR resource GLOB 'whitelist:*' OR resource GLOB 'dkim:*' "
    "OR resource GLOB 'tls:*') ORDER BY seq LIMIT 1"
)

S = TypeVar("S")
_next_command_id = sequence(secrets.token_hex(8) + "-")


class Waiter(Protocol):
    async def wait_for(self, seq: int, timeout: float = 5.0) -> bool: ...

    def rejection(self, seq: int) -> str: ...


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks, from where; an Idempotency-Key makes the command id (and Nats-Msg-Id)."""

    actor: str
    actor_id: str = ""
    source_ip: str = ""
    request_id: str = ""
    idempotency_key: str = ""
    fingerprint: str = ""
    if_match: int | None = None
    reverts: int = 0  # the sequence a revert reverts (recorded in Meta.reverts)


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """What a command did: the event it appended (None if nothing needed doing) and its seq."""

    seq: int
    event: Event | None
    at: datetime
    replayed: bool = False


TOKEN_PREFIX = "mp_"
DOMAIN_NAMES_EXIST = "SELECT name FROM domains WHERE name IN (SELECT value FROM json_each(?))"


def new_token_secret() -> tuple[str, str, str]:
    """(secret, its SHA-256 hex, a short hint). The mp_ prefix lets secret scanners find leaks."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, token_sha256(secret), secret[:8]


def token_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Commands:
    """Every write of the API goes through here."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        waiter: Waiter,
        event_log: Callable[[], EventLog | None],
        prefix: str,
        host_ips: Callable[[], tuple[str, ...]],
        wait_s: float = 5.0,
        sealer: Sealer | None = None,
    ) -> None:
        self.sealer = sealer
        self.db = db
        self.waiter = waiter
        self._event_log = event_log
        self.prefix = prefix
        self.host_ips = host_ips
        self.wait_s = wait_s

    # ---- the one loop ------------------------------------------------------------------

    async def _run(
        self,
        ctx: Context,
        load: Callable[[], Awaitable[state.Loaded[S]]],
        decide: Callable[[S], list[Event]],
    ) -> Result:
        command_id = self._command_id(ctx)
        if ctx.idempotency_key:
            earlier = await self._earlier(command_id, ctx.fingerprint)
            if earlier is not None:
                return earlier
        for _ in range(MAX_ATTEMPTS):
            loaded = await load()
            if ctx.if_match is not None and ctx.if_match != loaded.version:
                raise Conflict(
                    "resource has changed",
                    f"If-Match {ctx.if_match} but the current ETag is {loaded.version}",
                )
            events = decide(loaded.state)
            now = datetime.now(UTC)
            if not events:
                return Result(seq=loaded.version, event=None, at=now)
            if len(events) != 1:
                raise AssertionError("a command appends at most one event")
            env = Envelope(meta=self._meta(ctx, command_id, now), event=events[0])
            log = self._log()
            try:
                seq, duplicate = await log.append(loaded.subject, env, loaded.version, command_id)
            except WrongSequence as exc:
                if ctx.if_match is not None:
                    raise Conflict("resource has changed", "a concurrent change won") from None
                await self.waiter.wait_for(exc.actual, self.wait_s)
                continue
            await self.wait(seq)
            if duplicate:  # an earlier attempt of this very command was stored: answer with it
                earlier = await self._stored(EVENT_AT, seq, ctx.fingerprint)
                if earlier is not None:
                    return earlier
            if isinstance(events[0], REJECTABLE):
                await self._check_outcome(seq)
            return Result(seq=seq, event=events[0], at=now)
        raise Conflict("too many concurrent changes", "retry the request")

    async def _check_outcome(self, seq: int) -> None:
        """A concurrent request may have taken the last slot: the projector, which applies the
        log in order, is the arbiter, and remembers what it left without effect."""
        self._refuse(self.waiter.rejection(seq))

    @staticmethod
    def _refuse(reason: str) -> None:
        if reason == "the domain no longer exists":
            raise NotFound("domain not found", "the domain was deleted meanwhile")
        if reason.endswith(TAKEN_MEANWHILE):  # an undelete whose name or address was taken
            raise Conflict("cannot revert", reason)
        if reason:
            raise LimitExceeded("domain limit exceeded", reason)

    async def wait(self, seq: int) -> None:
        if not await self.waiter.wait_for(seq, self.wait_s):
            raise Unavailable(f"change recorded at sequence {seq} but the read model is behind")

    def _log(self) -> EventLog:
        log = self._event_log()
        if log is None or not log.connected:
            raise Unavailable("event log (NATS) is not connected")
        return log

    @staticmethod
    def _command_id(ctx: Context) -> str:
        if ctx.idempotency_key:
            raw = f"{ctx.actor_id or ctx.actor}\x00{ctx.idempotency_key}".encode()
            return "idem-" + hashlib.sha256(raw).hexdigest()[:40]
        return _next_command_id()

    @staticmethod
    def _meta(ctx: Context, command_id: str, now: datetime) -> Meta:
        return Meta(
            actor=ctx.actor,
            actor_id=ctx.actor_id,
            source_ip=ctx.source_ip,
            request_id=ctx.request_id,
            command_id=command_id,
            at=now,
            fingerprint=ctx.fingerprint if ctx.idempotency_key else "",
            reverts=ctx.reverts,
        )

    async def _earlier(self, command_id: str, fingerprint: str) -> Result | None:
        """The result of an earlier command with the same Idempotency-Key, if any."""
        return await self._stored(EVENT_BY_COMMAND, command_id, fingerprint)

    async def _stored(self, sql: str, key: object, fingerprint: str) -> Result | None:
        """A stored command's result, as the first answer gave it: the same object, or the
        same refusal when the projector left it without effect."""
        async with self.db.execute(sql, (key,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        seq, env, outcome = int(row[0]), decode(str(row[1]).encode()), str(row[2])
        if env.meta.fingerprint != fingerprint:
            raise Conflict(
                "Idempotency-Key already used",
                "that key was used for a different request; use a new key for a new request",
            )
        if outcome.startswith("rejected: "):
            self._refuse(outcome.removeprefix("rejected: "))
        return Result(seq=seq, event=env.event, at=env.meta.at, replayed=True)

    # ---- domains -----------------------------------------------------------------------

    async def create_domain(self, ctx: Context, name: str, outgoing_ip: str) -> Result:
        name = normalize.domain_name(name)
        ip = outgoing_ip.strip()
        if ip.lower() == "auto":
            ip = await self.least_used_ip()
        cmd = domain_agg.CreateDomain(name=name, outgoing_ip=ip)
        return await self._run(
            ctx,
            lambda: state.domain_by_name(self.db, name, self.prefix),
            lambda s: domain_agg.decide(cmd, s),
        )

    async def least_used_ip(self) -> str:
        """The host IP with the fewest domains bound to it (first listed wins a tie)."""
        ips = self.host_ips()
        if not ips:
            raise DomainError(
                "no host IP available for outgoing_ip=auto",
                "set MAILPANEL_HOST_IPS to the addresses mail may leave from",
            )
        sql = LEAST_USED_IP.format(",".join("?" * len(ips)))
        async with self.db.execute(sql, ips) as cur:
            used = {str(r[0]): int(r[1]) async for r in cur}
        return min(ips, key=lambda ip: (used.get(ip, 0), ips.index(ip)))

    async def update_domain(
        self, ctx: Context, domain_id: int, active: bool | None, outgoing_ip: str | None
    ) -> Result:
        if outgoing_ip is not None and outgoing_ip.strip().lower() == "auto":
            outgoing_ip = await self.least_used_ip()
        cmd = domain_agg.UpdateDomain(
            id=domain_id,
            active=active,
            outgoing_ip=None if outgoing_ip is None else outgoing_ip.strip(),
        )
        return await self._run(
            ctx,
            lambda: state.domain_by_id(self.db, domain_id, self.prefix),
            lambda s: domain_agg.decide(cmd, s),
        )

    async def delete_domain(self, ctx: Context, domain_id: int) -> Result:
        cmd = domain_agg.DeleteDomain(id=domain_id)
        return await self._run(
            ctx,
            lambda: state.domain_by_id(self.db, domain_id, self.prefix),
            lambda s: domain_agg.decide(cmd, s),
        )

    # ---- mailboxes ---------------------------------------------------------------------

    async def create_mailbox(
        self, ctx: Context, domain_id: int, username: str, password: str, quota: int | None
    ) -> Result:
        domain = await state.domain_ref(self.db, domain_id)
        local = mailbox_agg.split_username(username.strip().lower(), domain)
        password_hash = await hash_password(password)
        cmd = mailbox_agg.CreateMailbox(
            domain=domain,
            username=username.strip().lower(),
            password_hash=password_hash,
            quota=quota,
        )
        addr = f"{local}@{domain.name}"

        async def load() -> state.Loaded[mailbox_agg.AddressState]:
            loaded = await state.address(self.db, addr, self.prefix)
            if not loaded.state.at.kind:
                await self._check_mailbox_caps(domain_id, quota)
            return state.Loaded(loaded.state.at, loaded.subject, loaded.version)

        return await self._run(ctx, load, lambda s: mailbox_agg.decide(cmd, s))

    async def _effective_quota(self, quota: int | None) -> int:
        if quota is not None:
            return quota
        loaded = await state.tier(self.db, "mailbox_defaults", self.prefix)
        return int(getattr(loaded.state.current, "quota_bytes", 0))

    async def _check_mailbox_caps(
        self, domain_id: int, quota: int | None, replacing: int | None = None
    ) -> None:
        usage = await state.domain_usage(self.db, domain_id)
        if usage is not None:
            effective = await self._effective_quota(quota)
            limits.check(limits.mailbox_refusal(usage, effective, replacing))

    async def change_password(self, ctx: Context, mailbox_id: int, password: str) -> Result:
        await state.mailbox_by_id(self.db, mailbox_id, self.prefix)  # 404 before hashing
        cmd = mailbox_agg.ChangePassword(id=mailbox_id, password_hash=await hash_password(password))
        return await self._run(
            ctx,
            lambda: state.mailbox_by_id(self.db, mailbox_id, self.prefix),
            lambda s: mailbox_agg.decide(cmd, s),
        )

    async def update_mailbox(
        self, ctx: Context, mailbox_id: int, active: bool | None, quota: int | None
    ) -> Result:
        cmd = mailbox_agg.UpdateMailbox(id=mailbox_id, active=active, quota=quota)

        async def load() -> state.Loaded[mailbox_agg.AddressState]:
            loaded = await state.mailbox_by_id(self.db, mailbox_id, self.prefix)
            if quota is not None and quota != loaded.state.quota:
                domain_id, current = await state.mailbox_quota(self.db, mailbox_id)
                await self._check_mailbox_caps(domain_id, quota, current)
            return loaded

        return await self._run(ctx, load, lambda s: mailbox_agg.decide(cmd, s))

    async def delete_mailbox(self, ctx: Context, mailbox_id: int) -> Result:
        cmd = mailbox_agg.DeleteMailbox(id=mailbox_id)
        return await self._run(
            ctx,
            lambda: state.mailbox_by_id(self.db, mailbox_id, self.prefix),
            lambda s: mailbox_agg.decide(cmd, s),
        )

    # ---- aliases -----------------------------------------------------------------------

    async def create_alias(self, ctx: Context, source: str, destination: str) -> Result:
        src = normalize.alias_source(source)
        dests = normalize.address_list(destination)
        domain_name = src.rpartition("@")[2]
        domain = DomainRef()

        async def load() -> state.Loaded[alias_agg.AliasState]:
            """Domain, address, subject sequence and alias cap in one statement (hot path)."""
            nonlocal domain
            domain, loaded, refusal = await state.alias_create(
                self.db, src, domain_name, self.prefix
            )
            if domain.id is None:
                raise ValidationFailed(
                    "source", f"source domain {domain_name} is not managed by this server"
                )
            if not loaded.state.at.kind:
                limits.check(refusal)
            return loaded

        def decide(s: alias_agg.AliasState) -> list[Event]:
            cmd = alias_agg.CreateAlias(domain=domain, source=src, destinations=dests)
            return alias_agg.decide(cmd, s)

        return await self._run(ctx, load, decide)

    async def update_alias(self, ctx: Context, alias_id: int, destination: str) -> Result:
        cmd = alias_agg.UpdateAlias(id=alias_id, destinations=normalize.address_list(destination))
        return await self._run(
            ctx,
            lambda: state.alias_by_id(self.db, alias_id, self.prefix),
            lambda s: alias_agg.decide(cmd, s),
        )

    async def delete_alias(self, ctx: Context, alias_id: int) -> Result:
        cmd = alias_agg.DeleteAlias(id=alias_id)
        return await self._run(
            ctx,
            lambda: state.alias_by_id(self.db, alias_id, self.prefix),
            lambda s: alias_agg.decide(cmd, s),
        )

    # ---- tokens and security settings --------------------------------------------------

    async def create_token(
        self,
        ctx: Context,
        name: str,
        scope: str,
        domains: tuple[str, ...],
        expires_at: datetime | None,
    ) -> tuple[Result, str]:
        """Returns the result and the secret, which exists nowhere else from now on."""
        names = tuple(normalize.domain_name(d, "domains") for d in domains)
        if names:
            found = {
                str(r[0])
                for r in await self.db.execute_fetchall(
                    DOMAIN_NAMES_EXIST, (msgspec.json.encode(names).decode(),)
                )
            }
            missing = sorted(set(names) - found)
            if missing:
                raise ValidationFailed("domains", f"unknown domain: {', '.join(missing)}")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValidationFailed("expires_at", "expires_at must be RFC 3339 with a time zone")
        secret, digest, hint = new_token_secret()
        cmd = token_agg.CreateToken(
            name=name.strip(),
            scope=scope,
            domains=names,
            expires_at=expires_at,
            secret_sha256=digest,
            hint=hint,
            now=datetime.now(UTC),
        )
        result = await self._run(
            ctx,
            lambda: state.token_by_name(self.db, cmd.name, self.prefix),
            lambda s: token_agg.decide(cmd, s),
        )
        return result, secret

    async def rotate_token(self, ctx: Context, token_id: int) -> tuple[Result, str]:
        secret, digest, hint = new_token_secret()
        cmd = token_agg.RotateToken(id=token_id, secret_sha256=digest, hint=hint)
        result = await self._run(
            ctx,
            lambda: state.token_by_id(self.db, token_id, self.prefix),
            lambda s: token_agg.decide(cmd, s),
        )
        return result, secret

    async def revoke_token(self, ctx: Context, token_id: int) -> Result:
        cmd = token_agg.RevokeToken(id=token_id)
        return await self._run(
            ctx,
            lambda: state.token_by_id(self.db, token_id, self.prefix),
            lambda s: token_agg.decide(cmd, s),
        )

    async def set_security(
        self,
        ctx: Context,
        wanted: security_agg.SecuritySettings,
        defaults: security_agg.SecuritySettings,
    ) -> Result:
        cmd = security_agg.ChangeSecuritySettings(settings=wanted)
        return await self._run(
            ctx,
            lambda: state.security(self.db, defaults, self.prefix),
            lambda s: security_agg.decide(cmd, s),
        )

    # ---- configuration tiers, overrides, whitelist -------------------------------------

    async def set_tier(self, ctx: Context, name: str, wanted: Tier) -> Result:
        cmd = tiers_agg.SetTier(wanted=wanted)
        return await self._run(
            ctx,
            lambda: state.tier(self.db, name, self.prefix),
            lambda s: tiers_agg.decide_tier(cmd, s),
        )

    async def set_antispam(self, ctx: Context, subset: dict[str, object]) -> Result:
        """Replace the anti-spam fields of the global row; the other fields stay as they are."""

        def decide(s: tiers_agg.TierState) -> list[Event]:
            assert isinstance(s.current, GlobalConfig)
            picked = {k: v for k, v in subset.items() if k in ANTISPAM_FIELDS}
            wanted = msgspec.structs.replace(s.current, **picked)
            return tiers_agg.decide_tier(tiers_agg.SetTier(wanted=wanted), s)

        return await self._run(ctx, lambda: state.tier(self.db, "global", self.prefix), decide)

    async def set_domain_overrides(
        self, ctx: Context, domain_id: int, wanted: DomainOverrides
    ) -> Result:
        cmd = tiers_agg.SetOverrides(id=domain_id, wanted=wanted)
        return await self._run(
            ctx,
            lambda: state.domain_overrides(self.db, domain_id, self.prefix),
            lambda s: tiers_agg.decide_overrides(cmd, s),
        )

    async def set_mailbox_overrides(
        self, ctx: Context, mailbox_id: int, wanted: MailboxOverrides
    ) -> Result:
        if wanted.forward_to:
            wanted = msgspec.structs.replace(
                wanted,
                forward_to=", ".join(normalize.address_list(wanted.forward_to, "forward_to")),
            )
        cmd = tiers_agg.SetOverrides(id=mailbox_id, wanted=wanted)
        return await self._run(
            ctx,
            lambda: state.mailbox_overrides(self.db, mailbox_id, self.prefix),
            lambda s: tiers_agg.decide_overrides(cmd, s),
        )

    async def add_whitelist(self, ctx: Context, entry_type: str, value: str, note: str) -> Result:
        raw = value.strip().lower()
        if entry_type == "domain" and raw:
            raw = normalize.domain_name(raw, "value")
        elif entry_type == "email" and raw:
            raw = normalize.address(raw, "value")
        canonical = whitelist_agg.canonical(entry_type, raw)
        cmd = whitelist_agg.AddEntry(entry_type=entry_type, value=canonical, note=note)
        return await self._run(
            ctx,
            lambda: state.whitelist_at(self.db, entry_type, canonical, self.prefix),
            lambda s: whitelist_agg.decide(cmd, s),
        )

    async def remove_whitelist(self, ctx: Context, entry_id: int) -> Result:
        cmd = whitelist_agg.RemoveEntry(id=entry_id)
        return await self._run(
            ctx,
            lambda: state.whitelist_by_id(self.db, entry_id, self.prefix),
            lambda s: whitelist_agg.decide(cmd, s),
        )

    # ---- DKIM keys ---------------------------------------------------------------------

    def _sealer(self) -> Sealer:
        if self.sealer is None:
            raise Unavailable("no data-encryption key configured (DATA_KEY in config.env)")
        return self.sealer

    async def _new_dkim_key(self, domain: str, selector: str, algorithm: str) -> dkim_agg.NewKey:
        """A fresh pair, its private half sealed at once: the PEM never leaves this call."""
        if algorithm not in keys.DKIM_ALGORITHMS:
            raise ValidationFailed("algorithm", "algorithm must be rsa or ed25519")
        material = await asyncio.to_thread(keys.generate_dkim, algorithm)  # type: ignore[arg-type]
        sealed = self._sealer().seal(material.private_pem.encode(), dkim_aad(domain))
        return dkim_agg.NewKey(
            selector=selector,
            algorithm=algorithm,
            public_key=material.public_b64,
            private_key_sealed=sealed,
        )

    @staticmethod
    def _selector(raw: str) -> str:
        try:
            return keys.check_selector(raw)
        except ValueError as exc:
            raise ValidationFailed("selector", str(exc)) from None

    async def generate_dkim(
        self, ctx: Context, domain: str, selector: str, algorithm: str = "rsa"
    ) -> Result:
        name = normalize.domain_name(domain, "domain")
        new = await self._new_dkim_key(name, self._selector(selector), algorithm)
        return await self._run(
            ctx,
            lambda: state.dkim_keys(self.db, name, self.prefix),
            lambda s: dkim_agg.decide(dkim_agg.Generate(key=new), s),
        )

    async def rotate_dkim(
        self, ctx: Context, domain: str, selector: str = "", algorithm: str = "rsa"
    ) -> Result:
        """A new pending key; without a selector, s<YYYYMMDD> (then -2, -3, ... that day)."""
        name = normalize.domain_name(domain, "domain")
        base = self._selector(selector) if selector else datetime.now(UTC).strftime("s%Y%m%d")
        new = await self._new_dkim_key(name, base, algorithm)

        def decide(s: dkim_agg.DkimState) -> list[Event]:
            chosen = base
            if not selector:
                n = 1
                while chosen in s.keys:
                    n += 1
                    chosen = f"{base}-{n}"
            key = msgspec.structs.replace(new, selector=chosen)
            return dkim_agg.decide(dkim_agg.Rotate(key=key), s)

        return await self._run(ctx, lambda: state.dkim_keys(self.db, name, self.prefix), decide)

    async def dkim_step(self, ctx: Context, domain: str, selector: str, step: str) -> Result:
        """activate / retire / delete one selector of a domain."""
        name = normalize.domain_name(domain, "domain")
        sel = self._selector(selector)
        cmd: dkim_agg.Command
        if step == "activate":
            cmd = dkim_agg.Activate(selector=sel)
        elif step == "retire":
            cmd = dkim_agg.Retire(selector=sel)
        else:
            cmd = dkim_agg.Delete(selector=sel)
        return await self._run(
            ctx,
            lambda: state.dkim_keys(self.db, name, self.prefix),
            lambda s: dkim_agg.decide(cmd, s),
        )

    # ---- TLS certificates --------------------------------------------------------------

    def sealed_cert(self, info: keys.CertInfo, issuer: str) -> TlsCertRegistered:
        """The registration event of a parsed bundle; its key sealed for the agents."""
        return TlsCertRegistered(
            hostname=info.hostname,
            issuer=issuer,
            chain_pem=info.chain_pem,
            key_sealed=self._sealer().seal(info.key_pem.encode(), tls_aad(info.hostname)),
            names=info.names,
            fingerprint=info.fingerprint_sha256,
            not_before=info.not_before,
            expires_at=info.expires_at,
        )

    async def register_cert(
        self, ctx: Context, cert: TlsCertRegistered, only_if_absent: bool = False
    ) -> Result:
        cmd = tls_agg.Register(cert=cert, only_if_absent=only_if_absent)
        return await self._run(
            ctx,
            lambda: state.tls_cert_at(self.db, cert.hostname, self.prefix),
            lambda s: tls_agg.decide(cmd, s),
        )

    async def remove_cert(self, ctx: Context, cert_id: int) -> Result:
        cmd = tls_agg.Remove(id=cert_id)
        return await self._run(
            ctx,
            lambda: state.tls_cert_by_id(self.db, cert_id, self.prefix),
            lambda s: tls_agg.decide(cmd, s),
        )

    # ---- backup restore ----------------------------------------------------------------

    async def restore(self, ctx: Context, backup: backup_doc.Backup) -> Result:
        """Make every resource table the backup's, ids included, with ONE event.

        Ids are stream sequences: an id issued after the restore is above the restore's own
        sequence. A backup from another install may hold ids above this stream's last
        sequence, so the stream is first padded with `system.sequence_reserved` fillers
        until its last sequence reaches the backup's largest id; then no later id can be
        one of the restored ones."""
        snapshot = backup_doc.snapshot_of(backup)
        event_counts = backup_doc.counts(snapshot)
        self._fits(snapshot)
        await self._reserve(ctx, backup_doc.max_id(snapshot))
        subject = f"{self.prefix}.{RESTORE_SUBJECT}"

        def decide(previous: int) -> list[Event]:
            return [
                SystemRestored(
                    snapshot=snapshot,
                    previous_seq=previous,
                    counts=event_counts,
                    backup_created_at=backup.created_at,
                    backup_log_sequence=backup.log_sequence,
                )
            ]

        return await self._run(ctx, lambda: state.restore_at(self.db, subject), decide)

    def _fits(self, snapshot: Snapshot) -> None:
        """One event carries the whole snapshot: it must fit the server's max_payload."""
        limit = int(getattr(self._log().nc, "max_payload", 0) or 0)
        size = len(msgspec.json.encode(snapshot)) + 2048  # the envelope around it
        if limit and size > limit:
            raise DomainError(
                "backup too large to restore",
                f"the snapshot takes about {size} bytes in one event; the NATS server accepts "
                f"at most {limit} (raise max_payload of nats-server)",
            )

    async def _reserve(self, ctx: Context, upto: int) -> None:
        """Append fillers until the stream's last sequence is at least `upto`."""
        log = self._log()
        try:
            last = await log.last_seq()
            if last >= upto:
                return
            if upto - last > MAX_RESERVED:
                raise ValidationFailed(
                    "body",
                    "not a valid backup: its ids are too far ahead of this log",
                    f"the largest id, {upto}, would need {upto - last} filler events "
                    f"(at most {MAX_RESERVED}); ids are stream sequences of the log that made "
                    "the backup",
                )
            meta = self._meta(ctx, self._command_id(Context(actor=ctx.actor)), datetime.now(UTC))
            data = encode(Envelope(meta=meta, event=SequenceReserved(upto=upto)))
            subject = f"{self.prefix}.{RESERVE_SUBJECT}"
            while last < upto:
                n = min(upto - last, RESERVE_WINDOW)
                acks = await asyncio.gather(*(log.js.publish(subject, data) for _ in range(n)))
                last = max(last, *(int(a.seq) for a in acks))
        except (
            nats.errors.Error,
            nats.js.errors.Error,
            TimeoutError,
        ) as exc:
            raise Unavailable(f"event log unavailable: {type(exc).__name__}") from exc
        await self.wait(last)

    # ---- revert ------------------------------------------------------------------------

    async def revert(
        self, ctx: Context, seq: int, before_db: aiosqlite.Connection, scoped: bool = False
    ) -> Result:
        """Append the compensating event of event `seq`, when it is still possible: nothing
        later changed the same resource, and its name or address is still free (undeletes).
        `before_db` is the read model just before `seq` (a time-travel replay)."""
        found = await state.event_row(self.db, seq)
        if found is None:
            raise NotFound("event not found", f"no event at sequence {seq}")
        data, outcome, resource = found
        event = decode(data.encode()).event
        if not isinstance(event, revert_agg.REVERTIBLE):
            raise revert_agg.cannot(event)
        if outcome:
            raise Conflict("cannot revert", f"event {seq} had no effect ({outcome})")
        await self._no_later_change(seq, event, resource)
        cmd = revert_agg.Revert(
            seq=seq, event=event, before=await state.before(before_db, seq, event), scoped=scoped
        )
        if cmd.before.snapshot is not None:
            self._fits(cmd.before.snapshot)
        try:
            return await self._run(
                msgspec.structs.replace(ctx, reverts=seq),
                lambda: self._now(cmd),
                lambda now: revert_agg.decide(cmd, now),
            )
        except NotFound as exc:  # the domain of an undeleted mailbox went meanwhile
            raise Conflict("cannot revert", exc.detail or exc.error) from None

    async def _no_later_change(self, seq: int, event: Event, resource: str) -> None:
        if isinstance(event, SystemRestored):
            rows = await self.db.execute_fetchall(LATER_DATA_CHANGE, (seq,))
        else:
            rows = await self.db.execute_fetchall(LATER_CHANGE, (seq, resource))
        for later, kind in rows:
            if kind == "system.restored":
                raise Conflict(
                    "cannot revert",
                    f"the state was restored at sequence {later}, after event {seq}; "
                    "revert that restore first",
                )
            raise Conflict(
                "cannot revert",
                f"{resource} changed later, at sequence {later} ({kind}); revert that first",
            )

    async def _now(self, cmd: revert_agg.Revert) -> state.Loaded[revert_agg.Now]:
        """What is there now, with the subject the compensating event goes to and its
        sequence, read in one statement (see commands/state.py)."""
        e, seq, before = cmd.event, cmd.seq, cmd.before
        Now = revert_agg.Now
        match e:
            case DomainCreated() | DomainRestored() | DomainUpdated() | DomainOverridesSet():
                name, row_id = _domain_key(e, seq)
                loaded = await state.domain_by_name(self.db, name, self.prefix)
                exists = loaded.state.id == row_id
                blockers = ""
                if exists and isinstance(e, DomainCreated | DomainRestored):
                    blockers = await self._blockers(row_id, e)
                return state.Loaded(
                    Now(exists=exists, blockers=blockers), loaded.subject, loaded.version
                )
            case DomainDeleted(name=name):
                loaded = await state.domain_by_name(self.db, name, self.prefix)
                taken = f"domain {name} exists again (id {loaded.state.id})"
                return state.Loaded(
                    Now(taken=taken if loaded.state.id is not None else ""),
                    loaded.subject,
                    loaded.version,
                )
            case (
                MailboxCreated()
                | MailboxRestored()
                | MailboxUpdated()
                | MailboxPasswordChanged()
                | MailboxOverridesSet()
                | MailboxDeleted()
                | AliasCreated()
                | AliasRestored()
                | AliasUpdated()
                | AliasDeleted()
            ):
                return await self._address_now(e, seq, before)
            case WhitelistEntryAdded() | WhitelistEntryRestored() | WhitelistEntryRemoved():
                kind, value, row_id = _entry_key(e, seq)
                entry = await state.whitelist_at(self.db, kind, value, self.prefix)
                taken = f"{kind} {value} is listed again (id {entry.state.id})"
                now = Now(
                    exists=entry.state.id == row_id,
                    taken=taken if entry.state.id is not None else "",
                )
                return state.Loaded(now, entry.subject, entry.version)
            case SystemRestored():
                restored = await state.restore_at(self.db, f"{self.prefix}.{RESTORE_SUBJECT}")
                return state.Loaded(
                    Now(exists=True, checkpoint=restored.state),
                    restored.subject,
                    restored.version,
                )
        tier_name = revert_agg.TIER_OF.get(type(e))
        if tier_name is None:
            raise revert_agg.cannot(e)
        tier = await state.tier(self.db, tier_name, self.prefix)
        return state.Loaded(Now(exists=True), tier.subject, tier.version)

    async def _blockers(self, domain_id: int, e: Event) -> str:
        """Why deleting the domain again would lose more than the reverted event made."""
        boxes, aliases = await state.dependants(self.db, domain_id)
        if isinstance(e, DomainRestored):  # what the undelete brought back may go with it
            boxes = [i for i in boxes if i not in {m.id for m in e.mailboxes}]
            aliases = [i for i in aliases if i not in {a.id for a in e.aliases}]
        if not boxes and not aliases:
            return ""
        return (
            f"the domain has {len(boxes)} mailbox(es) and {len(aliases)} alias(es) made since "
            f"(first id {min(boxes + aliases)}); delete them first"
        )

    async def _address_now(
        self, e: Event, seq: int, before: revert_agg.Before
    ) -> state.Loaded[revert_agg.Now]:
        address, kind, row_id = _address_key(e, seq)
        loaded = await state.address(self.db, address, self.prefix)
        at = loaded.state.at
        exists = at.kind == kind and at.id == row_id
        now = revert_agg.Now(exists=exists)
        if isinstance(e, MailboxDeleted | AliasDeleted):
            taken = f"{address} is a {at.kind} again (id {at.id})" if at.kind else ""
            rows: list[Any] = before.mailboxes if isinstance(e, MailboxDeleted) else before.aliases
            parent = True
            if rows and not taken:
                domain_id = int(rows[0].domain_id)
                ref = await state.domain_ref(self.db, domain_id)
                parent = ref.id is not None and ref.name == address.rpartition("@")[2]
                if parent:
                    await self._check_undelete_caps(domain_id, e, before)
            now = revert_agg.Now(taken=taken, parent=parent)
        return state.Loaded(now, loaded.subject, loaded.version)

    async def _check_undelete_caps(
        self, domain_id: int, e: Event, before: revert_agg.Before
    ) -> None:
        usage = await state.domain_usage(self.db, domain_id)
        if usage is None:
            return
        if isinstance(e, MailboxDeleted) and before.mailboxes:
            quota = await self._effective_quota(before.mailboxes[0].quota)
            limits.check(limits.mailbox_refusal(usage, quota))
        else:
            limits.check(limits.alias_refusal(usage))


def _domain_key(e: Event, seq: int) -> tuple[str, int]:
    match e:
        case DomainCreated(name=name):
            return name, seq
        case DomainRestored(domain=d):
            return d.name, d.id
        case DomainUpdated(name=name, id=i) | DomainOverridesSet(name=name, id=i):
            return name, i
    raise AssertionError(e)


def _address_key(e: Event, seq: int) -> tuple[str, str, int]:
    """(address, "mailbox" | "alias", id) of a mailbox or alias event."""
    match e:
        case MailboxCreated(address=a):
            return a, "mailbox", seq
        case MailboxRestored(mailbox=m):
            return m.address, "mailbox", m.id
        case (
            MailboxUpdated(address=a, id=i)
            | MailboxPasswordChanged(address=a, id=i)
            | MailboxOverridesSet(address=a, id=i)
            | MailboxDeleted(address=a, id=i)
        ):
            return a, "mailbox", i
        case AliasCreated(source=s):
            return s, "alias", seq
        case AliasRestored(alias=a):
            return a.source, "alias", a.id
        case AliasUpdated(source=s, id=i) | AliasDeleted(source=s, id=i):
            return s, "alias", i
    raise AssertionError(e)


def _entry_key(e: Event, seq: int) -> tuple[str, str, int]:
    match e:
        case WhitelistEntryAdded(entry_type=k, value=v):
            return k, v, seq
        case WhitelistEntryRestored(entry=w):
            return w.entry_type, w.value, w.id
        case WhitelistEntryRemoved(entry_type=k, value=v, id=i):
            return k, v, i
    raise AssertionError(e)
