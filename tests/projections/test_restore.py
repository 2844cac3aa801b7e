"""The restore appliers: every resource table becomes the snapshot with its ids; a restored
row's version is its subject's real last sequence in this log (0 if never written here), so
the next append on it expects the right sequence."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.config import DomainDefaults, GlobalConfig, MailboxDefaults, MailboxOverrides
from core.events import (
    DomainCreated,
    DomainDeleted,
    DomainRestored,
    DomainRow,
    DomainUpdated,
    Envelope,
    Event,
    MailboxCreated,
    MailboxOverridesRow,
    MailboxRow,
    Meta,
    SequenceReserved,
    Snapshot,
    SystemRestored,
    Tiers,
    TokenCreated,
    encode,
)
from core.subjects import address_subject, domain_subject, token_subject
from projections.appliers import Item, apply, apply_batch
from projections.db import dump, open_writer

META = Meta(actor="tester", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))
T = "2026-05-01T00:00:00Z"
H = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"

SNAPSHOT = Snapshot(
    domains=[
        DomainRow(
            id=40, name="example.com", active=False, outgoing_ip="", created_at=T, updated_at=T
        ),
        DomainRow(
            id=41, name="new.example", active=True, outgoing_ip="", created_at=T, updated_at=T
        ),
    ],
    mailboxes=[
        MailboxRow(
            id=42,
            domain_id=41,
            username="bob",
            address="bob@new.example",
            password_hash=H,
            quota=77,
            active=True,
            created_at=T,
            updated_at=T,
        )
    ],
    aliases=[],
    config=Tiers(
        global_=GlobalConfig(message_size_limit=5),
        domain_defaults=DomainDefaults(),
        mailbox_defaults=MailboxDefaults(),
        updated_at={"global": T},
    ),
    domain_overrides=[],
    mailbox_overrides=[
        MailboxOverridesRow(mailbox_id=42, overrides=MailboxOverrides(spam_action="reject"))
    ],
    tls_certs=[],
    dkim_keys=[],
    whitelist=[],
)


def item(seq: int, subject: str, event: Event) -> Item:
    env = Envelope(meta=META, event=event)
    return Item(seq, subject, env, encode(env))


HISTORY = [
    item(1, domain_subject("example.com"), DomainCreated(name="example.com")),
    item(
        2,
        address_subject("alice@example.com"),
        MailboxCreated(domain_id=1, username="alice", address="alice@example.com", password_hash=H),
    ),
    item(3, token_subject("ops"), TokenCreated(name="ops", scope="read", secret_sha256="00")),
    item(
        4,
        domain_subject("example.com"),
        DomainUpdated(id=1, name="example.com", active=False, outgoing_ip=""),
    ),
]
RESTORE = item(50, "mp.system.restore", SystemRestored(snapshot=SNAPSHOT, previous_seq=4))


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    return open_writer(tmp_path / "read.db")


def rows(db: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in db.execute(sql)]


def test_a_restore_replaces_every_resource_table_with_the_snapshot(db):
    # Given a history with a domain, a mailbox and a token
    apply_batch(db, HISTORY)
    # When a snapshot is restored
    apply_batch(db, [RESTORE])
    # Then domains and mailboxes are the snapshot's, ids included; the token stays
    assert rows(db, "SELECT id, name, active FROM domains ORDER BY id") == [
        (40, "example.com", 0),
        (41, "new.example", 1),
    ]
    assert rows(db, "SELECT id, address, password_hash, quota FROM mailboxes") == [
        (42, "bob@new.example", H, 77)
    ]
    assert rows(db, "SELECT name FROM tokens") == [("ops",)]
    # and the effective views are recomputed from the restored tiers and overrides
    effective = rows(db, "SELECT mailbox_id, data FROM effective_mailboxes")
    assert len(effective) == 1 and '"spam_action":"reject"' in str(effective[0][1])
    assert '"message_size_limit":5' in str(rows(db, "SELECT data FROM effective_domains")[0][0])


def test_restored_versions_are_the_real_last_sequences_of_their_subjects(db):
    # Given example.com's subject last written at 4, and new.example's never in this log
    apply_batch(db, HISTORY)
    # When the snapshot is restored
    apply_batch(db, [RESTORE])
    # Then each row's version is what the next append on its subject must expect
    assert rows(db, "SELECT id, version FROM domains ORDER BY id") == [(40, 4), (41, 0)]
    assert rows(db, "SELECT id, version FROM mailboxes") == [(42, 0)]


def test_a_restore_sees_the_subjects_of_events_earlier_in_its_batch(db):
    # Given the update of example.com and the restore in ONE batch
    apply_batch(db, [*HISTORY[:3], HISTORY[3], RESTORE])
    # Then the restored example.com's version is that update's sequence
    assert rows(db, "SELECT version FROM domains WHERE id = 40") == [(4,)]


def test_a_restore_applied_twice_leaves_the_same_rows(tmp_path: Path):
    once, twice = open_writer(tmp_path / "once.db"), open_writer(tmp_path / "twice.db")
    for target, times in ((once, 1), (twice, 2)):
        for it in [*HISTORY, RESTORE]:
            for _ in range(times):
                apply(target, it)
    assert dump(once) == dump(twice)


def test_fillers_change_nothing_but_the_index(db):
    apply_batch(db, HISTORY)
    before = {t: r for t, r in dump(db).items() if t not in ("events", "subjects", "checkpoint")}
    apply_batch(db, [item(5, "mp.system.reserve", SequenceReserved(upto=9))])
    after = {t: r for t, r in dump(db).items() if t not in ("events", "subjects", "checkpoint")}
    assert after == before
    assert rows(db, "SELECT type FROM events WHERE seq = 5") == [("system.sequence_reserved",)]


def test_an_undeleted_domain_comes_back_with_its_mailboxes_and_their_versions(db):
    # Given a domain with a mailbox, deleted
    apply_batch(db, HISTORY[:2])
    apply_batch(
        db, [item(5, domain_subject("example.com"), DomainDeleted(id=1, name="example.com"))]
    )
    box = MailboxRow(
        id=2,
        domain_id=1,
        username="alice",
        address="alice@example.com",
        password_hash=H,
        quota=None,
        active=True,
        created_at=T,
        updated_at=T,
    )
    dom = DomainRow(
        id=1, name="example.com", active=True, outgoing_ip="", created_at=T, updated_at=T
    )
    # When it is restored on its subject
    undelete = DomainRestored(domain=dom, mailboxes=[box])
    apply_batch(db, [item(6, domain_subject("example.com"), undelete)])
    # Then both are back with their ids; the domain's version is the undelete, the mailbox's
    # its address subject's last sequence
    assert rows(db, "SELECT id, version FROM domains") == [(1, 6)]
    assert rows(db, "SELECT id, version, password_hash FROM mailboxes") == [(2, 2, H)]
    assert rows(db, "SELECT mailbox_id FROM effective_mailboxes") == [(2,)]


def test_an_undelete_whose_name_was_taken_meanwhile_is_left_without_effect(db):
    apply_batch(db, HISTORY[:1])
    dom = DomainRow(
        id=9, name="example.com", active=True, outgoing_ip="", created_at=T, updated_at=T
    )
    _, rejected = apply_batch(
        db, [item(5, domain_subject("example.com"), DomainRestored(domain=dom))]
    )
    assert rejected == {5: "domain example.com (id 9) exists again"}
    assert rows(db, "SELECT id FROM domains") == [(1,)]
