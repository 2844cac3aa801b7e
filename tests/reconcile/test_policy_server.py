"""The policy service over real sockets (127.0.0.1, a free port) with its counters in a real
SQLite file: the Postfix protocol, persistence across a restart, junk input. The clock is
injected: greylisting waits are simulated, nothing sleeps."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.events import (
    DomainCreated,
    DomainUpdated,
    Envelope,
    Event,
    MailboxCreated,
    Meta,
    WhitelistEntryAdded,
    encode,
)
from core.policy import Policy
from core.subjects import address_subject, domain_subject, whitelist_subject
from projections.appliers import Item, apply_batch
from projections.db import open_writer
from workers.policy import (
    MAX_LINE,
    PolicyServer,
    PolicyStore,
    RequestReader,
    load_policy,
    policy_from_state,
)
from workers.reconcile.state import Domain, Mailbox, MailState

T0 = datetime(2026, 5, 2, 12, 0, tzinfo=UTC).timestamp()
TIMEOUT_S = 5.0
MAILBOX = "alice@example.test"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_policy(**mailbox: object) -> Policy:
    return Policy.build(
        mailboxes={MAILBOX: mailbox},
        domains={"example.test": {}},
        settings={"greylist_enabled": True, "greylist_delay_seconds": 300},
    )


def rcpt(**attrs: str) -> dict[str, str]:
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "policy_context": "inbound",
        "client_address": "203.0.113.5",
        "client_name": "mx.sender.example",
        "helo_name": "mx.sender.example",
        "sender": "bob@sender.example",
        "recipient": MAILBOX,
        "recipient_count": "0",
        "queue_id": "",
        "instance": "1fb0.6b027f49.ec340.0",
        "size": "0",
        "sasl_method": "",
        "sasl_username": "",
        "encryption_protocol": "TLSv1.3",
    }
    return base | attrs


def end_of_message(**attrs: str) -> dict[str, str]:
    base = {
        "protocol_state": "END-OF-MESSAGE",
        "policy_context": "submission",
        "sasl_username": MAILBOX,
        "sender": MAILBOX,
        "recipient": "friend@example.org",
        "recipient_count": "1",
        "size": "2048",
    }
    return rcpt(**(base | attrs))


def wire(attrs: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


class Client:
    """One Postfix-like connection: a request, then its answer, then the next request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, server: PolicyServer) -> "Client":
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def send_raw(self, data: bytes) -> str:
        self.writer.write(data)
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), TIMEOUT_S)
        assert answer.startswith(b"action="), answer
        return answer[len(b"action=") : -2].decode()

    async def ask(self, attrs: dict[str, str]) -> str:
        return await self.send_raw(wire(attrs))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Starts servers (on tmp_path/policy.db unless told) and stops them all at the end."""
    running: list[tuple[PolicyServer, PolicyStore]] = []

    async def start(
        policy: Policy, clock: Clock | None = None, path: Path | None = None
    ) -> PolicyServer:
        store = PolicyStore(path or tmp_path / "policy.db")
        server = PolicyServer(policy, store, host="127.0.0.1", port=0, clock=clock or Clock())
        await server.start()
        running.append((server, store))
        return server

    yield start
    for server, store in running:
        await server.close()
        store.close()


async def test_one_connection_carries_many_requests(servers):
    # given a mailbox allowed 2 recipients per message, with greylisting on
    server = await servers(make_policy(max_recipients_per_message=2))
    client = await Client.connect(server)
    # when several requests of different kinds come over one connection
    answers = [
        await client.ask(rcpt()),
        await client.ask(rcpt(recipient="x@not-ours.example")),
        await client.ask(end_of_message()),
        await client.ask(end_of_message(policy_context="submission", size="999999999")),
    ]
    # then each gets its own answer, in order
    assert answers == [
        "DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 300 seconds",
        "DUNNO",
        "DUNNO",
        "DUNNO",
    ]
    assert server.requests == 4
    await client.close()


async def test_greylisted_first_attempt_is_accepted_after_the_delay(servers):
    clock = Clock()
    server = await servers(make_policy(), clock)
    client = await Client.connect(server)
    # given the first attempt was deferred
    assert (await client.ask(rcpt())).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    # when the client retries too early, from another address of its /24
    clock.now += 120
    early = await client.ask(rcpt(client_address="203.0.113.77"))
    # then it is told how long is left; after the delay it passes, and keeps passing
    assert early == "DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 180 seconds"
    clock.now += 180
    assert await client.ask(rcpt(client_address="203.0.113.9")) == "DUNNO"
    clock.now += 86400
    assert await client.ask(rcpt()) == "DUNNO"
    await client.close()


async def test_send_counter_survives_a_restart(servers, tmp_path: Path):
    # given a limit of 2 messages a day and 2 sent before the service restarts
    path = tmp_path / "counters.db"
    clock = Clock()
    first = await servers(make_policy(max_send_per_day=2), clock, path)
    client = await Client.connect(first)
    assert [await client.ask(end_of_message()) for _ in range(2)] == ["DUNNO", "DUNNO"]
    await client.close()
    await first.close()
    first.store.close()
    # when a new server on the same file gets the third message of the day
    second = await servers(make_policy(max_send_per_day=2), clock, path)
    client = await Client.connect(second)
    third = await client.ask(end_of_message())
    # then it is refused; the next UTC day it passes
    assert third == "REJECT 5.7.1 Daily sending limit reached (2 messages per day)"
    clock.now += 86400
    assert await client.ask(end_of_message()) == "DUNNO"
    await client.close()


async def test_greylist_survives_a_restart(servers, tmp_path: Path):
    clock = Clock()
    first = await servers(make_policy(), clock, tmp_path / "g.db")
    client = await Client.connect(first)
    assert (await client.ask(rcpt())).startswith("DEFER_IF_PERMIT")
    await client.close()
    await first.close()
    first.store.close()
    clock.now += 301
    second = await servers(make_policy(), clock, tmp_path / "g.db")
    client = await Client.connect(second)
    assert await client.ask(rcpt()) == "DUNNO"
    await client.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"this line has no equals sign\n\n",
        b"=value without a name\n\n",
        b"\n",  # an empty request
        b"request=smtpd_access_policy\nsize=" + b"9" * (MAX_LINE + 10) + b"\n\n",
        b"request=smtpd_access_policy\nsize=" + b"9" * (100 * MAX_LINE) + b"\n\n",
        b"".join(b"attr%d=x\n" % i for i in range(150)) + b"\n",
        b"request=smtpd_access_policy\nsize=lots\n\n",
        b"request=something_else\nprotocol_state=RCPT\n\n",
        b"\xff\xfe\x00garbage=\x80\x81\n\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_malformed_input_answers_dunno_and_the_connection_keeps_working(servers, junk):
    server = await servers(make_policy())
    client = await Client.connect(server)
    # when junk arrives, then it is answered DUNNO
    assert await client.send_raw(junk) == "DUNNO"
    assert server.malformed == 1
    # and the next well-formed request on the same connection is decided as usual
    assert (await client.ask(rcpt())).startswith("DEFER_IF_PERMIT")
    await client.close()


async def test_junk_split_across_writes_is_still_one_answer(servers):
    server = await servers(make_policy())
    client = await Client.connect(server)
    client.writer.write(b"request=smtpd_access_policy\nsize=" + b"1" * (3 * MAX_LINE))
    await client.writer.drain()
    await asyncio.sleep(0.05)  # let the server see the partial overlong line
    assert await client.send_raw(b"1" * MAX_LINE + b"\nrecipient=x\n\n") == "DUNNO"
    assert await client.ask(rcpt(recipient="x@not-ours.example")) == "DUNNO"
    assert server.malformed == 1
    await client.close()


async def test_recipient_limit_holds_at_rcpt_although_postfix_sends_count_zero(servers):
    # given at most 2 recipients; Postfix sends recipient_count=0 with every RCPT
    server = await servers(make_policy(max_recipients_per_message=2))
    client = await Client.connect(server)
    submit = {"policy_context": "submission", "sasl_username": MAILBOX, "instance": "tx.1"}
    answers = [await client.ask(rcpt(**submit, recipient=f"r{n}@example.org")) for n in range(1, 4)]
    # then the third recipient of the transaction is refused; a new transaction starts at 0
    assert answers == ["DUNNO", "DUNNO", "452 4.5.3 Too many recipients (at most 2 per message)"]
    assert await client.ask(rcpt(**(submit | {"instance": "tx.2"}))) == "DUNNO"
    await client.close()


async def test_end_of_message_with_several_recipients_checks_every_remembered_one(servers):
    # given bob@ takes at most 1000 bytes and Postfix names no recipient at END-OF-MESSAGE
    policy = Policy.build(
        mailboxes={MAILBOX: {}, "bob@example.test": {"message_size_limit": 1000}},
        domains={"example.test": {}},
    )
    server = await servers(policy)
    client = await Client.connect(server)
    assert await client.ask(rcpt(instance="tx.9")) == "DUNNO"
    assert await client.ask(rcpt(instance="tx.9", recipient="bob@example.test")) == "DUNNO"
    eom = rcpt(instance="tx.9", protocol_state="END-OF-MESSAGE", recipient="", size="1500")
    # then the real size is checked against bob's limit
    answer = await client.ask(eom | {"recipient_count": "2"})
    assert answer == "552 5.3.4 Message too big for this mailbox (limit 1000 bytes)"
    await client.close()


async def test_a_new_policy_applies_to_the_next_request(servers):
    server = await servers(make_policy())
    client = await Client.connect(server)
    assert await client.ask(end_of_message()) == "DUNNO"
    server.policy = make_policy(enabled_smtp=False)
    assert await client.ask(end_of_message()) == "REJECT 5.7.1 Sending disabled for this mailbox"
    await client.close()


async def test_requests_of_many_connections_are_all_answered(servers):
    server = await servers(make_policy())
    clients = [await Client.connect(server) for _ in range(8)]
    answers = await asyncio.gather(*(c.ask(end_of_message()) for c in clients))
    assert answers == ["DUNNO"] * 8
    reader = PolicyStore(server.store.path)  # a second connection sees the commits
    assert reader.sent_today(MAILBOX, "2026-05-02") == 8
    reader.close()
    for c in clients:
        await c.close()


async def test_a_store_failure_answers_dunno(servers):
    server = await servers(make_policy())
    client = await Client.connect(server)
    server.store.db.execute("DROP TABLE sent")
    assert await client.ask(end_of_message()) == "DUNNO"
    assert server.failures == 1
    await client.close()


# ---- the framing ---------------------------------------------------------------------------

STREAM = b"".join(
    [
        wire(rcpt()),
        wire(end_of_message()),
        b"request=smtpd_access_policy\r\nrecipient=a@b\r\n\r\n",  # CRLF lines
        b"no equals sign\n\n",
        b"\n",
        b"request=smtpd_access_policy\nsize=" + b"7" * (MAX_LINE + 1) + b"\n\n",
        b"".join(b"a%d=1\n" % i for i in range(101)) + b"\n",
        b"".join(b"a%d=1\n" % i for i in range(100)) + b"\n",
        b"x=1\n=2\n\n",
        wire(rcpt(sender="")),
    ]
)


def test_reader_frames_requests_and_says_why_one_is_malformed():
    items = RequestReader().feed(STREAM)
    assert items[0] == rcpt() and items[1] == end_of_message()
    assert items[2] == {"request": "smtpd_access_policy", "recipient": "a@b"}
    assert items[3].startswith("not a name=value line")
    assert items[4] == "empty request"
    assert items[5] == f"attribute line longer than {MAX_LINE} bytes"
    assert items[6] == "more than 100 attributes"
    assert isinstance(items[7], dict) and len(items[7]) == 100
    assert items[8].startswith("not a name=value line")
    assert items[9] == rcpt(sender="")
    assert len(items) == 10


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
def test_reader_gives_the_same_requests_however_the_bytes_are_split(size):
    reader = RequestReader()
    items = [
        item for i in range(0, len(STREAM), size) for item in reader.feed(STREAM[i : i + size])
    ]
    assert items == RequestReader().feed(STREAM)
    assert reader.buffer == b"" and not reader.attrs


# ---- the store ----------------------------------------------------------------------------


def test_pruning_drops_triplets_idle_past_the_max_age(tmp_path: Path):
    store = PolicyStore(tmp_path / "p.db")
    day = 86400.0
    store.greylist_seen(("192.0.2.0/24", "old@x", "a@y"), T0 - 40 * day)
    store.greylist_seen(("192.0.2.0/24", "new@x", "a@y"), T0 - 1 * day)
    store.greylist_pass(("192.0.2.0/24", "used@x", "a@y"), T0 - 2 * day)
    store.count_sent(MAILBOX, "2026-04-01")
    store.count_sent(MAILBOX, "2026-05-02")
    assert store.prune(T0, max_age_days=35) == (1, 1)
    assert store.greylist(("192.0.2.0/24", "old@x", "a@y")) is None
    assert store.greylist(("192.0.2.0/24", "used@x", "a@y")) is not None
    assert store.sent_today(MAILBOX, "2026-05-02") == 1
    store.close()


def test_store_uses_wal(tmp_path: Path):
    store = PolicyStore(tmp_path / "p.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


# ---- the snapshot -------------------------------------------------------------------------


def test_policy_from_state_takes_effective_settings_activity_and_whitelist():
    state = MailState(
        domains=(
            Domain(id=1, name="example.test", effective={"require_tls_inbound": True}),
            Domain(id=2, name="off.test", active=False),
        ),
        mailboxes=(
            Mailbox(
                id=3,
                domain="example.test",
                local="alice",
                address=MAILBOX,
                password_hash="x",
                effective={"max_send_per_day": 5, "message_size_limit": None, "quota_bytes": 9},
            ),
            Mailbox(
                id=4, domain="off.test", local="bob", address="bob@off.test", password_hash="x"
            ),
        ),
        tiers={"global": {"greylist_enabled": True, "greylist_delay_seconds": 60}},
    )
    policy = policy_from_state(state, [("ip", "192.0.2.1"), ("domain", "friends.example")])
    assert policy.domains["example.test"].require_tls_inbound
    assert not policy.domains["off.test"].active
    assert policy.mailboxes[MAILBOX].max_send_per_day == 5
    assert policy.mailboxes[MAILBOX].message_size_limit is None
    assert not policy.mailboxes["bob@off.test"].active  # its domain is inactive
    assert policy.settings.greylist_delay_seconds == 60
    assert policy.whitelist.matches("192.0.2.1", "")
    assert policy.whitelist.matches("203.0.113.1", "x@mx.friends.example")


def test_load_policy_reads_the_real_read_model(tmp_path: Path):
    meta = Meta(actor="tester", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))
    hash_ = "{ARGON2ID}$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    history: list[tuple[str, Event]] = [
        (domain_subject("example.test"), DomainCreated(name="example.test")),
        (
            address_subject(MAILBOX),
            MailboxCreated(domain_id=1, username="alice", address=MAILBOX, password_hash=hash_),
        ),
        (domain_subject("off.test"), DomainCreated(name="off.test")),
        (
            domain_subject("off.test"),
            DomainUpdated(id=3, name="off.test", active=False, outgoing_ip=""),
        ),
        (
            whitelist_subject("cidr", "198.51.100.0/24"),
            WhitelistEntryAdded(entry_type="cidr", value="198.51.100.0/24"),
        ),
    ]
    db = open_writer(tmp_path / "read.db")
    items = [
        Item(seq, subject, env, encode(env))
        for seq, (subject, event) in enumerate(history, 1)
        for env in [Envelope(meta=meta, event=event)]
    ]
    apply_batch(db, items)
    policy = load_policy(db)
    assert not db.in_transaction
    assert policy.mailboxes[MAILBOX].enabled_smtp
    assert policy.mailboxes[MAILBOX].max_send_per_day == 1000
    assert policy.domains["example.test"].active and not policy.domains["off.test"].active
    assert policy.whitelist.matches("198.51.100.200", "")
