"""Decision state from the read model, with the aggregate's last subject sequence.

A stale read is harmless: the append then fails on the expected sequence and is retried. What
must never happen is a state OLDER than the sequence read with it (an absent row read before the
creating event was applied, then that event's sequence): the append would pass and the aggregate
would be created twice. So a lookup by natural key reads the row and the subject's sequence in
ONE statement (one snapshot); a lookup by id reads the row's own version in the same row.
"""

from typing import Any, Generic, TypeVar

import aiosqlite
import msgspec

from core.alias import AliasState
from core.config import TIER_TYPES, DomainOverrides, MailboxOverrides, Tier
from core.dkim import DkimState
from core.domain import DomainState
from core.errors import NotFound
from core.events import (
    AliasDeleted,
    AliasUpdated,
    DomainDefaultsSet,
    DomainDeleted,
    DomainOverridesSet,
    DomainUpdated,
    Event,
    GlobalConfigSet,
    MailboxDefaultsSet,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxUpdated,
    SecuritySettingsChanged,
    Snapshot,
    SystemRestored,
    WhitelistEntryRemoved,
)
from core.limits import DomainUsage
from core.mailbox import AddressState, DomainRef
from core.revert import TIER_OF, Before
from core.security import SecuritySettings, from_event
from core.subjects import (
    address_subject,
    config_subject,
    dkim_subject,
    domain_subject,
    security_subject,
    tls_subject,
    token_subject,
    whitelist_subject,
)
from core.tiers import OverridesState, TierState
from core.tls import CertState
from core.token import TokenState
from core.whitelist import EntryState
from projections import queries as q
from projections.effective import USAGE, usage_from
from projections.queries import OVERRIDES


def at_subject(sql: str) -> str:
    """`sql` (at most one row) with the subject's last sequence in front, in one statement;
    the first parameter is the subject."""
    return (
        "SELECT (SELECT last_seq FROM subjects WHERE subject = ?), q.* "
        f"FROM (SELECT 1) LEFT JOIN ({sql}) q ON 1"
    )


DOMAIN_BY_NAME = "SELECT id, name, active, outgoing_ip, version FROM domains WHERE name = ?"
DOMAIN_BY_ID = "SELECT id, name, active, outgoing_ip, version FROM domains WHERE id = ?"
MAILBOX_BY_ID = "SELECT id, address, active, quota, version FROM mailboxes WHERE id = ?"
ALIAS_BY_ID = "SELECT id, source, destination, version FROM aliases WHERE id = ?"


S = TypeVar("S")
OverridesT = TypeVar("OverridesT", DomainOverrides, MailboxOverrides)


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


def _domain(row: tuple[Any, ...]) -> DomainState:
    return DomainState(
        id=int(row[0]),
        name=str(row[1]),
        active=bool(row[2]),
        outgoing_ip=str(row[3]),
    )


DOMAIN_AT = at_subject(DOMAIN_BY_NAME)


async def _keyed(
    db: aiosqlite.Connection, sql: str, subject: str, args: tuple[Any, ...]
) -> tuple[int, tuple[Any, ...] | None]:
    """(subject sequence, the row or None) from one `at_subject` statement."""
    row = await _one(db, sql, (subject, *args))
    assert row is not None
    return int(row[0] or 0), (None if row[1] is None else row[1:])


