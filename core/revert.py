"""Reverting one event: the compensating event, when it is still possible. Pure.

The command layer finds the event, refuses when a later event changed the same resource (or a
restore replaced everything since), reads what the resource looked like just before the event
(`Before`, from a time-travel replay to seq - 1) and what is there now (`Now`, with the
subject's sequence the append will expect); `decide` gives the one event that brings the
resource back to `Before`. Every such event carries `Meta.reverts` = the reverted sequence.
"""

from typing import TypeVar

import msgspec

from core.backup import counts
from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    Tier,
)
from core.errors import Conflict, Forbidden
from core.events import (
    AliasCreated,
    AliasDeleted,
    AliasRestored,
    AliasRow,
    AliasUpdated,
    DomainCreated,
    DomainDefaultsSet,
    DomainDeleted,
    DomainOverridesSet,
    DomainRestored,
    DomainRow,
    DomainUpdated,
    Event,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDefaultsSet,
    MailboxDeleted,
    MailboxOverridesRow,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxRestored,
    MailboxRow,
    MailboxUpdated,
    Snapshot,
    SystemRestored,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    WhitelistEntryRestored,
    WhitelistRow,
    event_tag,
)

REVERTIBLE = (
    DomainCreated,
    DomainUpdated,
    DomainDeleted,
    DomainOverridesSet,
    DomainRestored,
    MailboxCreated,
    MailboxUpdated,
    MailboxPasswordChanged,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxRestored,
    AliasCreated,
    AliasUpdated,
    AliasDeleted,
    AliasRestored,
    GlobalConfigSet,
    DomainDefaultsSet,
    MailboxDefaultsSet,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    WhitelistEntryRestored,
    SystemRestored,
)
# Reverts that need the state just before the event (a time-travel replay to seq - 1).
NEEDS_BEFORE = (
    DomainUpdated,
    DomainDeleted,
    DomainOverridesSet,
    MailboxUpdated,
    MailboxPasswordChanged,
    MailboxDeleted,
    MailboxOverridesSet,
    AliasUpdated,
    AliasDeleted,
    GlobalConfigSet,
    DomainDefaultsSet,
    MailboxDefaultsSet,
    WhitelistEntryRemoved,
    SystemRestored,
)
# Tier events by the tier they set.
TIER_OF = {
    GlobalConfigSet: "global",
    DomainDefaultsSet: "domain_defaults",
    MailboxDefaultsSet: "mailbox_defaults",
}
CAP_FIELDS = ("max_mailboxes", "max_aliases", "quota_total_bytes")
T = TypeVar("T")


class Before(msgspec.Struct, frozen=True, kw_only=True):
    """The resource just before the reverted event (None / empty: it did not exist)."""

    domain: DomainRow | None = None
    domain_overrides: DomainOverrides | None = None
    mailboxes: list[MailboxRow] = []  # the domain's (domain events) or the one mailbox
    mailbox_overrides: list[MailboxOverridesRow] = []
    aliases: list[AliasRow] = []  # the domain's (domain events) or the one alias
    tier: Tier | None = None
    entry: WhitelistRow | None = None
    snapshot: Snapshot | None = None


class Now(msgspec.Struct, frozen=True, kw_only=True):
    """What is there now, as far as the revert cares."""

    exists: bool = False  # the resource the event made or changed is still there
    taken: str = ""  # why the name or address is not free for an undelete ("" if it is)
    blockers: str = ""  # why a creation cannot be undone (e.g. its domain has mailboxes)
    parent: bool = True  # a mailbox's or alias's domain still exists (same id and name)
    checkpoint: int = 0  # the read model's checkpoint (a restore revert's previous_seq)


