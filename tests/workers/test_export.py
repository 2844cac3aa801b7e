"""workers.export against real nats-servers: export, import and verify of the event log."""

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from commands.log import EventLog, stream_config
from core.events import DomainCreated, Envelope, Meta, encode
from core.subjects import domain_subject
from workers.export import (
    EXPECTED_LAST_SEQUENCE,
    ImportFailed,
    ImportRefused,
    Line,
    export,
    import_,
    parse_rfc3339_ns,
    parse_until,
    rfc3339_ns,
    verify,
)
from workers.nats_server import EmbeddedNats

decoder = msgspec.json.Decoder(Line)
STRAY_PAYLOADS = [
    b"\x00\xffnot json at all",  # junk bytes
    b'{\n  "pretty": true\n}',  # JSON, but over several lines
    b' {"padded": 1}',  # JSON with outer whitespace
    b"",  # empty
    b'"\xff"',  # JSON syntax, not UTF-8
]


@pytest.fixture
def other_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "other-nats", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def target(other_nats: EmbeddedNats) -> AsyncIterator[EventLog]:
    log = await EventLog.connect(other_nats.url)
    try:
        yield log
    finally:
        await log.close()


async def append_domains(event_log: EventLog, names: list[str]) -> list[int]:
    """Appends as the command layer does: Nats-Msg-Id and expected subject sequence."""
    seqs = []
    for name in names:
        env = Envelope(
            meta=Meta(actor="test", at=datetime.now(UTC)), event=DomainCreated(name=name)
        )
        seq, duplicate = await event_log.append(domain_subject(name), env, 0, uuid.uuid4().hex)
        assert not duplicate
        seqs.append(seq)
    return seqs


async def dump(event_log: EventLog) -> io.BytesIO:
    out = io.BytesIO()
    await export(event_log, out)
    out.seek(0)
    return out


def lines(buf: io.BytesIO) -> list[Line]:
    return [decoder.decode(raw) for raw in buf.getvalue().splitlines()]


def ndjson(*items: Line) -> io.BytesIO:
    return io.BytesIO(msgspec.json.Encoder().encode_lines(list(items)))


def line(seq: int, name: str, msg_id: str | None = None, when: str = "") -> Line:
    env = Envelope(meta=Meta(actor="test", at=datetime.now(UTC)), event=DomainCreated(name=name))
    return Line(
        seq=seq,
        subject=domain_subject(name),
        time=when or rfc3339_ns(1_700_000_000_000_000_000 + seq),
        headers={"Nats-Msg-Id": msg_id or uuid.uuid4().hex},
        data=msgspec.Raw(encode(env)),
    )


async def test_export_then_import_keeps_every_sequence_subject_header_and_payload_byte(
    event_log: EventLog, target: EventLog
) -> None:
    await append_domains(event_log, ["a.example", "b.example"])
    for i, payload in enumerate(STRAY_PAYLOADS):
        await event_log.js.publish(f"mp.stray.{i}", payload, headers={"X-Kind": f"stray-{i}"})
    await append_domains(event_log, ["c.example"])
    last = await event_log.last_seq()
    assert last == 3 + len(STRAY_PAYLOADS)

    exported = await dump(event_log)
    rows = lines(exported)
    assert [r.seq for r in rows] == list(range(1, last + 1))
    assert b'"data":{"schema":1' in exported.getvalue().splitlines()[0]  # raw JSON, not a string
    assert all(r.data_b64 is None for r in rows if not r.subject.startswith("mp.stray."))
    assert all(r.data_b64 is not None for r in rows if r.subject.startswith("mp.stray."))
    assert all(
        r.time.endswith("Z") and len(r.time) == len("2025-01-01T00:00:00.123456789Z") for r in rows
    )

    assert await import_(target, exported) == last
    for seq in range(1, last + 1):
        source_msg = await event_log.js.get_msg(event_log.stream, seq)
        copy = await target.js.get_msg(target.stream, seq)
        assert copy.subject == source_msg.subject
        assert copy.data == source_msg.data, seq
        headers = dict(copy.headers or {})
        assert headers.pop(EXPECTED_LAST_SEQUENCE) == str(seq - 1)
        assert headers == (source_msg.headers or {})
    # Exporting the copy gives the same lines but for the times and the import's header.
    again = lines(await dump(target))
    for before, after in zip(rows, again, strict=True):
        assert (before.seq, before.subject, bytes(before.data), before.data_b64) == (
            after.seq,
            after.subject,
            bytes(after.data),
            after.data_b64,
        )
        assert {k: v for k, v in (after.headers or {}).items() if k != EXPECTED_LAST_SEQUENCE} == (
            before.headers or {}
        )


async def test_verify_passes_on_a_sound_log_with_counts(event_log: EventLog) -> None:
    empty = await verify(event_log)
    assert empty.ok and empty.messages == 0
    await append_domains(event_log, ["a.example", "b.example", "c.example"])
    report = await verify(event_log)
    assert report.ok, report
    assert (report.messages, report.first_seq, report.last_seq) == (3, 1, 3)
    assert report.types == {"domain.created": 3}
    assert "3 events" in str(report)


