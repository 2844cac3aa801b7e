"""The alias aggregate: a source address (or @domain catch-all) forwarding to destinations."""

import msgspec

from core.errors import Conflict, NotFound, ValidationFailed
from core.events import AliasCreated, AliasDeleted, AliasUpdated, Event
from core.mailbox import AddressState, DomainRef
from core.validation import check_local_part


class CreateAlias(msgspec.Struct, frozen=True, kw_only=True):
    """source normalised to lowercase local@domain ("@domain" is a catch-all); destinations are
    syntactically valid addresses, normalised by the command layer."""

    domain: DomainRef
    source: str
    destinations: tuple[str, ...]


class UpdateAlias(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    destinations: tuple[str, ...]


class DeleteAlias(msgspec.Struct, frozen=True, kw_only=True):
    id: int


Command = CreateAlias | UpdateAlias | DeleteAlias


class AliasState(msgspec.Struct, frozen=True, kw_only=True):
    at: AddressState = AddressState()
    destination: str = ""


def join_destinations(source: str, destinations: tuple[str, ...]) -> str:
    """One ", "-joined list, duplicates dropped in order; an alias may not point at itself."""
    if not destinations:
        raise ValidationFailed("destination", "destination is required")
    seen: list[str] = []
    for dest in destinations:
        if dest == source:
            raise ValidationFailed("destination", "an alias must not forward to itself")
        if dest not in seen:
            seen.append(dest)
    return ", ".join(seen)


def decide(cmd: Command, state: AliasState) -> list[Event]:
    match cmd:
        case CreateAlias(domain=domain, source=source):
            local, at, domain_name = source.rpartition("@")
            if not at or not domain_name:
                raise ValidationFailed("source", "source must be of the form local@domain")
            if domain.id is None or domain.name != domain_name:
                raise ValidationFailed(
                    "source", f"source domain {domain_name} is not managed by this server"
                )
            if local:
                check_local_part(local, "source")
            if state.at.kind:
                raise Conflict(
                    "alias already exists" if state.at.kind == "alias" else "address in use",
                    f"{source} is already a {state.at.kind}",
                )
            destination = join_destinations(source, cmd.destinations)
            return [AliasCreated(domain_id=domain.id, source=source, destination=destination)]
        case UpdateAlias(id=alias_id):
            current = _existing(state, alias_id)
            destination = join_destinations(current.at.address, cmd.destinations)
            if destination == current.destination:
                return []
            return [AliasUpdated(id=alias_id, source=current.at.address, destination=destination)]
        case DeleteAlias(id=alias_id):
            current = _existing(state, alias_id)
            return [AliasDeleted(id=alias_id, source=current.at.address)]
    raise AssertionError(cmd)


def evolve(state: AliasState, event: Event, seq: int) -> AliasState:
    match event:
        case AliasCreated():
            return AliasState(
                at=AddressState(kind="alias", id=seq, address=event.source),
                destination=event.destination,
            )
        case AliasUpdated():
            return msgspec.structs.replace(state, destination=event.destination)
        case AliasDeleted():
            return AliasState()
    return state


def _existing(state: AliasState, alias_id: int) -> AliasState:
    if state.at.kind != "alias" or state.at.id != alias_id:
        raise NotFound("alias not found", f"no alias with id {alias_id}")
    return state