async def domain_by_name(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[DomainState]:
    subject = domain_subject(name, prefix)
    seq, row = await _keyed(db, DOMAIN_AT, subject, (name,))
    return Loaded(DomainState() if row is None else _domain(row), subject, seq)


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


ADDRESS_AT = (
    "SELECT (SELECT last_seq FROM subjects WHERE subject = ?), "
    "m.id, m.address, m.active, m.quota, m.version, a.id, a.source, a.destination, a.version "
    "FROM (SELECT 1) LEFT JOIN mailboxes m ON m.address = ? LEFT JOIN aliases a ON a.source = ?"
)


async def address(db: aiosqlite.Connection, addr: str, prefix: str) -> Loaded[AliasState]:
    """Whatever is at an address: a mailbox, an alias, or nothing (with the subject's seq)."""
    subject = address_subject(addr, prefix)
    row = await _one(db, ADDRESS_AT, (subject, addr, addr))
    assert row is not None
    seq = int(row[0] or 0)
    if row[1] is not None:
        return Loaded(AliasState(at=_mailbox(row[1:6])), subject, seq)
    if row[6] is not None:
        return Loaded(_alias(row[6:10]), subject, seq)
    return Loaded(AliasState(), subject, seq)


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


TOKEN_AT = at_subject(TOKEN_BY_NAME)
SECURITY_AT = at_subject(SECURITY)


async def token_by_name(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[TokenState]:
    subject = token_subject(name, prefix)
    seq, row = await _keyed(db, TOKEN_AT, subject, (name,))
    state = TokenState() if row is None else TokenState(id=int(row[0]), name=str(row[1]))
    return Loaded(state, subject, seq)


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
    subject = security_subject(prefix)
    seq, row = await _keyed(db, SECURITY_AT, subject, ())
    if row is None:
        return Loaded(defaults, subject, seq)
    event = msgspec.json.decode(str(row[0]).encode(), type=SecuritySettingsChanged)
    return Loaded(from_event(event), subject, seq)


TIER_ROW = "SELECT data, seq FROM config_tiers WHERE name = ?"
WHITELIST_AT = (
    "SELECT id, entry_type, value, version FROM whitelist WHERE entry_type = ? AND value = ?"
)
WHITELIST_BY_ID = "SELECT id, entry_type, value, version FROM whitelist WHERE id = ?"


TIER_AT = at_subject(TIER_ROW)
WHITELIST_ENTRY_AT = at_subject(WHITELIST_AT)


async def tier(db: aiosqlite.Connection, name: str, prefix: str) -> Loaded[TierState]:
    subject = config_subject(name, prefix)
    seq, row = await _keyed(db, TIER_AT, subject, (name,))
    kind = TIER_TYPES[name]
    current = kind() if row is None else msgspec.json.decode(str(row[0]).encode(), type=kind)
    return Loaded(TierState(current=current), subject, seq)


async def _overrides(
    db: aiosqlite.Connection, what: str, row_id: int, kind: type[OverridesT]
) -> OverridesT:
    row = await _one(db, OVERRIDES[what], (row_id,))
    return kind() if row is None else msgspec.json.decode(str(row[0]).encode(), type=kind)


async def domain_overrides(
    db: aiosqlite.Connection, domain_id: int, prefix: str
) -> Loaded[OverridesState]:
    domain = await domain_by_id(db, domain_id, prefix)  # version first, then the state
    current = await _overrides(db, "domain", domain_id, DomainOverrides)
    state = OverridesState(id=domain_id, key=domain.state.name, current=current)
    return Loaded(state, domain.subject, domain.version)


async def mailbox_overrides(
    db: aiosqlite.Connection, mailbox_id: int, prefix: str
) -> Loaded[OverridesState]:
    mailbox = await mailbox_by_id(db, mailbox_id, prefix)
    current = await _overrides(db, "mailbox", mailbox_id, MailboxOverrides)
    state = OverridesState(id=mailbox_id, key=mailbox.state.address, current=current)
    return Loaded(state, mailbox.subject, mailbox.version)


async def whitelist_at(
    db: aiosqlite.Connection, entry_type: str, value: str, prefix: str
) -> Loaded[EntryState]:
    subject = whitelist_subject(entry_type, value, prefix)
    seq, row = await _keyed(db, WHITELIST_ENTRY_AT, subject, (entry_type, value))
    if row is None:
        return Loaded(EntryState(), subject, seq)
    return Loaded(EntryState(id=int(row[0]), entry_type=row[1], value=row[2]), subject, seq)


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
    usage: DomainUsage | None = usage_from(await _one(db, USAGE, (domain_id,)))
    return usage


MAILBOX_QUOTA = "SELECT domain_id, quota_effective FROM mailboxes WHERE id = ?"


async def mailbox_quota(db: aiosqlite.Connection, mailbox_id: int) -> tuple[int, int]:
    """(domain id, effective quota) of an existing mailbox."""
    row = await _one(db, MAILBOX_QUOTA, (mailbox_id,))
    if row is None:
        raise NotFound("mailbox not found", f"no mailbox with id {mailbox_id}")
    return int(row[0]), int(row[1])


ALIAS_CREATE = (
    "SELECT d.id, d.name, (SELECT last_seq FROM subjects WHERE subject = ?), "
    "EXISTS (SELECT 1 FROM mailboxes WHERE address = ?), "
    "EXISTS (SELECT 1 FROM aliases WHERE source = ?), "
    "coalesce(e.max_aliases, 0), "
    "CASE WHEN e.max_aliases > 0 "
    "THEN (SELECT count(*) FROM aliases WHERE domain_id = d.id) ELSE 0 END "
    "FROM (SELECT 1) LEFT JOIN domains d ON d.name = ? "
    "LEFT JOIN effective_domains e ON e.domain_id = d.id"
)


async def alias_create(
    db: aiosqlite.Connection, source: str, domain_name: str, prefix: str
) -> tuple[DomainRef, Loaded[AliasState], str]:
    """What creating an alias needs, in one statement: the domain, what is at the address
    (with the subject's sequence), and why the domain's alias cap refuses one more ("" if not)."""
    subject = address_subject(source, prefix)
    row = await _one(db, ALIAS_CREATE, (subject, source, source, domain_name))
    assert row is not None
    domain = DomainRef() if row[0] is None else DomainRef(id=int(row[0]), name=str(row[1]))
    kind = "mailbox" if row[3] else "alias" if row[4] else ""
    at = AddressState(kind=kind, address=source)
    cap, count = int(row[5]), int(row[6])
    refusal = f"the domain already has its maximum of {cap} aliases" if cap and count >= cap else ""
    return domain, Loaded(AliasState(at=at), subject, int(row[2] or 0)), refusal


DKIM_AT = (
    "SELECT (SELECT last_seq FROM subjects WHERE subject = ?), "
    "(SELECT json_group_object(selector, status) FROM dkim_keys WHERE domain = ?)"
)
TLS_AT = at_subject("SELECT id, issuer, fingerprint FROM tls_certs WHERE hostname = ?")
TLS_BY_ID = "SELECT id, hostname, issuer, fingerprint, version FROM tls_certs WHERE id = ?"


async def dkim_keys(db: aiosqlite.Connection, domain: str, prefix: str) -> Loaded[DkimState]:
    """Every selector of the domain and the subject's sequence, in one statement."""
    subject = dkim_subject(domain, prefix)
    row = await _one(db, DKIM_AT, (subject, domain))
    assert row is not None
    keys = msgspec.json.decode(str(row[1] or "{}").encode(), type=dict[str, str])
    return Loaded(DkimState(domain=domain, keys=keys), subject, int(row[0] or 0))


async def tls_cert_at(db: aiosqlite.Connection, hostname: str, prefix: str) -> Loaded[CertState]:
    subject = tls_subject(hostname, prefix)
    seq, row = await _keyed(db, TLS_AT, subject, (hostname,))
    if row is None:
        return Loaded(CertState(hostname=hostname), subject, seq)
    state = CertState(hostname=hostname, id=int(row[0]), issuer=row[1], fingerprint=row[2])
    return Loaded(state, subject, seq)


async def tls_cert_by_id(db: aiosqlite.Connection, cert_id: int, prefix: str) -> Loaded[CertState]:
    row = await _one(db, TLS_BY_ID, (cert_id,))
    if row is None:
        raise NotFound("certificate not found", f"no certificate record {cert_id}")
    state = CertState(hostname=row[1], id=int(row[0]), issuer=row[2], fingerprint=row[3])
    return Loaded(state, tls_subject(row[1], prefix), int(row[4]))


# ---- restores and reverts -----------------------------------------------------------------

RESTORE_AT = (
    "SELECT (SELECT last_seq FROM subjects WHERE subject = ?), "
    "(SELECT seq FROM checkpoint WHERE name = 'projector')"
)
EVENT_ROW = "SELECT data, outcome, resource FROM events WHERE seq = ?"
DEPENDANTS = (
    "SELECT (SELECT json_group_array(id) FROM mailboxes WHERE domain_id = ?1), "
    "(SELECT json_group_array(id) FROM aliases WHERE domain_id = ?1)"
)


async def restore_at(db: aiosqlite.Connection, subject: str) -> Loaded[int]:
    """The restore subject's sequence and the checkpoint (a restore's previous_seq), in one
    statement."""
    row = await _one(db, RESTORE_AT, (subject,))
    assert row is not None
    return Loaded(int(row[1] or 0), subject, int(row[0] or 0))


async def event_row(db: aiosqlite.Connection, seq: int) -> tuple[str, str, str] | None:
    """(stored envelope, outcome, resource) of one indexed event."""
    row = await _one(db, EVENT_ROW, (seq,))
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


async def dependants(db: aiosqlite.Connection, domain_id: int) -> tuple[list[int], list[int]]:
    """The ids of a domain's mailboxes and aliases."""
    row = await _one(db, DEPENDANTS, (domain_id,))
    assert row is not None
    ids = msgspec.json.Decoder(list[int])
    return ids.decode(str(row[0]).encode()), ids.decode(str(row[1]).encode())


async def _rows(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.execute_fetchall(sql, args)]


async def before(db: aiosqlite.Connection, seq: int, event: Event) -> Before:
    """What the resource of `event` looked like in `db`, the read model just before `seq`."""
    match event:
        case DomainUpdated(id=i) | DomainOverridesSet(id=i):
            return await _domain_before(db, i, with_contents=False)
        case DomainDeleted(id=i):
            return await _domain_before(db, i, with_contents=True)
        case (
            MailboxUpdated(id=i)
            | MailboxPasswordChanged(id=i)
            | MailboxDeleted(id=i)
            | MailboxOverridesSet(id=i)
        ):
            boxes = await _rows(db, f"{q.MAILBOX_ROWS} WHERE id = ?", (i,))
            overrides = await _rows(db, f"{q.MAILBOX_OVERRIDE_ROWS} WHERE mailbox_id = ?", (i,))
            return Before(
                mailboxes=[q.mailbox_row(r) for r in boxes],
                mailbox_overrides=[q.mailbox_overrides_row(r) for r in overrides],
            )
        case AliasUpdated(id=i) | AliasDeleted(id=i):
            aliases = await _rows(db, f"{q.ALIAS_ROWS} WHERE id = ?", (i,))
            return Before(aliases=[q.alias_row(r) for r in aliases])
        case GlobalConfigSet() | DomainDefaultsSet() | MailboxDefaultsSet():
            tiers = q.tiers(await _rows(db, q.TIER_ROWS, ()))
            name = TIER_OF[type(event)]
            current: Tier = tiers.global_
            if name == "domain_defaults":
                current = tiers.domain_defaults
            elif name == "mailbox_defaults":
                current = tiers.mailbox_defaults
            return Before(tier=current if name in tiers.updated_at else None)
        case WhitelistEntryRemoved(id=i):
            entries = await _rows(db, f"{q.WHITELIST_ROWS} WHERE id = ?", (i,))
            return Before(entry=q.whitelist_row(entries[0]) if entries else None)
        case SystemRestored():
            return Before(snapshot=await snapshot(db))
    return Before()


async def _domain_before(db: aiosqlite.Connection, domain_id: int, with_contents: bool) -> Before:
    domains = await _rows(db, f"{q.DOMAIN_ROWS} WHERE id = ?", (domain_id,))
    overrides = await _rows(db, f"{q.DOMAIN_OVERRIDE_ROWS} WHERE domain_id = ?", (domain_id,))
    found = Before(
        domain=q.domain_row(domains[0]) if domains else None,
        domain_overrides=q.domain_overrides_row(overrides[0]).overrides if overrides else None,
    )
    if not with_contents:
        return found
    boxes = await _rows(db, f"{q.MAILBOX_ROWS} WHERE domain_id = ? ORDER BY id", (domain_id,))
    box_overrides = await _rows(
        db,
        f"{q.MAILBOX_OVERRIDE_ROWS} WHERE mailbox_id IN "
        "(SELECT id FROM mailboxes WHERE domain_id = ?) ORDER BY mailbox_id",
        (domain_id,),
    )
    aliases = await _rows(db, f"{q.ALIAS_ROWS} WHERE domain_id = ? ORDER BY id", (domain_id,))
    return msgspec.structs.replace(
        found,
        mailboxes=[q.mailbox_row(r) for r in boxes],
        mailbox_overrides=[q.mailbox_overrides_row(r) for r in box_overrides],
        aliases=[q.alias_row(r) for r in aliases],
    )


async def snapshot(db: aiosqlite.Connection) -> Snapshot:
    """The whole data plane of `db` (a replay nobody writes: no transaction needed)."""
    rows = {
        name: await _rows(db, f"{sql} ORDER BY {order}", ())
        for name, (sql, order) in q.SNAPSHOT_SQL.items()
    }
    return q.snapshot_from(rows)
