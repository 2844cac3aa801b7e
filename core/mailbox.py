"""The mailbox aggregate, keyed by its full address (shared with aliases: one address, one use)."""

import msgspec

from core.errors import Conflict, NotFound, ValidationFailed
from core.events import (
    AliasCreated,
    AliasDeleted,
    Event,
    MailboxCreated,
    MailboxDeleted,
    MailboxPasswordChanged,
    MailboxUpdated,
)
from core.validation import check_local_part


class DomainRef(msgspec.Struct, frozen=True, kw_only=True):
    """The parent domain as the decision sees it; id None means it does not exist."""

    id: int | None = None
    name: str = ""


class AddressState(msgspec.Struct, frozen=True, kw_only=True):
    """What is at one address: nothing, a mailbox or an alias."""

    kind: str = ""  # "", "mailbox" or "alias"
    id: int | None = None
    address: str = ""
    active: bool = True
    quota: int | None = None


class CreateMailbox(msgspec.Struct, frozen=True, kw_only=True):
    """username as sent (local part, or local@domain); password already hashed."""

    domain: DomainRef
    username: str
    password_hash: str
    quota: int | None = None


class ChangePassword(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    password_hash: str


class UpdateMailbox(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    active: bool | None = None
    quota: int | None = None


class DeleteMailbox(msgspec.Struct, frozen=True, kw_only=True):
    id: int


Command = CreateMailbox | ChangePassword | UpdateMailbox | DeleteMailbox


def split_username(username: str, domain: DomainRef) -> str:
    """The local part of a username; a domain suffix, when present, must be the parent's."""
    if domain.id is None:
        raise NotFound("domain not found", "domain_id does not reference an existing domain")
    local, at, suffix = username.partition("@")
    if at:
        if suffix != domain.name:
            raise ValidationFailed(
                "username",
                f'username domain "{suffix}" does not match domain_id ({domain.id})',
                f"domain_id {domain.id} is {domain.name}",
            )
    return check_local_part(local)


def decide(cmd: Command, state: AddressState) -> list[Event]:
    match cmd:
        case CreateMailbox(domain=domain):
            local = split_username(cmd.username, domain)
            if cmd.quota is not None and cmd.quota < 0:
                raise ValidationFailed("quota", "quota must be non-negative")
            assert domain.id is not None
            if state.kind:
                raise Conflict(
                    "mailbox already exists" if state.kind == "mailbox" else "address in use",
                    f"{local}@{domain.name} is already a {state.kind}",
                )
            if not cmd.password_hash.startswith("{"):
                raise ValidationFailed("password", "password must be hashed with a {SCHEME}")
            return [
                MailboxCreated(
                    domain_id=domain.id,
                    username=local,
                    address=f"{local}@{domain.name}",
                    password_hash=cmd.password_hash,
                    quota=cmd.quota,
                )
            ]
        case ChangePassword(id=mailbox_id):
            current = _existing(state, mailbox_id)
            return [
                MailboxPasswordChanged(
                    id=mailbox_id, address=current.address, password_hash=cmd.password_hash
                )
            ]
        case UpdateMailbox(id=mailbox_id):
            current = _existing(state, mailbox_id)
            if cmd.quota is not None and cmd.quota < 0:
                raise ValidationFailed("quota", "quota must be non-negative")
            active = current.active if cmd.active is None else cmd.active
            quota = current.quota if cmd.quota is None else cmd.quota
            if (active, quota) == (current.active, current.quota):
                return []
            return [
                MailboxUpdated(id=mailbox_id, address=current.address, active=active, quota=quota)
            ]
        case DeleteMailbox(id=mailbox_id):
            current = _existing(state, mailbox_id)
            return [MailboxDeleted(id=mailbox_id, address=current.address)]
    raise AssertionError(cmd)


def evolve(state: AddressState, event: Event, seq: int) -> AddressState:
    match event:
        case MailboxCreated():
            return AddressState(
                kind="mailbox",
                id=seq,
                address=event.address,
                active=event.active,
                quota=event.quota,
            )
        case MailboxUpdated():
            return msgspec.structs.replace(state, active=event.active, quota=event.quota)
        case AliasCreated():
            return AddressState(kind="alias", id=seq, address=event.source)
        case MailboxDeleted() | AliasDeleted():
            return AddressState()
    return state


def _existing(state: AddressState, mailbox_id: int) -> AddressState:
    if state.kind != "mailbox" or state.id != mailbox_id:
        raise NotFound("mailbox not found", f"no mailbox with id {mailbox_id}")
    return state
