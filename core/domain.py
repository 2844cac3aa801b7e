"""The domain aggregate: a virtual mail domain, keyed by its name."""

import msgspec

from core.errors import Conflict, NotFound
from core.events import DomainCreated, DomainDeleted, DomainUpdated, Event
from core.validation import check_domain_name, check_ip


class DomainState(msgspec.Struct, frozen=True, kw_only=True):
    """What a decision needs; id None means the domain does not exist (now)."""

    id: int | None = None
    name: str = ""
    active: bool = True
    outgoing_ip: str = ""


class CreateDomain(msgspec.Struct, frozen=True, kw_only=True):
    """outgoing_ip arrives resolved: "auto" is replaced by the chosen host address before."""

    name: str
    outgoing_ip: str = ""


class UpdateDomain(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    active: bool | None = None
    outgoing_ip: str | None = None


class DeleteDomain(msgspec.Struct, frozen=True, kw_only=True):
    id: int


Command = CreateDomain | UpdateDomain | DeleteDomain


def decide(cmd: Command, state: DomainState) -> list[Event]:
    match cmd:
        case CreateDomain(name=name, outgoing_ip=ip):
            check_domain_name(name)
            if ip:
                ip = check_ip(ip)
            if state.id is not None:
                raise Conflict("domain already exists", f"a domain named {name} exists")
            return [DomainCreated(name=name, outgoing_ip=ip)]
        case UpdateDomain(id=domain_id):
            current = _existing(state, domain_id)
            active = current.active if cmd.active is None else cmd.active
            ip = current.outgoing_ip if cmd.outgoing_ip is None else cmd.outgoing_ip
            if ip:
                ip = check_ip(ip)
            if (active, ip) == (current.active, current.outgoing_ip):
                return []
            return [DomainUpdated(id=domain_id, name=current.name, active=active, outgoing_ip=ip)]
        case DeleteDomain(id=domain_id):
            current = _existing(state, domain_id)
            return [DomainDeleted(id=domain_id, name=current.name)]
    raise AssertionError(cmd)


def evolve(state: DomainState, event: Event, seq: int) -> DomainState:
    match event:
        case DomainCreated():
            return DomainState(
                id=seq, name=event.name, active=event.active, outgoing_ip=event.outgoing_ip
            )
        case DomainUpdated():
            return msgspec.structs.replace(
                state, active=event.active, outgoing_ip=event.outgoing_ip
            )
        case DomainDeleted():
            return DomainState()
    return state


def _existing(state: DomainState, domain_id: int) -> DomainState:
    if state.id is None or state.id != domain_id:
        raise NotFound("domain not found", f"no domain with id {domain_id}")
    return state
