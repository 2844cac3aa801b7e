"""The backup document: a valid one parses; every kind of invalid one is refused before a
restore could change anything."""

import msgspec
import pytest

from core.backup import Backup, UnreadableBackup, document, max_id, parse, snapshot_of
from core.config import DomainDefaults, DomainOverrides, GlobalConfig, MailboxDefaults
from core.errors import ValidationFailed
from core.events import (
    AliasRow,
    DkimRow,
    DomainOverridesRow,
    DomainRow,
    MailboxRow,
    Snapshot,
    Tiers,
    WhitelistRow,
)

T = "2026-05-02T03:11:42Z"
H = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"

SNAPSHOT = Snapshot(
    domains=[
        DomainRow(id=1, name="example.com", active=True, outgoing_ip="", created_at=T, updated_at=T)
    ],
    mailboxes=[
        MailboxRow(
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
    ],
    aliases=[
        AliasRow(
            id=3,
            domain_id=1,
            source="@example.com",
            destination="alice@example.com, x@y.example",
            created_at=T,
            updated_at=T,
        )
    ],
    config=Tiers(
        global_=GlobalConfig(),
        domain_defaults=DomainDefaults(),
        mailbox_defaults=MailboxDefaults(),
        updated_at={"global": T},
    ),
    domain_overrides=[DomainOverridesRow(domain_id=1, overrides=DomainOverrides(max_aliases=3))],
    mailbox_overrides=[],
    tls_certs=[],
    dkim_keys=[
        DkimRow(
            domain="example.com",
            selector="default",
            algorithm="rsa",
            public_key="MIIB",
            status="active",
            private_key_sealed="v1.k1.abcdef",
            created_at=T,
            updated_at=T,
        )
    ],
    whitelist=[WhitelistRow(id=4, entry_type="cidr", value="192.0.2.0/24", note="", created_at=T)],
)


def raw(snapshot: Snapshot = SNAPSHOT, **header: object) -> dict:
    doc: dict = msgspec.to_builtins(document(snapshot, T, 4))
    doc.update(header)
    return doc


def test_a_backup_document_round_trips():
    # Given a document made from a snapshot
    data = msgspec.json.encode(document(SNAPSHOT, T, 4))
    # When it is parsed
    backup = parse(data)
    # Then it is the same snapshot, with its header
    assert isinstance(backup, Backup) and snapshot_of(backup) == SNAPSHOT
    assert backup.schema_version == 1 and backup.log_sequence == 4


def test_the_largest_id_spans_every_table_with_ids():
    assert max_id(SNAPSHOT) == 4


def test_an_unknown_schema_version_is_unreadable_not_invalid():
    with pytest.raises(UnreadableBackup) as err:
        parse(msgspec.json.encode(raw(schema_version=7)))
    assert "schema_version 7" in err.value.error


@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"domains": []}', b'{"schema_version": "1"}', b"not json"]
)
def test_something_that_is_not_a_backup_is_refused(body):
    with pytest.raises(ValidationFailed):
        parse(body)


def _with(**changes: object) -> bytes:
    return msgspec.json.encode(raw(msgspec.structs.replace(SNAPSHOT, **changes)))


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"domains": [*SNAPSHOT.domains, SNAPSHOT.domains[0]]}, "used twice"),
        (
            {"mailboxes": [msgspec.structs.replace(SNAPSHOT.mailboxes[0], address="a@b.example")]},
            "does not match",
        ),
        (
            {"mailboxes": [msgspec.structs.replace(SNAPSHOT.mailboxes[0], domain_id=9)]},
            "not in the backup",
        ),
        (
            {"mailboxes": [msgspec.structs.replace(SNAPSHOT.mailboxes[0], password_hash="pw")]},
            "password hash",
        ),
        ({"aliases": [msgspec.structs.replace(SNAPSHOT.aliases[0], domain_id=8)]}, "not in"),
        (
            {
                "aliases": [
                    msgspec.structs.replace(
                        SNAPSHOT.aliases[0], source="x@example.com", destination="x@example.com"
                    )
                ]
            },
            "forward to itself",
        ),
        (
            {"domains": [msgspec.structs.replace(SNAPSHOT.domains[0], name="Example.COM")]},
            "valid DNS name",
        ),
        (
            {"whitelist": [msgspec.structs.replace(SNAPSHOT.whitelist[0], value="192.0.2.1/24")]},
            "canonical",
        ),
        (
            {
                "dkim_keys": [
                    msgspec.structs.replace(
                        SNAPSHOT.dkim_keys[0], private_key_sealed="-----BEGIN PRIVATE KEY-----"
                    )
                ]
            },
            "sealed",
        ),
        (
            {
                "domain_overrides": [
                    DomainOverridesRow(domain_id=1, overrides=DomainOverrides(max_mailboxes=-1))
                ]
            },
            "non-negative",
        ),
    ],
)
def test_a_document_breaking_a_rule_is_refused_naming_the_field(changes, words):
    with pytest.raises(ValidationFailed) as err:
        parse(_with(**changes))
    assert words in err.value.error


def test_an_address_both_mailbox_and_alias_is_refused():
    alias = msgspec.structs.replace(
        SNAPSHOT.aliases[0], source="alice@example.com", destination="x@y.example"
    )
    with pytest.raises(ValidationFailed) as err:
        parse(_with(aliases=[alias]))
    assert "appears twice" in err.value.error