async def test_verify_names_the_sequence_of_a_message_that_does_not_decode(
    event_log: EventLog,
) -> None:
    await append_domains(event_log, ["a.example", "b.example"])
    await event_log.js.publish("mp.junk.x", b"\x00\x01 junk \xff")
    await append_domains(event_log, ["c.example"])
    report = await verify(event_log)
    assert not report.ok
    assert report.seq == 3
    assert "mp.junk.x" in report.reason and "decode" in report.reason
    assert report.messages == 2
    assert "sequence 3" in str(report)


async def test_verify_reports_a_stream_config_that_could_lose_events(
    nats_server: EmbeddedNats,
) -> None:
    probe = await EventLog.connect(nats_server.url, "PROBE", "pb")
    try:
        for change, words in (
            ({"max_msgs": 1000}, "max_msgs"),
            ({"deny_purge": False}, "deny_purge"),
            ({"max_age": 3600.0, "duplicate_window": 60.0}, "max_age"),
        ):
            config = stream_config("LOSSY", "ls")
            for key, value in change.items():
                setattr(config, key, value)
            await probe.js.add_stream(config)
            lossy = EventLog(probe.nc, probe.js, "LOSSY", "ls")
            report = await verify(lossy)
            assert not report.ok and report.seq is None
            assert words in report.reason, report
            await probe.js.delete_stream("LOSSY")
    finally:
        await probe.close()


async def test_import_refuses_a_stream_that_already_holds_messages(
    event_log: EventLog, target: EventLog
) -> None:
    await append_domains(event_log, ["a.example"])
    exported = await dump(event_log)
    await append_domains(target, ["other.example"])
    with pytest.raises(ImportRefused, match="already holds 1 messages"):
        await import_(target, exported)
    assert await target.last_seq() == 1


async def test_import_refuses_an_export_with_a_gap_before_writing_anything(
    target: EventLog,
) -> None:
    gapped = ndjson(line(1, "a.example"), line(2, "b.example"), line(4, "d.example"))
    with pytest.raises(ImportRefused, match="sequence 4 follows 2"):
        await import_(target, gapped)
    assert await target.last_seq() == 0
    late_start = ndjson(line(2, "b.example"))
    with pytest.raises(ImportRefused, match="starts at sequence 2, not 1"):
        await import_(target, late_start)


async def test_an_export_read_from_a_pipe_stops_at_the_gap_and_says_what_was_written(
    target: EventLog,
) -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    gapped = ndjson(line(1, "a.example"), line(2, "b.example"), line(4, "d.example"))
    with pytest.raises(ImportFailed, match=r"sequence 4 follows 2.*holds sequences 1\.\.2"):
        await import_(target, Pipe(gapped.getvalue()))
    assert await target.last_seq() == 2


async def test_a_message_jetstream_drops_as_a_duplicate_fails_the_import_loudly(
    target: EventLog,
) -> None:
    twice = ndjson(line(1, "a.example", "same-id"), line(2, "b.example", "same-id"))
    with pytest.raises(ImportFailed, match=r"sequence 2: JetStream dropped it as a duplicate"):
        await import_(target, twice)
    assert await target.last_seq() == 1


async def test_import_refuses_subjects_outside_the_stream(target: EventLog) -> None:
    foreign = line(1, "a.example")
    foreign.subject = "other.domain.a"
    with pytest.raises(ImportRefused, match="outside this stream's subjects"):
        await import_(target, ndjson(foreign))


async def test_until_a_sequence_or_a_time_imports_the_log_up_to_that_point(
    other_nats: EmbeddedNats, target: EventLog, tmp_path: Path
) -> None:
    times = [rfc3339_ns(1_700_000_000_123_456_789 + i * 1_000_000_000) for i in range(5)]
    log = ndjson(*(line(i + 1, f"d{i}.example", when=times[i]) for i in range(5)))
    assert await import_(target, io.BytesIO(log.getvalue()), until=2) == 2
    assert await target.last_seq() == 2

    second = await EventLog.connect(other_nats.url, "SECOND", "mp2")
    try:
        # The line's own time (ns) copied as --until includes that line.
        moved = [line(i + 1, f"d{i}.example", when=times[i]) for i in range(5)]
        for item in moved:
            item.subject = item.subject.replace("mp.", "mp2.", 1)
        count = await import_(second, ndjson(*moved), until=parse_until(times[2]))
        assert count == 3
        assert await second.last_seq() == 3
    finally:
        await second.js.delete_stream("SECOND")
        await second.close()


def test_rfc3339_times_round_trip_with_nanoseconds() -> None:
    ns = 1_700_000_000_123_456_789
    text = rfc3339_ns(ns)
    assert text == "2023-11-14T22:13:20.123456789Z"
    assert parse_rfc3339_ns(text) == ns
    assert parse_rfc3339_ns("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert parse_until("42") == 42
    assert parse_until("2023-11-14T22:13:20Z") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_until("2023-11-14")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_until("2023-11-14T22:13:20")  # no zone
