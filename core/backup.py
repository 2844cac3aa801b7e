"""The backup document: a snapshot of the data plane, and its full validation before a restore.

Pure. `parse` decodes a document with typed msgspec structs and checks everything a restore
relies on (ids, names, references, each field's rules), so a document that is not a valid
backup is refused (ValidationFailed) before anything changes. A `schema_version` this code
cannot read is an `UnreadableBackup` (the API's 500), also before anything changes.

The document holds mailbox password HASHES, and DKIM private keys and TLS keys as the SEALED
tokens they are in the log (only a process with the data key opens them), never a secret in
clear.
"""

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated

import msgspec

from core.config import TIER_TYPES, Tier, validate
from core.errors import DomainError, ValidationFailed
from core.events import (
    AliasRow,
    DkimRow,
    DomainOverridesRow,
    DomainRow,
    MailboxOverridesRow,
    MailboxRow,
    Snapshot,
    Tiers,
    Time,
    TlsRow,
    WhitelistRow,
)
from core.validation import check_domain_name, check_ip, check_local_part

SCHEMA_VERSION = 1
DKIM_ALGORITHMS = ("rsa", "ed25519")
DKIM_STATUSES = ("active", "pending", "previous", "retired")
TLS_ISSUERS = ("self", "letsencrypt", "uploaded")
WHITELIST_TYPES = ("ip", "cidr", "domain", "email")
_SELECTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_HASH = re.compile(r"^\{[A-Z0-9._-]+\}\S+$")
_CLEAR_KEY = "PRIVATE KEY"


class UnreadableBackup(DomainError):
    """A backup whose schema_version this server cannot read (nothing was changed)."""


class Backup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """GET /api/v1/backup's body and POST /api/v1/backup/restore's input."""

    schema_version: int
    created_at: Time
    log_sequence: Annotated[int, msgspec.Meta(ge=0)]
    domains: list[DomainRow]
    mailboxes: list[MailboxRow]
    aliases: list[AliasRow]
    config: Tiers
    domain_overrides: list[DomainOverridesRow]
    mailbox_overrides: list[MailboxOverridesRow]
    tls_certs: list[TlsRow]
    dkim_keys: list[DkimRow]
    whitelist: list[WhitelistRow]


class _Version(msgspec.Struct):
    schema_version: int


def document(snapshot: Snapshot, created_at: str, log_sequence: int) -> Backup:
    fields = {f: getattr(snapshot, f) for f in Snapshot.__struct_fields__}
    return Backup(
        schema_version=SCHEMA_VERSION, created_at=created_at, log_sequence=log_sequence, **fields
    )


def snapshot_of(backup: Backup) -> Snapshot:
    return Snapshot(**{f: getattr(backup, f) for f in Snapshot.__struct_fields__})


def counts(snapshot: Snapshot) -> dict[str, int]:
    return {f: len(getattr(snapshot, f)) for f in Snapshot.__struct_fields__ if f != "config"}


def max_id(snapshot: Snapshot) -> int:
    """The largest id in the snapshot (0 when it has none)."""
    s = snapshot
    ids = [r.id for r in s.domains] + [r.id for r in s.mailboxes] + [r.id for r in s.aliases]
    ids += [r.id for r in s.tls_certs] + [r.id for r in s.whitelist]
    return max(ids, default=0)


def parse(raw: bytes) -> Backup:
    """A validated backup document, or ValidationFailed / UnreadableBackup."""
    try:
        version = msgspec.json.decode(raw, type=_Version).schema_version
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValidationFailed(
            "body", "not a valid backup document", f"a JSON object with schema_version: {exc}"
        ) from None
    if version != SCHEMA_VERSION:
        raise UnreadableBackup(
            f"cannot read backup schema_version {version}",
            f"this server reads schema_version {SCHEMA_VERSION}; nothing was changed",
        )
    try:
        backup = msgspec.json.decode(raw, type=Backup)
    except msgspec.DecodeError as exc:
        raise ValidationFailed("body", "not a valid backup document", str(exc)) from None
    check(snapshot_of(backup))
    return backup


def _fail(field: str, error: str) -> ValidationFailed:
    return ValidationFailed(field, f"not a valid backup: {error}", f"field: {field}")


