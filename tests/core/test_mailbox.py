"""Mailbox decider rules, including every username rule of the seed."""

import pytest

from core import mailbox
from core.errors import Conflict, NotFound, ValidationFailed
from core.events import (
    AliasCreated,
    MailboxCreated,
    MailboxDeleted,
    MailboxPasswordChanged,
    MailboxUpdated,
)
from core.mailbox import (
    AddressState,
    ChangePassword,
    CreateMailbox,
    DeleteMailbox,
    DomainRef,
    UpdateMailbox,
)
from tests.core.scenario import Scenario

DOMAIN = DomainRef(id=1, name="example.com")
HASH = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"


def scenario() -> Scenario[AddressState]:
    return Scenario(AddressState(), mailbox.decide, mailbox.evolve)


def create(username: str, quota: int | None = None, domain: DomainRef = DOMAIN) -> CreateMailbox:
    return CreateMailbox(domain=domain, username=username, password_hash=HASH, quota=quota)


def created(local: str = "alice", quota: int | None = None) -> MailboxCreated:
    return MailboxCreated(
        domain_id=1,
        username=local,
        address=f"{local}@example.com",
        password_hash=HASH,
        quota=quota,
    )


def test_local_part_creates_mailbox():
    scenario().when(create("alice", 1024)).then(created("alice", 1024))


def test_matching_domain_suffix_is_accepted():
    scenario().when(create("alice@example.com")).then(created("alice"))


def test_other_domain_suffix_is_refused_with_seed_message():
    scenario().when(create("alice@other.org")).then_raises(
        ValidationFailed, 'username domain "other.org" does not match domain_id \\(1\\)'
    )


@pytest.mark.parametrize(
    "username",
    ["", "a/b", "a\\b", "a\x00b", "a..b", "a@b@example.com", ".alice", "al ice", "x" * 65],
)
def test_bad_username_is_refused(username: str):
    scenario().when(create(username)).then_raises(ValidationFailed)


def test_unknown_domain_is_not_found():
    scenario().when(create("alice", domain=DomainRef())).then_raises(NotFound, "domain not found")


def test_existing_mailbox_conflicts():
    scenario().given(created()).when(create("alice")).then_raises(Conflict)


def test_address_used_by_alias_conflicts():
    scenario().given(
        AliasCreated(domain_id=1, source="alice@example.com", destination="bob@example.com")
    ).when(create("alice")).then_raises(Conflict, "address in use")


def test_plaintext_password_is_never_accepted_as_hash():
    command = CreateMailbox(domain=DOMAIN, username="alice", password_hash="S3cret-pass")
    scenario().when(command).then_raises(ValidationFailed)


def test_password_change_carries_only_the_hash():
    scenario().given(created()).when(ChangePassword(id=1, password_hash=HASH)).then(
        MailboxPasswordChanged(id=1, address="alice@example.com", password_hash=HASH)
    )


def test_deactivation_is_recorded():
    scenario().given(created(quota=5)).when(UpdateMailbox(id=1, active=False)).then(
        MailboxUpdated(id=1, address="alice@example.com", active=False, quota=5)
    )


def test_same_quota_decides_nothing():
    scenario().given(created(quota=5)).when(UpdateMailbox(id=1, quota=5)).then()


def test_negative_quota_is_refused():
    scenario().given(created()).when(UpdateMailbox(id=1, quota=-1)).then_raises(ValidationFailed)


def test_delete_of_unknown_mailbox_is_not_found():
    scenario().when(DeleteMailbox(id=3)).then_raises(NotFound)


def test_delete_names_the_address():
    scenario().given(created()).when(DeleteMailbox(id=1)).then(
        MailboxDeleted(id=1, address="alice@example.com")
    )


def test_deleted_address_can_be_created_again():
    scenario().given(created(), MailboxDeleted(id=1, address="alice@example.com")).when(
        create("alice")
    ).then(created())
