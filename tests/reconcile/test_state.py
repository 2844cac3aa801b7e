"""load_state(): the read model, built by the real appliers, becomes one MailState snapshot."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.config import GlobalConfig, MailboxDefaults
from core.events import (
    AliasCreated,
    DomainCreated,
    DomainUpdated,
    Envelope,
    Event,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDefaultsSet,
    MailboxUpdated,
    Meta,
    encode,
)
from core.subjects import address_subject, domain_subject
from projections.appliers import Item, apply_batch
from projections.db import open_writer
from workers.reconcile.layout import Layout
from workers.reconcile.render import render
from workers.reconcile.state import Alias, load_state, split_destination

META = Meta(actor="tester", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))
H = "{ARGON2ID}$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"

HISTORY: list[Event] = [
    DomainCreated(name="example.test", outgoing_ip="192.0.2.10"),  # 1
    MailboxCreated(
        domain_id=1, username="alice", address="alice@example.test", password_hash=H, quota=4096
    ),  # 2
    MailboxCreated(domain_id=1, username="bob", address="bob@example.test", password_hash=H),
    AliasCreated(
        domain_id=1, source="team@example.test", destination="alice@example.test, bob@example.test"
    ),  # 4
    AliasCreated(domain_id=1, source="@example.test", destination="alice@example.test"),
    DomainCreated(name="off.test"),  # 6
    DomainUpdated(id=6, name="off.test", active=False, outgoing_ip=""),
    MailboxUpdated(id=3, address="bob@example.test", active=False, quota=None),  # 8
    GlobalConfigSet(config=GlobalConfig(message_size_limit=5000000)),
    MailboxDefaultsSet(config=MailboxDefaults(quota_bytes=777)),  # 10
]


def subject_of(event: Event) -> str:
    if isinstance(event, DomainCreated | DomainUpdated):
        return domain_subject(event.name)
    if isinstance(event, GlobalConfigSet | MailboxDefaultsSet):
        return "mp.config.x"
    if isinstance(event, AliasCreated):
        return address_subject(event.source)
    assert isinstance(event, MailboxCreated | MailboxUpdated)
    return address_subject(event.address)


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    db = open_writer(tmp_path / "read.db")
    envs = [Envelope(meta=META, event=e) for e in HISTORY]
    apply_batch(
        db, [Item(i, subject_of(env.event), env, encode(env)) for i, env in enumerate(envs, 1)]
    )
    return db


def test_domains_with_activity_outgoing_ip_and_effective_settings(db: sqlite3.Connection):
    state = load_state(db)
    assert [(d.id, d.name, d.active, d.outgoing_ip) for d in state.domains] == [
        (1, "example.test", True, "192.0.2.10"),
        (6, "off.test", False, ""),
    ]
    assert state.domains[0].effective["domain_name"] == "example.test"


def test_mailboxes_carry_effective_quota_and_own_active_flag(db: sqlite3.Connection):
    state = load_state(db)
    assert [(m.address, m.domain, m.local, m.quota_bytes, m.active) for m in state.mailboxes] == [
        ("alice@example.test", "example.test", "alice", 4096, True),
        ("bob@example.test", "example.test", "bob", 777, False),  # default tier quota
    ]
    assert state.mailboxes[0].password_hash == H
    assert state.mailboxes[1].effective["mailbox_active"] is False


def test_aliases_split_their_destination_list(db: sqlite3.Connection):
    assert load_state(db).aliases == (
        Alias(id=5, source="@example.test", destination=("alice@example.test",)),
        Alias(
            id=4, source="team@example.test", destination=("alice@example.test", "bob@example.test")
        ),
    )


def test_tiers_are_complete_with_defaults_and_the_checkpoint_is_kept(db: sqlite3.Connection):
    state = load_state(db)
    assert state.global_config["message_size_limit"] == 5000000
    assert state.global_config["relay_networks"] == GlobalConfig().relay_networks
    assert state.tiers["domain_defaults"]["max_mailboxes"] == 100
    assert state.tiers["mailbox_defaults"]["quota_bytes"] == 777
    assert state.seq == len(HISTORY)


def test_an_empty_read_model_gives_an_empty_state_with_default_tiers(tmp_path: Path):
    state = load_state(open_writer(tmp_path / "empty.db"))
    assert state.domains == state.mailboxes == state.aliases == ()
    assert state.global_config["message_size_limit"] == GlobalConfig().message_size_limit


def test_loading_leaves_no_transaction_open(db: sqlite3.Connection):
    load_state(db)
    assert not db.in_transaction


def test_a_loaded_state_renders(db: sqlite3.Connection):
    files = render(load_state(db), Layout(root=Path("/srv/mp")))
    assert "message_size_limit = 5000000" in files["etc/postfix/main.cf"]
    assert "bob@example.test 550 5.1.1 Mailbox disabled" in files["etc/postfix/recipient_access"]


def test_split_destination_drops_empty_pieces():
    assert split_destination(" a@x.test,, b@y.test ,") == ("a@x.test", "b@y.test")