def _checked(field: str, check: Callable[[str, str], str], value: str) -> None:
    """Run one of core.validation's checks, naming the backup's field on failure."""
    try:
        check(value, field)
    except ValidationFailed as exc:
        raise _fail(field, exc.error) from None


def check(s: Snapshot) -> None:
    """Every rule a restore relies on; raises ValidationFailed naming the first offence."""
    ids: dict[int, str] = {}

    def unique_id(row_id: int, where: str) -> None:
        if row_id in ids:
            raise _fail(f"{where}.id", f"id {row_id} is used twice ({ids[row_id]} and {where})")
        ids[row_id] = where

    domains: dict[int, str] = {}
    names: set[str] = set()
    for i, d in enumerate(s.domains):
        where = f"domains[{i}]"
        unique_id(d.id, where)
        _checked(f"{where}.name", check_domain_name, d.name)
        if d.name in names:
            raise _fail(f"{where}.name", f"domain {d.name} appears twice")
        if d.outgoing_ip and check_ip(d.outgoing_ip) != d.outgoing_ip:
            raise _fail(f"{where}.outgoing_ip", f"{d.outgoing_ip!r} is not a canonical address")
        names.add(d.name)
        domains[d.id] = d.name

    addresses: set[str] = set()
    mailboxes: set[int] = set()
    for i, m in enumerate(s.mailboxes):
        where = f"mailboxes[{i}]"
        unique_id(m.id, where)
        if m.domain_id not in domains:
            raise _fail(f"{where}.domain_id", f"domain {m.domain_id} is not in the backup")
        _checked(f"{where}.username", check_local_part, m.username)
        if m.address != f"{m.username}@{domains[m.domain_id]}":
            raise _fail(
                f"{where}.address",
                f"{m.address} does not match username {m.username} at domain "
                f"{domains[m.domain_id]} (domain_id {m.domain_id})",
            )
        if not _HASH.match(m.password_hash):
            raise _fail(f"{where}.password_hash", "a password hash such as {ARGON2ID}$argon2id$…")
        if m.address in addresses:
            raise _fail(f"{where}.address", f"address {m.address} appears twice")
        addresses.add(m.address)
        mailboxes.add(m.id)

    for i, a in enumerate(s.aliases):
        where = f"aliases[{i}]"
        unique_id(a.id, where)
        if a.domain_id not in domains:
            raise _fail(f"{where}.domain_id", f"domain {a.domain_id} is not in the backup")
        local, at, domain = a.source.rpartition("@")
        if not at or domain != domains[a.domain_id]:
            raise _fail(
                f"{where}.source", f"{a.source} is not an address at {domains[a.domain_id]}"
            )
        if local:
            _checked(f"{where}.source", check_local_part, local)
        _destinations(f"{where}.destination", a.destination, a.source)
        if a.source in addresses:
            raise _fail(f"{where}.source", f"address {a.source} appears twice")
        addresses.add(a.source)

    seen: set[int] = set()
    for i, do in enumerate(s.domain_overrides):
        where = f"domain_overrides[{i}]"
        if do.domain_id not in domains:
            raise _fail(f"{where}.domain_id", f"domain {do.domain_id} is not in the backup")
        if do.domain_id in seen:
            raise _fail(f"{where}.domain_id", f"domain {do.domain_id} has two override rows")
        seen.add(do.domain_id)
        _tier(f"{where}.overrides", do.overrides)
    seen = set()
    for i, mo in enumerate(s.mailbox_overrides):
        where = f"mailbox_overrides[{i}]"
        if mo.mailbox_id not in mailboxes:
            raise _fail(f"{where}.mailbox_id", f"mailbox {mo.mailbox_id} is not in the backup")
        if mo.mailbox_id in seen:
            raise _fail(f"{where}.mailbox_id", f"mailbox {mo.mailbox_id} has two override rows")
        seen.add(mo.mailbox_id)
        _tier(f"{where}.overrides", mo.overrides)

    _tier("config.global", s.config.global_)
    _tier("config.domain_defaults", s.config.domain_defaults)
    _tier("config.mailbox_defaults", s.config.mailbox_defaults)
    for name in s.config.updated_at:
        if name not in TIER_TYPES:
            raise _fail("config.updated_at", f"{name!r} is not a tier")

    entries: set[tuple[str, str]] = set()
    for i, w in enumerate(s.whitelist):
        where = f"whitelist[{i}]"
        unique_id(w.id, where)
        _whitelist(where, w)
        if (w.entry_type, w.value) in entries:
            raise _fail(f"{where}.value", f"{w.entry_type} {w.value} appears twice")
        entries.add((w.entry_type, w.value))

    keys: set[tuple[str, str]] = set()
    active: set[str] = set()
    for i, k in enumerate(s.dkim_keys):
        where = f"dkim_keys[{i}]"
        _checked(f"{where}.domain", check_domain_name, k.domain)
        if not _SELECTOR.match(k.selector):
            raise _fail(f"{where}.selector", f"{k.selector!r} is not a DKIM selector")
        if (k.domain, k.selector) in keys:
            raise _fail(f"{where}.selector", f"{k.selector} of {k.domain} appears twice")
        keys.add((k.domain, k.selector))
        if k.algorithm not in DKIM_ALGORITHMS:
            raise _fail(f"{where}.algorithm", "algorithm must be rsa or ed25519")
        if k.status not in DKIM_STATUSES:
            raise _fail(f"{where}.status", f"status must be one of {', '.join(DKIM_STATUSES)}")
        if k.status == "active":
            if k.domain in active:
                raise _fail(f"{where}.status", f"{k.domain} has two active keys")
            active.add(k.domain)
        _sealed(f"{where}.private_key_sealed", k.private_key_sealed, required=True)

    hosts: set[str] = set()
    for i, t in enumerate(s.tls_certs):
        where = f"tls_certs[{i}]"
        unique_id(t.id, where)
        _checked(f"{where}.hostname", check_domain_name, t.hostname)
        if t.hostname in hosts:
            raise _fail(f"{where}.hostname", f"{t.hostname} appears twice")
        hosts.add(t.hostname)
        if t.issuer not in TLS_ISSUERS:
            raise _fail(f"{where}.issuer", f"issuer must be one of {', '.join(TLS_ISSUERS)}")
        _sealed(f"{where}.key_sealed", t.key_sealed, required=False)


