"""Decision state from the read model, with the aggregate's last subject sequence.

A stale read is harmless: the append then fails on the expected sequence and is retried.
"""

from typing import Any, Generic, TypeVar

import aiosqlite
import msgspec

from core.alias import AliasState
from core.domain import DomainState
from core.errors import NotFound
from core.mailbox import AddressState, DomainRef
from core.events import SecuritySettingsChanged
from core.security import SecuritySettings, from_event
from core.subjects import address_subject, domain_subject, security_subject, token_subject
from core.token import TokenState

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
