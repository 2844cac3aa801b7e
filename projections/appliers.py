"""Idempotent SQL appliers: applying an event twice leaves the same rows as applying it once.

They run synchronously on one sqlite3 connection inside the batch transaction that also writes
the checkpoint, so a crash never applies an event twice or skips one.
"""

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from core import limits
from core.audit import resource_of
from core.config import TIER_TYPES
from core.events import (
    AgentReconciled,
    AliasCreated,
    AliasDeleted,
    AliasRestored,
    AliasRow,
    AliasUpdated,
    DkimKeyActivated,
    DkimKeyDeleted,
    DkimKeyGenerated,
    DkimKeyRetired,
    DomainCreated,
    DomainDefaultsSet,
    DomainDeleted,
    DomainOverridesSet,
    DomainRestored,
    DomainRow,
    DomainUpdated,
    Envelope,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDefaultsSet,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxRestored,
    MailboxRow,
    MailboxUpdated,
    SecuritySettingsChanged,
    SystemRestored,
    TlsCertRegistered,
    TlsCertRemoved,
    TokenCreated,
    TokenRevoked,
    TokenRotated,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    WhitelistEntryRestored,
    WhitelistRow,
    event_tag,
)
from core.subjects import address_subject, domain_subject, tls_subject, whitelist_subject
from projections import effective

CHECKPOINT = "projector"

