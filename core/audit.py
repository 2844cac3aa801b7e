"""The audit view of events: which resource each one touched and what it changed.

Pure. `resource_of` names the resource ("domain:7", "mailbox:12", "config:global", ...);
`fold` walks one resource's events in order and gives each its `before` / `after` values of
the fields that changed (a creation has no before, a deletion no after). Secrets (password
and token hashes, sealed private keys) are shown as REDACTED, never in clear.
"""

from typing import Any

import msgspec

from core.events import (
    AgentReconciled,
    AliasCreated,
    AliasDeleted,
    AliasRestored,
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
    DomainUpdated,
    Event,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDefaultsSet,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxRestored,
    MailboxUpdated,
    SecuritySettingsChanged,
    SequenceReserved,
    SystemRestored,
    TlsCertRegistered,
    TlsCertRemoved,
    TokenCreated,
    TokenRevoked,
    TokenRotated,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    WhitelistEntryRestored,
)

REDACTED = "[redacted]"
SECRET_FIELDS = frozenset(
    {"password_hash", "secret_sha256", "private_key_sealed", "key_sealed", "hint"}
)
# The fields a mailbox.created shows, which a mailbox.restored shows likewise.
_MAILBOX_CREATED = ("domain_id", "username", "address", "password_hash", "quota", "active")
# Bulky public fields left out of the change view (the event itself still has them).
BULKY_FIELDS = frozenset({"chain_pem", "log", "changed"})


class Change(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    resource: str
    action: str  # created | updated | deleted | event
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def resource_of(event: Event, seq: int) -> str:
    """The resource an event belongs to; a creation's id is its own sequence."""
    match event:
        case DomainCreated():
            return f"domain:{seq}"
        case DomainUpdated(id=i) | DomainDeleted(id=i) | DomainOverridesSet(id=i):
            return f"domain:{i}"
        case MailboxCreated():
            return f"mailbox:{seq}"
        case (
            MailboxUpdated(id=i)
            | MailboxDeleted(id=i)
            | MailboxPasswordChanged(id=i)
            | MailboxOverridesSet(id=i)
        ):
            return f"mailbox:{i}"
        case AliasCreated():
            return f"alias:{seq}"
        case AliasUpdated(id=i) | AliasDeleted(id=i):
            return f"alias:{i}"
        case TokenCreated():
            return f"token:{seq}"
        case TokenRotated(id=i) | TokenRevoked(id=i):
            return f"token:{i}"
        case GlobalConfigSet():
            return "config:global"
        case DomainDefaultsSet():
            return "config:domain_defaults"
        case MailboxDefaultsSet():
            return "config:mailbox_defaults"
        case SecuritySettingsChanged():
            return "security:settings"
        case WhitelistEntryAdded():
            return f"whitelist:{seq}"
        case WhitelistEntryRemoved(id=i):
            return f"whitelist:{i}"
        case (
            DkimKeyGenerated(domain=d)
            | DkimKeyActivated(domain=d)
            | DkimKeyRetired(domain=d)
            | DkimKeyDeleted(domain=d)
        ):
            return f"dkim:{d}"
        case TlsCertRegistered(hostname=h):
            return f"tls:{h}"
        case TlsCertRemoved(hostname=h):
            return f"tls:{h}"
        case AgentReconciled(host=h):
            return f"agent:{h}"
        case DomainRestored(domain=d):
            return f"domain:{d.id}"
        case MailboxRestored(mailbox=m):
            return f"mailbox:{m.id}"
        case AliasRestored(alias=a):
            return f"alias:{a.id}"
        case WhitelistEntryRestored(entry=w):
            return f"whitelist:{w.id}"
        case SystemRestored():
            return "system:restore"
        case SequenceReserved():  # each filler its own: a history of one, never folded in bulk
            return f"system:reserved:{seq}"
    return "other"


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _fields(event: Event) -> tuple[str, dict[str, Any]]:
    """(action, the resource fields this event sets)."""
    if isinstance(event, AgentReconciled | SystemRestored | SequenceReserved):
        return "event", {}  # a report, a whole snapshot or a filler: no field view
    data = {
        k: v
        for k, v in _plain(event).items()
        if k not in ("type", "v", "id") and k not in BULKY_FIELDS
    }
    match event:
        case DomainDeleted() | MailboxDeleted() | AliasDeleted() | WhitelistEntryRemoved():
            return "deleted", {}
        case TlsCertRemoved():
            return "deleted", {}
        case TokenRevoked():
            return "updated", {"revoked": True}
        case DomainCreated() | MailboxCreated() | AliasCreated() | TokenCreated():
            return "created", data
        case WhitelistEntryAdded():
            return "created", data
        case GlobalConfigSet() | DomainDefaultsSet() | MailboxDefaultsSet():
            return "updated", dict(data["config"])
        case DomainOverridesSet() | MailboxOverridesSet():
            return "updated", {f"overrides.{k}": v for k, v in data["overrides"].items()}
        case DkimKeyGenerated(selector=s):
            return "updated", {
                f"{s}.{k}": v for k, v in data.items() if k not in ("domain", "selector")
            }
        case DkimKeyActivated(selector=s, previous=p):
            changes: dict[str, Any] = {f"{s}.status": "active"}
            if p:
                changes[f"{p}.status"] = "previous"
            return "updated", changes
        case DkimKeyRetired(selector=s):
            return "updated", {f"{s}.status": "retired"}
        case DkimKeyDeleted(selector=s):
            return "updated", {f"{s}.status": None}
        case DomainRestored(domain=d):  # back as it was: the row's own fields
            return "created", {"name": d.name, "active": d.active, "outgoing_ip": d.outgoing_ip}
        case MailboxRestored(mailbox=m):
            row = _plain(m)
            return "created", {k: row[k] for k in _MAILBOX_CREATED if k in row}
        case AliasRestored(alias=a):
            return "created", {
                "domain_id": a.domain_id,
                "source": a.source,
                "destination": a.destination,
            }
        case WhitelistEntryRestored(entry=w):
            return "created", {"entry_type": w.entry_type, "value": w.value, "note": w.note}
    return "updated", data


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (REDACTED if k.rsplit(".", 1)[-1] in SECRET_FIELDS else v) for k, v in values.items()
    }


def fold(resource: str, events: list[tuple[int, Event]]) -> list[Change]:
    """Before/after of each event of one resource, oldest first."""
    state: dict[str, Any] = {}
    out = []
    for seq, event in events:
        action, values = _fields(event)
        if action == "deleted":
            out.append(
                Change(seq=seq, resource=resource, action=action, before=_shown(state), after=None)
            )
            state = {}
            continue
        if action == "event":
            out.append(Change(seq=seq, resource=resource, action=action, before=None, after=None))
            continue
        if action == "created":
            state = dict(values)
            out.append(
                Change(seq=seq, resource=resource, action=action, before=None, after=_shown(state))
            )
            continue
        changed = {k: v for k, v in values.items() if state.get(k) != v or k not in state}
        secret = [k for k in values if k.rsplit(".", 1)[-1] in SECRET_FIELDS]
        for k in secret:  # a new secret always counts as a change, shown redacted
            changed[k] = values[k]
        before = {k: state.get(k) for k in changed}
        state.update(values)
        out.append(
            Change(
                seq=seq,
                resource=resource,
                action=action,
                before=_shown(before),
                after=_shown(changed),
            )
        )
    return out
