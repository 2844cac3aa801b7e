"""Appliers: idempotent (twice == once), checkpoint in the same transaction, cascades."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
)
from core.events import (
    AliasCreated,
    AliasDeleted,
    AliasUpdated,
    DomainCreated,
    DomainDefaultsSet,
    DomainDeleted,
    DomainOverridesSet,
    DomainUpdated,
    Envelope,
    Event,
    GlobalConfigSet,
    MailboxCreated,
    MailboxDefaultsSet,
    MailboxDeleted,
    MailboxOverridesSet,
    MailboxPasswordChanged,
    MailboxUpdated,
    Meta,
    WhitelistEntryAdded,
    WhitelistEntryRemoved,
    encode,
)
from core.subjects import address_subject, domain_subject
from projections.appliers import Item, apply, apply_batch
from projections.db import dump, open_writer
from projections.runner import read_checkpoint

META = Meta(actor="tester", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))
H = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"

# A history touching every applier; ids are the creating event's sequence.
HISTORY: list[Event] = [
    DomainCreated(name="example.com", outgoing_ip="192.0.2.1"),  # 1
    MailboxCreated(domain_id=1, username="alice", address="alice@example.com", password_hash=H),
    AliasCreated(domain_id=1, source="info@example.com", destination="alice@example.com"),  # 3
    DomainUpdated(id=1, name="example.com", active=False, outgoing_ip=""),
    MailboxPasswordChanged(id=2, address="alice@example.com", password_hash=H + "2"),  # 5
    MailboxUpdated(id=2, address="alice@example.com", active=False, quota=1024),
    AliasUpdated(id=3, source="info@example.com", destination="bob@example.org"),  # 7
    DomainCreated(name="other.org"),
    MailboxCreated(domain_id=8, username="bob", address="bob@other.org", password_hash=H),  # 9
    MailboxDeleted(id=9, address="bob@other.org"),
    AliasCreated(domain_id=8, source="@other.org", destination="alice@example.com"),  # 11
    AliasDeleted(id=11, source="@other.org"),
    DomainCreated(name="gone.net"),  # 13
    MailboxCreated(domain_id=13, username="c", address="c@gone.net", password_hash=H),
    AliasCreated(domain_id=13, source="x@gone.net", destination="c@gone.net"),  # 15
    DomainDeleted(id=13, name="gone.net"),
    GlobalConfigSet(config=GlobalConfig(message_size_limit=1000)),  # 17
    DomainOverridesSet(id=1, name="example.com", overrides=DomainOverrides(max_mailboxes=1)),
    MailboxOverridesSet(
        id=2,
        address="alice@example.com",  # 19
        overrides=MailboxOverrides(spam_action="reject"),
    ),
    MailboxDefaultsSet(config=MailboxDefaults(quota_bytes=77)),
    MailboxCreated(
        domain_id=1,
        username="over",
        address="over@example.com",  # 21: over cap
        password_hash=H,
    ),
    WhitelistEntryAdded(entry_type="ip", value="192.0.2.9", note="monitor"),
    WhitelistEntryRemoved(id=22, entry_type="ip", value="192.0.2.9"),  # 23
    DomainDefaultsSet(config=DomainDefaults(spam_threshold=3.0)),
]


def subject_of(event: Event) -> str:
    if isinstance(event, DomainCreated | DomainUpdated | DomainDeleted | DomainOverridesSet):
        return domain_subject(event.name)
    if isinstance(event, GlobalConfigSet | DomainDefaultsSet | MailboxDefaultsSet):
        return "mp.config.x"
    if isinstance(event, WhitelistEntryAdded | WhitelistEntryRemoved):
        return "mp.whitelist.x"
    if isinstance(event, AliasCreated | AliasUpdated | AliasDeleted):
        return address_subject(event.source)
    return address_subject(event.address)


def batch(events: list[Event], start: int = 1) -> list[Item]:
    items = []
    for i, e in enumerate(events):
        env = Envelope(meta=META, event=e)
        items.append(Item(start + i, subject_of(e), env, encode(env)))
    return items


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    return open_writer(tmp_path / "read.db")


def apply_each(db: sqlite3.Connection, times: int) -> None:
    for item in batch(HISTORY):
        for _ in range(times):
            db.execute("BEGIN")
            apply(db, item)
            db.execute("COMMIT")


@pytest.mark.parametrize("upto", range(1, len(HISTORY) + 1))
def test_every_applier_applied_twice_gives_the_same_rows(tmp_path: Path, upto: int):
    once, twice = open_writer(tmp_path / "once.db"), open_writer(tmp_path / "twice.db")
    for item in batch(HISTORY[:upto]):
        apply(once, item)
        apply(twice, item)
        apply(twice, item)
    assert dump(once) == dump(twice)


def test_a_batch_applied_twice_is_skipped_by_the_checkpoint(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    before = dump(db)
    apply_batch(db, batch(HISTORY))
    assert dump(db) == before
    assert read_checkpoint(db) == len(HISTORY)


def test_a_failed_batch_leaves_neither_rows_nor_checkpoint(db: sqlite3.Connection):
    broken = (2, "mp.domain.x", None)  # fails inside the transaction, after event 1 applied
    with pytest.raises(AttributeError):
        apply_batch(db, [*batch(HISTORY[:1]), broken])  # type: ignore[list-item]
    assert read_checkpoint(db) == 0
    assert db.execute("SELECT count(*) FROM domains").fetchone()[0] == 0


def test_domain_delete_cascades_to_its_mailboxes_and_aliases(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    assert db.execute("SELECT count(*) FROM mailboxes WHERE domain_id = 13").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM aliases WHERE domain_id = 13").fetchone()[0] == 0
    assert db.execute("SELECT name FROM domains ORDER BY id").fetchall() == [
        ("example.com",),
        ("other.org",),
    ]


def test_rows_carry_the_last_change(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    row = db.execute(
        "SELECT active, quota, password_hash, version FROM mailboxes WHERE id = 2"
    ).fetchone()
    assert row == (0, 1024, H + "2", 19)  # its overrides (seq 19) moved the version last


def test_mailbox_of_a_deleted_domain_never_appears(db: sqlite3.Connection):
    late = MailboxCreated(domain_id=13, username="late", address="late@gone.net", password_hash=H)
    apply_batch(db, batch([*HISTORY, late]))
    assert (
        db.execute("SELECT count(*) FROM mailboxes WHERE address = 'late@gone.net'").fetchone()[0]
        == 0
    )


def test_subject_versions_survive_deletes(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    row = db.execute(
        "SELECT last_seq FROM subjects WHERE subject = ?", (address_subject("c@gone.net"),)
    ).fetchone()
    assert row == (14,)


def test_every_event_is_indexed_with_its_actor(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    rows = db.execute("SELECT seq, type, actor FROM events ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(HISTORY) + 1))
    assert rows[0][1:] == ("domain.created", "tester")


def test_creation_over_a_cap_is_recorded_as_rejected(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    assert (
        db.execute("SELECT count(*) FROM mailboxes WHERE address = 'over@example.com'").fetchone()[
            0
        ]
        == 0
    )
    outcome = db.execute("SELECT outcome FROM events WHERE seq = 21").fetchone()[0]
    assert outcome.startswith("rejected: ") and "maximum of 1 mailboxes" in outcome


def test_effective_rows_follow_every_tier(db: sqlite3.Connection):
    import json

    apply_batch(db, batch(HISTORY))
    domain = json.loads(
        db.execute("SELECT data FROM effective_domains WHERE domain_id = 1").fetchone()[0]
    )
    box = json.loads(
        db.execute("SELECT data FROM effective_mailboxes WHERE mailbox_id = 2").fetchone()[0]
    )
    assert (domain["max_mailboxes"], domain["message_size_limit"], domain["spam_threshold"]) == (
        1,
        1000,
        3.0,
    )
    assert (box["spam_action"], box["message_size_limit"], box["domain_active"]) == (
        "reject",
        1000,
        False,
    )
    assert box["quota_bytes"] == 1024  # its own quota, set by mailbox.updated


def test_whitelist_entry_is_gone_after_removal(db: sqlite3.Connection):
    apply_batch(db, batch(HISTORY))
    assert db.execute("SELECT count(*) FROM whitelist").fetchone()[0] == 0
