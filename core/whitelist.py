"""The anti-spam whitelist: senders and networks that bypass DNSBL and greylisting."""

import ipaddress

import msgspec

from core.errors import Conflict, NotFound, ValidationFailed
from core.events import Event, WhitelistEntryAdded, WhitelistEntryRemoved
from core.validation import check_domain_name

ENTRY_TYPES = ("ip", "cidr", "domain", "email")


class EntryState(msgspec.Struct, frozen=True, kw_only=True):
    id: int | None = None
    entry_type: str = ""
    value: str = ""


class AddEntry(msgspec.Struct, frozen=True, kw_only=True):
    """value arrives lowercased; domains in A-label form, addresses normalised."""

    entry_type: str
    value: str
    note: str = ""


class RemoveEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int


def canonical(entry_type: str, value: str) -> str:
    """The value in canonical form for its type, or ValidationFailed."""
    if entry_type not in ENTRY_TYPES:
        raise ValidationFailed("entry_type", "entry_type must be one of ip, cidr, domain, email")
    if not value:
        raise ValidationFailed("value", "value is required")
    try:
        if entry_type == "ip":
            return str(ipaddress.ip_address(value))
        if entry_type == "cidr":
            return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValidationFailed("value", f"value is not a valid {entry_type}: {value!r}") from None
    if entry_type == "domain":
        return check_domain_name(value, "value")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise ValidationFailed("value", f"value is not a valid email address: {value!r}")
    return value


def decide(cmd: AddEntry | RemoveEntry, state: EntryState) -> list[Event]:
    match cmd:
        case AddEntry():
            value = canonical(cmd.entry_type, cmd.value)
            if len(cmd.note) > 500:
                raise ValidationFailed("note", "note must be at most 500 characters")
            if state.id is not None:
                raise Conflict("whitelist entry exists", f"{cmd.entry_type} {value} is listed")
            return [WhitelistEntryAdded(entry_type=cmd.entry_type, value=value, note=cmd.note)]
        case RemoveEntry(id=entry_id):
            if state.id is None or state.id != entry_id:
                raise NotFound("whitelist entry not found", f"no whitelist entry {entry_id}")
            return [
                WhitelistEntryRemoved(id=entry_id, entry_type=state.entry_type, value=state.value)
            ]
    raise AssertionError(cmd)