SET_CHECKPOINT = (
    "INSERT INTO checkpoint (name, seq) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > checkpoint.seq"
)
SET_SUBJECT = (
    "INSERT INTO subjects (subject, last_seq) VALUES (?, ?) "
    "ON CONFLICT(subject) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)"
)
PRIOR_OUTCOME = "SELECT outcome FROM events WHERE seq = ?"
INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (seq, subject, type, at, actor, actor_id, source_ip, "
    "request_id, command_id, data, outcome, resource) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_DOMAIN = (
    "INSERT OR REPLACE INTO domains (id, name, active, outgoing_ip, created_at, updated_at, "
    "version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_DOMAIN = (
    "UPDATE domains SET active = ?, outgoing_ip = ?, updated_at = ?, version = ? "
    "WHERE id = ? AND version <= ?"
)
DELETE_DOMAIN = "DELETE FROM domains WHERE id = ?"
DELETE_DOMAIN_MAILBOXES = "DELETE FROM mailboxes WHERE domain_id = ?"
DELETE_DOMAIN_ALIASES = "DELETE FROM aliases WHERE domain_id = ?"
UPSERT_MAILBOX = (
    "INSERT OR REPLACE INTO mailboxes (id, domain_id, username, address, password_hash, quota, "
    "quota_seq, active, created_at, updated_at, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
MAILBOX_QUOTA = "SELECT domain_id, quota, quota_effective, version FROM mailboxes WHERE id = ?"
PUT_TIER = "INSERT OR REPLACE INTO config_tiers (name, data, seq, updated_at) VALUES (?, ?, ?, ?)"
PUT_DOMAIN_OVERRIDES = (
    "INSERT OR REPLACE INTO domain_overrides (domain_id, data, seq) "
    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM domains WHERE id = ?)"
)
PUT_MAILBOX_OVERRIDES = (
    "INSERT OR REPLACE INTO mailbox_overrides (mailbox_id, data, seq) "
    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM mailboxes WHERE id = ?)"
)
DELETE_DOMAIN_OVERRIDES = "DELETE FROM domain_overrides WHERE domain_id = ?"
DELETE_DOMAIN_MAILBOX_OVERRIDES = (
    "DELETE FROM mailbox_overrides WHERE mailbox_id IN "
    "(SELECT id FROM mailboxes WHERE domain_id = ?)"
)
DELETE_EFFECTIVE_DOMAIN = "DELETE FROM effective_domains WHERE domain_id = ?"
DELETE_EFFECTIVE_DOMAIN_MAILBOXES = "DELETE FROM effective_mailboxes WHERE domain_id = ?"
DELETE_MAILBOX_OVERRIDES = "DELETE FROM mailbox_overrides WHERE mailbox_id = ?"
DELETE_EFFECTIVE_MAILBOX = "DELETE FROM effective_mailboxes WHERE mailbox_id = ?"
UPSERT_WHITELIST = (
    "INSERT OR REPLACE INTO whitelist (id, entry_type, value, note, created_at, version) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
DELETE_WHITELIST = "DELETE FROM whitelist WHERE id = ?"
# A key that starts signing turns the domain's old signer into "previous" (still published).
DEMOTE_DKIM = (
    "UPDATE dkim_keys SET status = 'previous', updated_at = ?, seq = ? "
    "WHERE domain = ? AND status = 'active' AND selector != ?"
)
UPSERT_DKIM = (
    "INSERT INTO dkim_keys (domain, selector, algorithm, public_key, private_key_sealed, status, "
    "created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(domain, selector) DO UPDATE SET algorithm = excluded.algorithm, "
    "public_key = excluded.public_key, private_key_sealed = excluded.private_key_sealed, "
    "status = excluded.status, created_at = excluded.created_at, updated_at = excluded.updated_at, "
    "seq = excluded.seq"
)
SET_DKIM_STATUS = (
    "UPDATE dkim_keys SET status = ?, updated_at = ?, seq = ? WHERE domain = ? AND selector = ?"
)
DELETE_DKIM = "DELETE FROM dkim_keys WHERE domain = ? AND selector = ?"
# A re-registration for the same host name keeps the record's id.
UPSERT_TLS = (
    "INSERT INTO tls_certs (id, hostname, issuer, chain_pem, key_sealed, cert_path, key_path, "
    "names, fingerprint, not_before, expires_at, created_at, updated_at, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(hostname) DO UPDATE SET issuer = excluded.issuer, "
    "chain_pem = excluded.chain_pem, key_sealed = excluded.key_sealed, "
    "cert_path = excluded.cert_path, key_path = excluded.key_path, names = excluded.names, "
    "fingerprint = excluded.fingerprint, not_before = excluded.not_before, "
    "expires_at = excluded.expires_at, updated_at = excluded.updated_at, "
    "version = excluded.version"
)
DELETE_TLS = "DELETE FROM tls_certs WHERE id = ?"
# Every event on an aggregate's subject moves its row's version (its ETag and the expected
# sequence of the next append), overrides included.
PUT_AGENT = "INSERT OR REPLACE INTO agents (host, data, at, seq) VALUES (?, ?, ?, ?)"
BUMP_DOMAIN = "UPDATE domains SET version = ? WHERE id = ? AND version <= ?"
BUMP_MAILBOX = "UPDATE mailboxes SET version = ? WHERE id = ? AND version <= ?"
UPDATE_MAILBOX_PASSWORD = (
    "UPDATE mailboxes SET password_hash = ?, updated_at = ?, version = ? "
    "WHERE id = ? AND version <= ?"
)
UPDATE_MAILBOX = (
    "UPDATE mailboxes SET active = ?, quota = ?, "
    "quota_seq = CASE WHEN quota IS ? THEN quota_seq ELSE ? END, updated_at = ?, version = ? "
    "WHERE id = ? AND version <= ?"
)
DELETE_MAILBOX = "DELETE FROM mailboxes WHERE id = ?"
UPSERT_ALIAS = (
    "INSERT OR REPLACE INTO aliases (id, domain_id, source, destination, created_at, "
    "updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_ALIAS = (
    "UPDATE aliases SET destination = ?, updated_at = ?, version = ? WHERE id = ? AND version <= ?"
)
DELETE_ALIAS = "DELETE FROM aliases WHERE id = ?"
UPSERT_TOKEN = (
    "INSERT OR REPLACE INTO tokens (id, name, scope, domains, secret_sha256, hint, created_at, "
    "expires_at, rotated_at, revoked_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)"
)
ROTATE_TOKEN = (
    "UPDATE tokens SET secret_sha256 = ?, hint = ?, rotated_at = ?, version = ? "
    "WHERE id = ? AND version <= ?"
)
REVOKE_TOKEN = "UPDATE tokens SET revoked_at = ?, version = ? WHERE id = ? AND version <= ?"
SET_SECURITY = (
    "INSERT OR REPLACE INTO security_settings (id, data, updated_at, version) VALUES (1, ?, ?, ?)"
)

_json = msgspec.json.Encoder()


# (second, its text): one tuple swapped whole, so appliers running in two threads at once (the
# projector and a time-travel replay) never read one second's text for another.
_last_second: list[tuple[int, str]] = [(-(2**62), "")]


def rfc3339(at: datetime) -> str:
    """RFC 3339, UTC, second precision, ending in Z: the API's one timestamp format.
    It runs once per applied event, and consecutive events mostly share their second."""
    second = int(at.timestamp())
    cached = _last_second[0]
    if cached[0] == second:
        return cached[1]
    utc = at.astimezone(UTC) if at.utcoffset() else at
    text = utc.isoformat(timespec="seconds")[:19] + "Z"
    _last_second[0] = (second, text)
    return text


class Item(NamedTuple):
    """One message of the log: its sequence, subject, decoded envelope and stored bytes."""

    seq: int
    subject: str
    env: Envelope
    raw: bytes


def _opt_time(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def index_row(item: Item, at: str, reason: str) -> tuple[object, ...]:
    """The events-index row of one event (its outcome included)."""
    seq, subject, env, raw = item
    meta = env.meta
    return (
        seq,
        subject,
        event_tag(env.event),
        at,
        meta.actor,
        meta.actor_id,
        meta.source_ip,
        meta.request_id,
        meta.command_id,
        raw.decode(),
        f"rejected: {reason}" if reason else "",
        resource_of(env.event, seq),
    )


def apply(db: sqlite3.Connection, item: Item, prior: str | bool | None = True) -> str:
    """Apply one event (and its index row and subject version); safe to repeat. Returns why
    the event was left without effect ("" when it took effect).

    An event applied before keeps the decision it got then: `prior` is its recorded outcome,
    None when it was never applied, or True to look it up here."""
    if prior is True:
        prior_row = db.execute(PRIOR_OUTCOME, (item.seq,)).fetchone()
        prior = None if prior_row is None else str(prior_row[0])
    assert prior is None or isinstance(prior, str)
    at = rfc3339(item.env.meta.at)
    reason = apply_effect(db, item, at, prior)
    db.execute(SET_SUBJECT, (item.subject, item.seq))
    db.execute(INSERT_EVENT, index_row(item, at, reason))
    return reason


Usage = dict[int, tuple[str, limits.DomainUsage]]


def apply_effect(
    db: sqlite3.Connection, item: Item, at: str, prior: str | None, usage: Usage | None = None
) -> str:
    """The event's effect on the read-model rows (not its index row or subject version).

    `usage` caches domain usage within a batch for runs of creations (a replay is mostly
    that); any other kind of event empties it, since it may change caps or counts."""
    seq, env = item.seq, item.env
    reason = ""
    if usage is not None and not isinstance(env.event, MailboxCreated | AliasCreated):
        usage.clear()
    match env.event:
        case DomainCreated() as e:
            db.execute(UPSERT_DOMAIN, (seq, e.name, e.active, e.outgoing_ip, at, at, seq))
            effective.recompute_domain(db, seq)
        case DomainUpdated() as e:
            db.execute(UPDATE_DOMAIN, (e.active, e.outgoing_ip, at, seq, e.id, seq))
            effective.recompute_domain_and_mailboxes(db, e.id)
        case DomainDeleted() as e:
            for sql in (
                DELETE_DOMAIN_MAILBOX_OVERRIDES,
                DELETE_EFFECTIVE_DOMAIN_MAILBOXES,
                DELETE_DOMAIN_OVERRIDES,
                DELETE_EFFECTIVE_DOMAIN,
                DELETE_DOMAIN_MAILBOXES,
                DELETE_DOMAIN_ALIASES,
                DELETE_DOMAIN,
            ):
                db.execute(sql, (e.id,))
        case DomainOverridesSet() as e:
            db.execute(PUT_DOMAIN_OVERRIDES, (e.id, _json.encode(e.overrides).decode(), seq, e.id))
            db.execute(BUMP_DOMAIN, (seq, e.id, seq))
            effective.recompute_domain_and_mailboxes(db, e.id)
        case MailboxCreated() as e:
            reason = _decided(prior) if prior is not None else _mailbox_refusal(db, e, usage)
            if not reason:
                db.execute(
                    UPSERT_MAILBOX,
                    (
                        seq,
                        e.domain_id,
                        e.username,
                        e.address,
                        e.password_hash,
                        e.quota,
                        seq if e.quota is not None else 0,
                        e.active,
                        at,
                        at,
                        seq,
                    ),
                )
                effective.recompute_mailbox(db, seq)
        case MailboxPasswordChanged() as e:
            db.execute(UPDATE_MAILBOX_PASSWORD, (e.password_hash, at, seq, e.id, seq))
        case MailboxUpdated() as e:
            reason = _decided(prior) if prior is not None else _quota_refusal(db, e)
            if reason:
                db.execute(BUMP_MAILBOX, (seq, e.id, seq))
            else:
                db.execute(UPDATE_MAILBOX, (e.active, e.quota, e.quota, seq, at, seq, e.id, seq))
                effective.recompute_mailbox(db, e.id)
        case MailboxDeleted() as e:
            for sql in (DELETE_MAILBOX_OVERRIDES, DELETE_EFFECTIVE_MAILBOX, DELETE_MAILBOX):
                db.execute(sql, (e.id,))
        case MailboxOverridesSet() as e:
            db.execute(PUT_MAILBOX_OVERRIDES, (e.id, _json.encode(e.overrides).decode(), seq, e.id))
            db.execute(BUMP_MAILBOX, (seq, e.id, seq))
            effective.recompute_mailbox(db, e.id)
        case AliasCreated() as e:
            reason = _decided(prior) if prior is not None else _alias_refusal(db, e, usage)
            if not reason:
                db.execute(UPSERT_ALIAS, (seq, e.domain_id, e.source, e.destination, at, at, seq))
        case AliasUpdated() as e:
            db.execute(UPDATE_ALIAS, (e.destination, at, seq, e.id, seq))
        case AliasDeleted() as e:
            db.execute(DELETE_ALIAS, (e.id,))
        case GlobalConfigSet() | DomainDefaultsSet() | MailboxDefaultsSet() as e:
            name = {
                GlobalConfigSet: "global",
                DomainDefaultsSet: "domain_defaults",
                MailboxDefaultsSet: "mailbox_defaults",
            }[type(e)]
            db.execute(PUT_TIER, (name, _json.encode(e.config).decode(), seq, at))
            effective.invalidate(db)
            effective.recompute_all(db)
        case WhitelistEntryAdded() as e:
            db.execute(UPSERT_WHITELIST, (seq, e.entry_type, e.value, e.note, at, seq))
        case WhitelistEntryRemoved() as e:
            db.execute(DELETE_WHITELIST, (e.id,))
        case DkimKeyGenerated() as e:
            if e.status == "active":
                db.execute(DEMOTE_DKIM, (at, seq, e.domain, e.selector))
            db.execute(
                UPSERT_DKIM,
                (
                    e.domain,
                    e.selector,
                    e.algorithm,
                    e.public_key,
                    e.private_key_sealed,
                    e.status,
                    at,
                    at,
                    seq,
                ),
            )
        case DkimKeyActivated() as e:
            db.execute(DEMOTE_DKIM, (at, seq, e.domain, e.selector))
            db.execute(SET_DKIM_STATUS, ("active", at, seq, e.domain, e.selector))
        case DkimKeyRetired() as e:
            db.execute(SET_DKIM_STATUS, ("retired", at, seq, e.domain, e.selector))
        case DkimKeyDeleted() as e:
            db.execute(DELETE_DKIM, (e.domain, e.selector))
        case TlsCertRegistered() as e:
            db.execute(
                UPSERT_TLS,
                (
                    seq,
                    e.hostname,
                    e.issuer,
                    e.chain_pem,
                    e.key_sealed,
                    e.cert_path,
                    e.key_path,
                    _json.encode(list(e.names)).decode(),
                    e.fingerprint,
                    _opt_time(e.not_before),
                    _opt_time(e.expires_at),
                    at,
                    at,
                    seq,
                ),
            )
        case TlsCertRemoved() as e:
            db.execute(DELETE_TLS, (e.id,))
        case AgentReconciled() as e:
            db.execute(PUT_AGENT, (e.host, _json.encode(e).decode(), at, seq))
        case TokenCreated() as e:
            expires = rfc3339(e.expires_at) if e.expires_at else None
            domains = _json.encode(list(e.domains)).decode()
            db.execute(
                UPSERT_TOKEN,
                (seq, e.name, e.scope, domains, e.secret_sha256, e.hint, at, expires, seq),
            )
        case TokenRotated() as e:
            db.execute(ROTATE_TOKEN, (e.secret_sha256, e.hint, at, seq, e.id, seq))
        case TokenRevoked() as e:
            db.execute(REVOKE_TOKEN, (at, seq, e.id, seq))
        case SecuritySettingsChanged() as e:
            db.execute(SET_SECURITY, (_json.encode(e).decode(), at, seq))
        case SystemRestored() as e:
            restore(db, item, e)
        case DomainRestored() as e:
            reason = _decided(prior) if prior is not None else _domain_taken(db, e.domain)
            if not reason:
                _undelete_domain(db, item, e)
        case MailboxRestored() as e:
            reason = _decided(prior) if prior is not None else _address_refusal(db, e.mailbox)
            if not reason:
                _insert_mailboxes(db, seq, [e.mailbox], lambda _: seq)
                if e.overrides is not None:
                    db.execute(
                        PUT_MAILBOX_OVERRIDES, (e.mailbox.id, _enc(e.overrides), seq, e.mailbox.id)
                    )
                effective.recompute_mailbox(db, e.mailbox.id)
        case AliasRestored() as e:
            reason = _decided(prior) if prior is not None else _address_refusal(db, e.alias)
            if not reason:
                db.execute(UPSERT_ALIAS, _alias_row(e.alias, seq))
        case WhitelistEntryRestored() as e:
            reason = _decided(prior) if prior is not None else _entry_taken(db, e.entry)
            if not reason:
                db.execute(UPSERT_WHITELIST, _whitelist_row(e.entry, seq))
    return reason


def apply_batch(db: sqlite3.Connection, batch: list[Item]) -> tuple[int, dict[int, str]]:
    """One transaction: every event of the batch past the checkpoint, then the checkpoint.
    Returns the last applied sequence and the events left without effect, with the reason."""
    rejected: dict[int, str] = {}
    if not batch:
        return 0, rejected
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT seq FROM checkpoint WHERE name = ?", (CHECKPOINT,)).fetchone()
        done = row[0] if row else 0
        last = done
        # Past the checkpoint no event can have been applied (the index row and the checkpoint
        # commit together), so there is no earlier decision to look up.
        subjects: list[tuple[str, int]] = []
        index: list[tuple[object, ...]] = []
        usage: Usage = {}
        for item in batch:
            if item.seq <= done:
                continue
            if subjects and isinstance(item.env.event, READS_SUBJECTS):
                db.executemany(SET_SUBJECT, subjects)  # this applier reads them
                subjects.clear()
            at = rfc3339(item.env.meta.at)
            reason = apply_effect(db, item, at, None, usage)
            if reason:
                rejected[item.seq] = reason
            subjects.append((item.subject, item.seq))
            index.append(index_row(item, at, reason))
            last = item.seq
        # Index rows and subject versions in bulk: no applier reads them within a batch.
        db.executemany(SET_SUBJECT, subjects)
        db.executemany(INSERT_EVENT, index)
        if last > done:
            db.execute(SET_CHECKPOINT, (CHECKPOINT, last))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        effective.invalidate(db)  # tiers cached from the rolled-back batch are not true
        raise
    return max(last, done), rejected


def _decided(prior: str) -> str:
    return prior.removeprefix("rejected: ") if prior.startswith("rejected: ") else ""


def _domain_usage(
    db: sqlite3.Connection, domain_id: int, cache: Usage | None
) -> tuple[str, limits.DomainUsage] | None:
    found = cache.get(domain_id) if cache is not None else None
    if found is None:
        found = effective.usage(db, domain_id)
        if found is not None and cache is not None:
            cache[domain_id] = found
    return found


def _mailbox_refusal(db: sqlite3.Connection, e: MailboxCreated, cache: Usage | None) -> str:
    """Why this creation does not take effect (domain gone, a cap reached); "" if it does."""
    found = _domain_usage(db, e.domain_id, cache)
    if found is None or e.address.rpartition("@")[2] != found[0]:
        return "the domain no longer exists"
    quota = effective.mailbox_quota_for(db, e.quota)
    reason = limits.mailbox_refusal(found[1], quota)
    if not reason and cache is not None:
        u = found[1]
        cache[e.domain_id] = (
            found[0],
            msgspec.structs.replace(u, mailboxes=u.mailboxes + 1, quota_sum=u.quota_sum + quota),
        )
    return reason


def _quota_refusal(db: sqlite3.Connection, e: MailboxUpdated) -> str:
    row = db.execute(MAILBOX_QUOTA, (e.id,)).fetchone()
    if row is None or row[1] == e.quota:
        return ""
    found = effective.usage(db, row[0])
    if found is None:
        return ""
    return limits.mailbox_refusal(found[1], effective.mailbox_quota_for(db, e.quota), row[2])


def _alias_refusal(db: sqlite3.Connection, e: AliasCreated, cache: Usage | None) -> str:
    found = _domain_usage(db, e.domain_id, cache)
    if found is None or e.source.rpartition("@")[2] != found[0]:
        return "the domain no longer exists"
    reason = limits.alias_refusal(found[1])
    if not reason and cache is not None:
        cache[e.domain_id] = (
            found[0],
            msgspec.structs.replace(found[1], aliases=found[1].aliases + 1),
        )
    return reason


# ---- restores ----------------------------------------------------------------------------

# Appliers that read the subjects table: the batch writes the pending subject versions first.
READS_SUBJECTS = (SystemRestored, DomainRestored)
# Every table a restore makes equal to its snapshot (tokens, security settings, agents and the
# log's own bookkeeping stay).
RESTORED_TABLES = (
    "domains",
    "mailboxes",
    "aliases",
    "config_tiers",
    "domain_overrides",
    "mailbox_overrides",
    "effective_domains",
    "effective_mailboxes",
    "whitelist",
    "dkim_keys",
    "tls_certs",
)
SUBJECT_SEQ = "SELECT last_seq FROM subjects WHERE subject = ?"
ROW_TAKEN = (
    "SELECT (SELECT 1 FROM domains WHERE id = ?1) OR (SELECT 1 FROM mailboxes WHERE id = ?1) "
    "OR (SELECT 1 FROM aliases WHERE id = ?1)"
)
DOMAIN_TAKEN = "SELECT 1 FROM domains WHERE id = ? OR name = ?"
DOMAIN_NAMED = "SELECT 1 FROM domains WHERE id = ? AND name = ?"
ADDRESS_TAKEN = (
    "SELECT (SELECT 1 FROM mailboxes WHERE address = ?1) OR (SELECT 1 FROM aliases WHERE "
    "source = ?1)"
)
ENTRY_TAKEN = "SELECT 1 FROM whitelist WHERE id = ? OR (entry_type = ? AND value = ?)"
PUT_OVERRIDES_ROW = {
    "domain": "INSERT OR REPLACE INTO domain_overrides (domain_id, data, seq) VALUES (?, ?, ?)",
    "mailbox": "INSERT OR REPLACE INTO mailbox_overrides (mailbox_id, data, seq) VALUES (?, ?, ?)",
}


def _enc(value: object) -> str:
    return _json.encode(value).decode()


def _subject_seq(db: sqlite3.Connection, subject: str) -> int:
    """The real last sequence of a subject in THIS log (0: never written here)."""
    row = db.execute(SUBJECT_SEQ, (subject,)).fetchone()
    return int(row[0]) if row else 0


def _domain_row(d: DomainRow, version: int) -> tuple[object, ...]:
    return (d.id, d.name, d.active, d.outgoing_ip, d.created_at, d.updated_at, version)


def _alias_row(a: AliasRow, version: int) -> tuple[object, ...]:
    return (a.id, a.domain_id, a.source, a.destination, a.created_at, a.updated_at, version)


def _whitelist_row(w: WhitelistRow, version: int) -> tuple[object, ...]:
    return (w.id, w.entry_type, w.value, w.note, w.created_at, version)


def _insert_mailboxes(
    db: sqlite3.Connection, seq: int, rows: list[MailboxRow], version: Callable[[str], int]
) -> None:
    """Mailbox rows as they were; their own quota now counts as set by event `seq`."""
    db.executemany(
        UPSERT_MAILBOX,
        [
            (
                m.id,
                m.domain_id,
                m.username,
                m.address,
                m.password_hash,
                m.quota,
                seq if m.quota is not None else 0,
                m.active,
                m.created_at,
                m.updated_at,
                version(m.address),
            )
            for m in rows
        ],
    )


def restore(db: sqlite3.Connection, item: Item, e: SystemRestored) -> None:
    """Every resource table becomes the snapshot, ids included.

    A row's `version` is what the next append on its subject must expect: the REAL last
    sequence of that subject in this log (the subjects table; 0 when this log never wrote it,
    as after a restore into a fresh install), never the version the row had where the backup
    was made. Tiers, overrides and DKIM keys count as set by the restore event (`explain`)."""
    seq, s = item.seq, e.snapshot
    prefix = item.subject.split(".", 1)[0]
    for table in RESTORED_TABLES:
        db.execute(f"DELETE FROM {table}")
    db.executemany(
        UPSERT_DOMAIN,
        [_domain_row(d, _subject_seq(db, domain_subject(d.name, prefix))) for d in s.domains],
    )
    _insert_mailboxes(
        db, seq, s.mailboxes, lambda address: _subject_seq(db, address_subject(address, prefix))
    )
    db.executemany(
        UPSERT_ALIAS,
        [_alias_row(a, _subject_seq(db, address_subject(a.source, prefix))) for a in s.aliases],
    )
    tiers = {
        "global": s.config.global_,
        "domain_defaults": s.config.domain_defaults,
        "mailbox_defaults": s.config.mailbox_defaults,
    }
    for name in TIER_TYPES:
        if name in s.config.updated_at:
            db.execute(PUT_TIER, (name, _enc(tiers[name]), seq, s.config.updated_at[name]))
    db.executemany(
        PUT_OVERRIDES_ROW["domain"],
        [(o.domain_id, _enc(o.overrides), seq) for o in s.domain_overrides],
    )
    db.executemany(
        PUT_OVERRIDES_ROW["mailbox"],
        [(o.mailbox_id, _enc(o.overrides), seq) for o in s.mailbox_overrides],
    )
    db.executemany(
        UPSERT_WHITELIST,
        [
            _whitelist_row(w, _subject_seq(db, whitelist_subject(w.entry_type, w.value, prefix)))
            for w in s.whitelist
        ],
    )
    db.executemany(
        UPSERT_DKIM,
        [
            (
                k.domain,
                k.selector,
                k.algorithm,
                k.public_key,
                k.private_key_sealed,
                k.status,
                k.created_at,
                k.updated_at,
                seq,
            )
            for k in s.dkim_keys
        ],
    )
    db.executemany(
        UPSERT_TLS,
        [
            (
                t.id,
                t.hostname,
                t.issuer,
                t.chain_pem,
                t.key_sealed,
                t.cert_path,
                t.key_path,
                _enc(t.names),
                t.fingerprint,
                t.not_before,
                t.expires_at,
                t.created_at,
                t.updated_at,
                _subject_seq(db, tls_subject(t.hostname, prefix)),
            )
            for t in s.tls_certs
        ],
    )
    effective.invalidate(db)
    effective.recompute_all(db)


def _domain_taken(db: sqlite3.Connection, d: DomainRow) -> str:
    if db.execute(DOMAIN_TAKEN, (d.id, d.name)).fetchone() is not None:
        return f"domain {d.name} (id {d.id}) exists again"
    return ""


def _address_refusal(db: sqlite3.Connection, row: MailboxRow | AliasRow) -> str:
    """Why a mailbox or alias cannot come back: its domain is gone, or its address or id is
    taken meanwhile."""
    address = row.address if isinstance(row, MailboxRow) else row.source
    domain = address.rpartition("@")[2]
    if db.execute(DOMAIN_NAMED, (row.domain_id, domain)).fetchone() is None:
        return "the domain no longer exists"
    if db.execute(ADDRESS_TAKEN, (address,)).fetchone()[0]:
        return f"{address} is in use"
    if db.execute(ROW_TAKEN, (row.id,)).fetchone()[0]:
        return f"id {row.id} is in use"
    return ""


def _entry_taken(db: sqlite3.Connection, w: WhitelistRow) -> str:
    if db.execute(ENTRY_TAKEN, (w.id, w.entry_type, w.value)).fetchone() is not None:
        return f"{w.entry_type} {w.value} is listed again"
    return ""


def _undelete_domain(db: sqlite3.Connection, item: Item, e: DomainRestored) -> None:
    """The domain (its version: this event, on its subject) with everything it had. Its
    mailboxes and aliases live on their address subjects, whose real last sequences their
    versions take; an address taken meanwhile keeps its holder and the old row stays out."""
    seq = item.seq
    prefix = item.subject.split(".", 1)[0]
    d = e.domain
    db.execute(UPSERT_DOMAIN, _domain_row(d, seq))
    if e.overrides is not None:
        db.execute(PUT_OVERRIDES_ROW["domain"], (d.id, _enc(e.overrides), seq))
    boxes = [m for m in e.mailboxes if not _address_refusal(db, m)]
    _insert_mailboxes(
        db, seq, boxes, lambda address: _subject_seq(db, address_subject(address, prefix))
    )
    kept = {m.id for m in boxes}
    db.executemany(
        PUT_OVERRIDES_ROW["mailbox"],
        [
            (o.mailbox_id, _enc(o.overrides), seq)
            for o in e.mailbox_overrides
            if o.mailbox_id in kept
        ],
    )
    for a in e.aliases:
        if not _address_refusal(db, a):
            db.execute(
                UPSERT_ALIAS, _alias_row(a, _subject_seq(db, address_subject(a.source, prefix)))
            )
    effective.recompute_domain_and_mailboxes(db, d.id)