class Revert(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    event: Event
    before: Before
    scoped: bool = False  # a domain-scoped caller: caps and the outgoing IP stay as they are


def domain_of(event: Event) -> str | None:
    """The domain an event's resource belongs to; None for system-wide resources."""
    match event:
        case DomainCreated(name=n) | DomainUpdated(name=n) | DomainDeleted(name=n):
            return n
        case DomainOverridesSet(name=n):
            return n
        case DomainRestored(domain=d):
            return d.name
        case (
            MailboxCreated(address=a)
            | MailboxUpdated(address=a)
            | MailboxPasswordChanged(address=a)
            | MailboxDeleted(address=a)
            | MailboxOverridesSet(address=a)
        ):
            return a.rpartition("@")[2]
        case MailboxRestored(mailbox=m):
            return m.address.rpartition("@")[2]
        case AliasCreated(source=s) | AliasUpdated(source=s) | AliasDeleted(source=s):
            return s.rpartition("@")[2]
        case AliasRestored(alias=a):
            return a.source.rpartition("@")[2]
    return None


def cannot(event: Event) -> Conflict:
    return Conflict(
        "event cannot be reverted", f"{event_tag(event)} events have no compensating command"
    )


def decide(cmd: Revert, now: Now) -> list[Event]:
    """The compensating event; Conflict when the resource is not where the event left it."""
    e, b, seq = cmd.event, cmd.before, cmd.seq
    match e:
        case DomainCreated(name=name):
            _still(now, f"domain {name}")
            if now.blockers:
                raise Conflict("cannot revert the domain's creation", now.blockers)
            return [DomainDeleted(id=seq, name=name)]
        case DomainRestored(domain=d):
            _still(now, f"domain {d.name}")
            if now.blockers:
                raise Conflict("cannot revert the domain's undelete", now.blockers)
            return [DomainDeleted(id=d.id, name=d.name)]
        case DomainUpdated(id=i, name=name):
            d = _had(b.domain, f"domain {name}")
            _still(now, f"domain {name}")
            if cmd.scoped and d.outgoing_ip != e.outgoing_ip:
                raise Forbidden("forbidden", "a domain-scoped token cannot change the outgoing IP")
            return [DomainUpdated(id=i, name=name, active=d.active, outgoing_ip=d.outgoing_ip)]
        case DomainDeleted(name=name):
            d = _had(b.domain, f"domain {name}")
            _free(now)
            return [
                DomainRestored(
                    domain=d,
                    overrides=b.domain_overrides,
                    mailboxes=b.mailboxes,
                    mailbox_overrides=b.mailbox_overrides,
                    aliases=b.aliases,
                )
            ]
        case DomainOverridesSet(id=i, name=name):
            _still(now, f"domain {name}")
            earlier = b.domain_overrides or DomainOverrides()
            if cmd.scoped and any(
                getattr(earlier, f) != getattr(e.overrides, f) for f in CAP_FIELDS
            ):
                raise Forbidden("forbidden", "a domain-scoped token cannot change the domain caps")
            return [DomainOverridesSet(id=i, name=name, overrides=earlier)]
        case MailboxCreated(address=address):
            _still(now, f"mailbox {address}")
            return [MailboxDeleted(id=seq, address=address)]
        case MailboxRestored(mailbox=m):
            _still(now, f"mailbox {m.address}")
            return [MailboxDeleted(id=m.id, address=m.address)]
        case MailboxUpdated(id=i, address=address):
            m = _had(_first(b.mailboxes), f"mailbox {address}")
            _still(now, f"mailbox {address}")
            return [MailboxUpdated(id=i, address=address, active=m.active, quota=m.quota)]
        case MailboxPasswordChanged(id=i, address=address):
            m = _had(_first(b.mailboxes), f"mailbox {address}")
            _still(now, f"mailbox {address}")
            return [MailboxPasswordChanged(id=i, address=address, password_hash=m.password_hash)]
        case MailboxDeleted(address=address):
            m = _had(_first(b.mailboxes), f"mailbox {address}")
            _free(now)
            _parent(now, address)
            overrides = next(
                (o.overrides for o in b.mailbox_overrides if o.mailbox_id == m.id), None
            )
            return [MailboxRestored(mailbox=m, overrides=overrides)]
        case MailboxOverridesSet(id=i, address=address):
            _still(now, f"mailbox {address}")
            previous = next(
                (o.overrides for o in b.mailbox_overrides if o.mailbox_id == i), MailboxOverrides()
            )
            return [MailboxOverridesSet(id=i, address=address, overrides=previous)]
        case AliasCreated(source=source):
            _still(now, f"alias {source}")
            return [AliasDeleted(id=seq, source=source)]
        case AliasRestored(alias=a):
            _still(now, f"alias {a.source}")
            return [AliasDeleted(id=a.id, source=a.source)]
        case AliasUpdated(id=i, source=source):
            a = _had(_first(b.aliases), f"alias {source}")
            _still(now, f"alias {source}")
            return [AliasUpdated(id=i, source=source, destination=a.destination)]
        case AliasDeleted(source=source):
            a = _had(_first(b.aliases), f"alias {source}")
            _free(now)
            _parent(now, source)
            return [AliasRestored(alias=a)]
        case GlobalConfigSet():
            glob = b.tier if isinstance(b.tier, GlobalConfig) else GlobalConfig()
            return [GlobalConfigSet(config=glob)]
        case DomainDefaultsSet():
            defaults = b.tier if isinstance(b.tier, DomainDefaults) else DomainDefaults()
            return [DomainDefaultsSet(config=defaults)]
        case MailboxDefaultsSet():
            boxes = b.tier if isinstance(b.tier, MailboxDefaults) else MailboxDefaults()
            return [MailboxDefaultsSet(config=boxes)]
        case WhitelistEntryAdded(entry_type=kind, value=value):
            _still(now, f"whitelist entry {kind} {value}")
            return [WhitelistEntryRemoved(id=seq, entry_type=kind, value=value)]
        case WhitelistEntryRestored(entry=w):
            _still(now, f"whitelist entry {w.entry_type} {w.value}")
            return [WhitelistEntryRemoved(id=w.id, entry_type=w.entry_type, value=w.value)]
        case WhitelistEntryRemoved(entry_type=kind, value=value):
            w = _had(b.entry, f"whitelist entry {kind} {value}")
            _free(now)
            return [WhitelistEntryRestored(entry=w)]
        case SystemRestored():
            if b.snapshot is None:
                raise AssertionError("a restore's revert needs the state before it")
            return [
                SystemRestored(
                    snapshot=b.snapshot,
                    previous_seq=now.checkpoint,
                    counts=counts(b.snapshot),
                )
            ]
    raise cannot(e)


def _first(rows: list[T]) -> T | None:
    return rows[0] if rows else None


def _had(row: T | None, what: str) -> T:
    if row is None:  # the index says the event took effect, so this is a broken history
        raise Conflict("cannot revert", f"{what} is not in the state before the event")
    return row


def _still(now: Now, what: str) -> None:
    if not now.exists:
        raise Conflict("cannot revert", f"{what} no longer exists")


def _free(now: Now) -> None:
    if now.taken:
        raise Conflict("cannot revert", now.taken)


def _parent(now: Now, address: str) -> None:
    if not now.parent:
        raise Conflict(
            "cannot revert", f"the domain of {address} no longer exists (or is another one now)"
        )