def _tier(field: str, tier: Tier) -> None:
    try:
        validate(tier)
    except ValidationFailed as exc:
        raise _fail(f"{field}.{exc.field}", exc.error) from None


def _sealed(field: str, value: str, required: bool) -> None:
    """Keys travel sealed: a clear PEM key in a backup is refused, never stored."""
    if _CLEAR_KEY in value or (value and (" " in value or "\n" in value)):
        raise _fail(field, "keys must be the sealed tokens of a backup, never a PEM key")
    if required and not value:
        raise _fail(field, "the sealed private key is missing")


def _destinations(field: str, destination: str, source: str) -> None:
    """ ", "-joined addresses, as the API stores them; an alias never forwards to itself."""
    parts = destination.split(", ")
    for part in parts:
        local, at, domain = part.rpartition("@")
        if not at or not local or any(c.isspace() or c == "," for c in part):
            raise _fail(field, f"{part!r} is not an address")
        _checked(field, check_domain_name, domain)
        if part == source:
            raise _fail(field, "an alias must not forward to itself")
    if len(set(parts)) != len(parts):
        raise _fail(field, "a destination appears twice")


def _whitelist(where: str, w: WhitelistRow) -> None:
    if w.entry_type not in WHITELIST_TYPES:
        raise _fail(f"{where}.entry_type", "entry_type must be one of ip, cidr, domain, email")
    if len(w.note) > 500:
        raise _fail(f"{where}.note", "note must be at most 500 characters")
    canonical = ""
    try:
        if w.entry_type == "ip":
            canonical = str(ipaddress.ip_address(w.value))
        elif w.entry_type == "cidr":
            canonical = str(ipaddress.ip_network(w.value, strict=False))
        elif w.entry_type == "domain":
            canonical = check_domain_name(w.value, "value")
        else:
            local, at, domain = w.value.rpartition("@")
            if at and local and check_domain_name(domain, "value"):
                canonical = w.value.lower()
    except (ValueError, ValidationFailed):
        canonical = ""
    if canonical != w.value:
        raise _fail(f"{where}.value", f"{w.value!r} is not a canonical {w.entry_type}")
