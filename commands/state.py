"""Decision state from the read model, with the aggregate's last subject sequence.

A stale read is harmless: the append then fails on the expected sequence and is retried.
"""

from typing import Any, Generic, TypeVar

import aiosqlite
import msgspec

from core.alias import AliasState
from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    Tier,
)
from core.domain import DomainState
from core.errors import NotFound
from core.events import SecuritySettingsChanged
from core.limits import DomainUsage
from core.mailbox import AddressState, DomainRef
from core.security import SecuritySettings, from_event
from core.subjects import (
    address_subject,
    config_subject,
    domain_subject,
    security_subject,
    token_subject,
    whitelist_subject,
)
from core.tiers import OverridesState, TierState
from core.token import TokenState
from core.whitelist import EntryState

SUBJECT_SEQ = "SELECT last_seq FROM subjects WHERE subject = ?"
DOMAIN_BY_NAME = "SELECT id, name, active, outgoing_ip, version FROM domains WHERE name = ?"
DOMAIN_BY_ID = "SELECT id, name, active, outgoing_ip, version FROM domains WHERE id = ?"
MAILBOX_AT = "SELECT id, address, active, quota, version FROM mailboxes WHERE address = ?"
MAILBOX_BY_ID = "SELECT id, address, active, quota, version FROM mailboxes WHERE id = ?"
ALIAS_AT = "SELECT id, source, destination, version FROM aliases WHERE source = ?"
ALIAS_BY_ID = "SELECT id, source, destination, version FROM aliases WHERE id = ?"


S = TypeVar("S")


class Loaded(Generic[S]):
    """A state, the subject it lives on and that subject's last sequence."""

    __slots__ = ("state", "subject", "version")

    def __init__(self, state: S, subject: str, version: int) -> None:
        self.state = state
        self.subject = subject
        self.version = version


