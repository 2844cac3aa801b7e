"""Revert decisions: the compensating event brings the resource back to what it was just
before the reverted event, or a Conflict says why it cannot."""

import pytest

from core.config import DomainOverrides, GlobalConfig
from core.errors import Conflict, Forbidden
from core.events import (
    DomainCreated,
    DomainDeleted,
    DomainOverridesSet,
    DomainRestored,
    DomainRow,
    DomainUpdated,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDeleted,
    MailboxRestored,
    MailboxRow,
    TokenCreated,
)
from core.revert import Before, Now, Revert, decide

T = "2026-05-02T03:11:42Z"
DOMAIN = DomainRow(
    id=1, name="example.com", active=True, outgoing_ip="", created_at=T, updated_at=T
)
BOX = MailboxRow(
    id=2,
    domain_id=1,
    username="a",
    address="a@example.com",
    password_hash="{X}h",
    quota=None,
    active=True,
    created_at=T,
    updated_at=T,
)


def test_a_creation_is_reverted_by_deleting_what_it_made():
    cmd = Revert(seq=1, event=DomainCreated(name="example.com"), before=Before())
    assert decide(cmd, Now(exists=True)) == [DomainDeleted(id=1, name="example.com")]


def test_an_update_is_reverted_to_the_values_before_it():
    event = DomainUpdated(id=1, name="example.com", active=False, outgoing_ip="192.0.2.1")
    cmd = Revert(seq=5, event=event, before=Before(domain=DOMAIN))
    assert decide(cmd, Now(exists=True)) == [
        DomainUpdated(id=1, name="example.com", active=True, outgoing_ip="")
    ]


def test_a_domain_deletion_is_reverted_with_its_rows_and_ids():
    event = DomainDeleted(id=1, name="example.com")
    before = Before(domain=DOMAIN, mailboxes=[BOX], domain_overrides=DomainOverrides(max_aliases=1))
    out = decide(Revert(seq=9, event=event, before=before), Now())
    assert out == [
        DomainRestored(domain=DOMAIN, overrides=DomainOverrides(max_aliases=1), mailboxes=[BOX])
    ]


def test_a_mailbox_deletion_needs_its_address_free_and_its_domain():
    cmd = Revert(
        seq=9, event=MailboxDeleted(id=2, address="a@example.com"), before=Before(mailboxes=[BOX])
    )
    assert decide(cmd, Now()) == [MailboxRestored(mailbox=BOX)]
    with pytest.raises(Conflict):
        decide(cmd, Now(taken="a@example.com is a alias again (id 12)"))
    with pytest.raises(Conflict):
        decide(cmd, Now(parent=False))


def test_what_is_gone_cannot_be_uncreated():
    event = MailboxCreated(domain_id=1, username="a", address="a@example.com", password_hash="{X}h")
    with pytest.raises(Conflict):
        decide(Revert(seq=2, event=event, before=Before()), Now(exists=False))


def test_a_tier_never_set_before_goes_back_to_its_defaults():
    event = GlobalConfigSet(config=GlobalConfig(message_size_limit=1))
    out = decide(Revert(seq=3, event=event, before=Before()), Now(exists=True))
    assert out == [GlobalConfigSet(config=GlobalConfig())]


def test_a_domain_scoped_caller_cannot_lift_caps_by_reverting():
    event = DomainOverridesSet(id=1, name="example.com", overrides=DomainOverrides(max_mailboxes=5))
    cmd = Revert(seq=3, event=event, before=Before(), scoped=True)
    with pytest.raises(Forbidden):
        decide(cmd, Now(exists=True))


def test_events_without_a_compensation_cannot_be_reverted():
    event = TokenCreated(name="ops", scope="read", secret_sha256="00")
    with pytest.raises(Conflict) as err:
        decide(Revert(seq=1, event=event, before=Before()), Now(exists=True))
    assert "token.created" in err.value.detail
