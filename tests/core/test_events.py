"""Stored event format: stable tags, golden JSON, subject encoding."""

from datetime import UTC, datetime

import msgspec
import pytest

from core import events
from core.events import DomainCreated, Envelope, MailboxCreated, Meta
from core.subjects import address_subject, decode_key, domain_subject, encode_key

META = Meta(
    actor="api-key",
    actor_id="static",
    source_ip="127.0.0.1",
    request_id="r1",
    command_id="c1",
    at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC),
)

GOLDEN_V1 = (
    b'{"schema":1,"meta":{"actor":"api-key","actor_id":"static","source_ip":"127.0.0.1",'
    b'"request_id":"r1","command_id":"c1","at":"2026-05-02T03:11:42Z"},'
    b'"event":{"type":"domain.created","name":"example.com","active":true,'
    b'"outgoing_ip":"203.0.113.10","v":1}}'
)


def test_domain_created_v1_encodes_to_golden_json():
    env = Envelope(meta=META, event=DomainCreated(name="example.com", outgoing_ip="203.0.113.10"))
    assert events.encode(env) == GOLDEN_V1


def test_golden_v1_decodes_to_the_same_event():
    assert events.decode(GOLDEN_V1).event == DomainCreated(
        name="example.com", outgoing_ip="203.0.113.10"
    )


def test_unknown_fields_in_stored_events_are_tolerated():
    data = GOLDEN_V1.replace(b'"v":1', b'"v":1,"added_later":5')
    assert events.decode(data).event == DomainCreated(
        name="example.com", outgoing_ip="203.0.113.10"
    )


def test_unknown_event_type_fails_loudly():
    with pytest.raises(msgspec.DecodeError):
        events.decode(GOLDEN_V1.replace(b"domain.created", b"domain.renamed"))


def test_tags_are_dotted_names():
    assert (
        events.event_tag(
            MailboxCreated(domain_id=1, username="a", address="a@b.c", password_hash="{X}")
        )
        == "mailbox.created"
    )


@pytest.mark.parametrize("key", ["example.com", "o'brien+tag@example.com", "@example.com", "ü.x"])
def test_subject_keys_round_trip(key: str):
    token = encode_key(key)
    assert "." not in token and "*" not in token and ">" not in token and " " not in token
    assert decode_key(token) == key


def test_subjects_are_per_aggregate():
    assert domain_subject("example.com") == "mp.domain.example%2Ecom"
    assert address_subject("a@example.com") == "mp.addr.a%40example%2Ecom"