async def _one(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    async with db.execute(sql, args) as cur:
        row = await cur.fetchone()
    return tuple(row) if row is not None else None


async def _subject_seq(db: aiosqlite.Connection, subject: str) -> int:
    row = await _one(db, SUBJECT_SEQ, (subject,))
    return int(row[0]) if row else 0


def _domain(row: tuple[Any, ...]) -> DomainState:
    return DomainState(
        id=int(row[0]),
        name=str(row[1]),
        active=bool(row[2]),
        outgoing_ip=str(row[3]),
    )


async def domain_by_name(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[DomainState]:
    subject = domain_subject(name, prefix)
    row = await _one(db, DOMAIN_BY_NAME, (name,))
    if row is None:
        return Loaded(DomainState(), subject, await _subject_seq(db, subject))
    return Loaded(_domain(row), subject, int(row[4]))


async def domain_by_id(
    db: aiosqlite.Connection, domain_id: int, prefix: str
) -> Loaded[DomainState]:
    row = await _one(db, DOMAIN_BY_ID, (domain_id,))
    if row is None:
        raise NotFound("domain not found", f"no domain with id {domain_id}")
    state = _domain(row)
    return Loaded(state, domain_subject(state.name, prefix), int(row[4]))


async def domain_ref(db: aiosqlite.Connection, domain_id: int) -> DomainRef:
    row = await _one(db, DOMAIN_BY_ID, (domain_id,))
    return DomainRef() if row is None else DomainRef(id=domain_id, name=str(row[1]))


async def domain_ref_by_name(db: aiosqlite.Connection, name: str) -> DomainRef:
    row = await _one(db, DOMAIN_BY_NAME, (name,))
    return DomainRef() if row is None else DomainRef(id=int(row[0]), name=name)


async def address(db: aiosqlite.Connection, addr: str, prefix: str) -> Loaded[AliasState]:
    """Whatever is at an address: a mailbox, an alias, or nothing (with the subject's seq)."""
    subject = address_subject(addr, prefix)
    mbox = await _one(db, MAILBOX_AT, (addr,))
    if mbox is not None:
        return Loaded(AliasState(at=_mailbox(mbox)), subject, int(mbox[4]))
    alias = await _one(db, ALIAS_AT, (addr,))
    if alias is not None:
        return Loaded(_alias(alias), subject, int(alias[3]))
    return Loaded(AliasState(), subject, await _subject_seq(db, subject))


def _mailbox(row: tuple[Any, ...]) -> AddressState:
    quota = row[3]
    return AddressState(
        kind="mailbox",
        id=int(row[0]),
        address=str(row[1]),
        active=bool(row[2]),
        quota=None if quota is None else int(quota),
    )


def _alias(row: tuple[Any, ...]) -> AliasState:
    return AliasState(
        at=AddressState(kind="alias", id=int(row[0]), address=str(row[1])),
        destination=str(row[2]),
    )


async def mailbox_by_id(
    db: aiosqlite.Connection, mailbox_id: int, prefix: str
) -> Loaded[AddressState]:
    row = await _one(db, MAILBOX_BY_ID, (mailbox_id,))
    if row is None:
        raise NotFound("mailbox not found", f"no mailbox with id {mailbox_id}")
    state = _mailbox(row)
    return Loaded(state, address_subject(state.address, prefix), int(row[4]))


async def alias_by_id(db: aiosqlite.Connection, alias_id: int, prefix: str) -> Loaded[AliasState]:
    row = await _one(db, ALIAS_BY_ID, (alias_id,))
    if row is None:
        raise NotFound("alias not found", f"no alias with id {alias_id}")
    state = _alias(row)
    return Loaded(state, address_subject(state.at.address, prefix), int(row[3]))


TOKEN_BY_NAME = "SELECT id, name, version FROM tokens WHERE name = ? AND revoked_at IS NULL"
TOKEN_BY_ID = "SELECT id, name, version FROM tokens WHERE id = ? AND revoked_at IS NULL"
SECURITY = "SELECT data, version FROM security_settings WHERE id = 1"


async def token_by_name(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[TokenState]:
    subject = token_subject(name, prefix)
    row = await _one(db, TOKEN_BY_NAME, (name,))
    if row is None:
        return Loaded(TokenState(), subject, await _subject_seq(db, subject))
    return Loaded(TokenState(id=int(row[0]), name=str(row[1])), subject, int(row[2]))


async def token_by_id(db: aiosqlite.Connection, token_id: int, prefix: str) -> Loaded[TokenState]:
    row = await _one(db, TOKEN_BY_ID, (token_id,))
    if row is None:
        raise NotFound("token not found", f"no live token with id {token_id}")
    state = TokenState(id=int(row[0]), name=str(row[1]))
    return Loaded(state, token_subject(state.name, prefix), int(row[2]))


async def security(
    db: aiosqlite.Connection, defaults: SecuritySettings, prefix: str
) -> Loaded[SecuritySettings]:
    """The stored settings, or the defaults (from the environment) before any change."""
    row = await _one(db, SECURITY, ())
    if row is None:
        subject = security_subject(prefix)
        return Loaded(defaults, subject, await _subject_seq(db, subject))
    event = msgspec.json.decode(str(row[0]).encode(), type=SecuritySettingsChanged)
    return Loaded(from_event(event), security_subject(prefix), int(row[1]))


TIER_ROW = "SELECT data, seq FROM config_tiers WHERE name = ?"
DOMAIN_OVERRIDES_ROW = "SELECT data FROM domain_overrides WHERE domain_id = ?"
MAILBOX_OVERRIDES_ROW = "SELECT data FROM mailbox_overrides WHERE mailbox_id = ?"
WHITELIST_AT = (
    "SELECT id, entry_type, value, version FROM whitelist WHERE entry_type = ? AND value = ?"
)
WHITELIST_BY_ID = "SELECT id, entry_type, value, version FROM whitelist WHERE id = ?"
EFFECTIVE_DOMAIN = "SELECT data FROM effective_domains WHERE domain_id = ?"
DOMAIN_COUNTS = (
    "SELECT (SELECT count(*) FROM mailboxes WHERE domain_id = ?), "
    "(SELECT count(*) FROM aliases WHERE domain_id = ?), "
    "(SELECT coalesce(sum(quota_effective), 0) FROM mailboxes WHERE domain_id = ?)"
)

TIER_TYPES: dict[str, type[Tier]] = {
    "global": GlobalConfig,
    "domain_defaults": DomainDefaults,
    "mailbox_defaults": MailboxDefaults,
}


async def tier(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[TierState]:
    subject = config_subject(name, prefix)
    row = await _one(db, TIER_ROW, (name,))
    kind = TIER_TYPES[name]
    if row is None:
        return Loaded(TierState(current=kind()), subject, await _subject_seq(db, subject))
    current = msgspec.json.decode(str(row[0]).encode(), type=kind)
    return Loaded(TierState(current=current), subject, await _subject_seq(db, subject))


async def domain_overrides(
    db: aiosqlite.Connection, domain_id: int, prefix: str
) -> Loaded[OverridesState]:
    domain = await domain_by_id(db, domain_id, prefix)
    row = await _one(db, DOMAIN_OVERRIDES_ROW, (domain_id,))
    current = (
        msgspec.json.decode(str(row[0]).encode(), type=DomainOverrides)
        if row
        else DomainOverrides()
    )
    state = OverridesState(id=domain_id, key=domain.state.name, current=current)
    return Loaded(state, domain.subject, domain.version)


async def mailbox_overrides(
    db: aiosqlite.Connection, mailbox_id: int, prefix: str
) -> Loaded[OverridesState]:
    mailbox = await mailbox_by_id(db, mailbox_id, prefix)
    row = await _one(db, MAILBOX_OVERRIDES_ROW, (mailbox_id,))
    current = (
        msgspec.json.decode(str(row[0]).encode(), type=MailboxOverrides)
        if row
        else MailboxOverrides()
    )
    state = OverridesState(id=mailbox_id, key=mailbox.state.address, current=current)
    return Loaded(state, mailbox.subject, mailbox.version)


async def whitelist_at(
    db: aiosqlite.Connection, entry_type: str, value: str, prefix: str
) -> Loaded[EntryState]:
    subject = whitelist_subject(entry_type, value, prefix)
    row = await _one(db, WHITELIST_AT, (entry_type, value))
    if row is None:
        return Loaded(EntryState(), subject, await _subject_seq(db, subject))
    return Loaded(EntryState(id=int(row[0]), entry_type=row[1], value=row[2]), subject, int(row[3]))


async def whitelist_by_id(
    db: aiosqlite.Connection, entry_id: int, prefix: str
) -> Loaded[EntryState]:
    row = await _one(db, WHITELIST_BY_ID, (entry_id,))
    if row is None:
        raise NotFound("whitelist entry not found", f"no whitelist entry {entry_id}")
    state = EntryState(id=int(row[0]), entry_type=row[1], value=row[2])
    return Loaded(state, whitelist_subject(row[1], row[2], prefix), int(row[3]))


async def domain_usage(db: aiosqlite.Connection, domain_id: int) -> DomainUsage | None:
    """The domain's caps (from its effective config) and what it uses now."""
    row = await _one(db, EFFECTIVE_DOMAIN, (domain_id,))
    counts = await _one(db, DOMAIN_COUNTS, (domain_id,) * 3)
    if row is None or counts is None:
        return None
    eff = msgspec.json.decode(str(row[0]).encode())
    return DomainUsage(
        max_mailboxes=eff["max_mailboxes"],
        max_aliases=eff["max_aliases"],
        quota_total_bytes=eff["quota_total_bytes"],
        mailboxes=counts[0],
        aliases=counts[1],
        quota_sum=counts[2],
    )


MAILBOX_QUOTA = "SELECT domain_id, quota_effective FROM mailboxes WHERE id = ?"


async def mailbox_quota(db: aiosqlite.Connection, mailbox_id: int) -> tuple[int, int]:
    """(domain id, effective quota) of an existing mailbox."""
    row = await _one(db, MAILBOX_QUOTA, (mailbox_id,))
    if row is None:
        raise NotFound("mailbox not found", f"no mailbox with id {mailbox_id}")
    return int(row[0]), int(row[1])
