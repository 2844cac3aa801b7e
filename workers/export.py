"""Export, import and verify the event log: the disaster-recovery path for the one source of
truth.

The export format is NDJSON, one line per stored message, in sequence order:

    {"seq":N,"subject":"mp....","time":"<RFC 3339, ns>","headers":{...}|null,"data":<payload>}

`data` is the stored payload (JSON bytes) embedded verbatim as a JSON value, so it round-trips
byte for byte. A payload that is not one line of UTF-8 JSON without surrounding whitespace
(never one of ours, but a stray message could be) is written as `"data":null` plus
`"data_b64":"<base64>"` instead, so every line stays one JSON document and every payload still
round-trips exactly.

Import re-publishes every line to its subject with its headers, in order, each with
Nats-Expected-Last-Sequence = its predecessor, into an empty stream: sequences (which are the
ids of this system) come out identical, or the import stops. JetStream keeps that header on
the stored message, so a re-export of an imported log shows it besides the original headers.
Message times cannot be carried over: JetStream stamps each message as it stores it (the
events' own `meta.at` is in the payload and unchanged).
"""

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import BinaryIO

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import Header, RetentionPolicy, StreamInfo

from commands.log import EventLog, Unavailable
from core.events import decode, event_tag

Progress = Callable[[int, int], None]

BATCH = 1000  # messages per chunk written (and per queued batch)
QUEUED_BATCHES = 4  # batches the consumer may run ahead of the writer: bounds memory
IDLE_S = 30.0  # no message for this long while some are still due: the log is unavailable
WINDOW = 2000  # publishes in flight during an import
ACK_TIMEOUT_S = 30.0
EXPECTED_LAST_SEQUENCE = Header.EXPECTED_LAST_SEQUENCE.value
MSG_ID = Header.MSG_ID.value
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WHITESPACE = (b" ", b"\t", b"\n", b"\r")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")


class LogImportError(Exception):
    """An import could not be done."""


class ImportRefused(LogImportError):
    """Refused before anything was written (a non-empty stream, a bad or gapped file)."""


class ImportFailed(LogImportError):
    """Stopped part-way: the stream holds a prefix of the file and must be recreated."""


class Line(msgspec.Struct, omit_defaults=True):
    """One exported message."""

    seq: int
    subject: str
    time: str
    headers: dict[str, str] | None
    data: msgspec.Raw
    data_b64: str | None = None


_NULL = msgspec.Raw(b"null")
_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(Line)
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)

# One delivered message: (stream seq, stored time in ns, subject, headers, payload).
Stored = tuple[int, int, str, dict[str, str] | None, bytes]


# ---- time ---------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ns(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with all nine digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{fraction:09d}Z"


def parse_rfc3339_ns(text: str) -> int:
    """An RFC 3339 time (with a zone; up to nine fraction digits) as ns since the epoch."""
    match = _RFC3339.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 time with a zone (Z or +HH:MM): {text!r}")
    date, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone in ("Z", "z") else zone
    base = datetime.fromisoformat(f"{date}T{clock}{offset}")
    return (base - EPOCH) // timedelta(seconds=1) * 1_000_000_000 + int(
        (fraction or "").ljust(9, "0")
    )


def parse_until(text: str) -> int | datetime:
    """`--until`: a sequence number (digits) or an RFC 3339 time."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    ns = parse_rfc3339_ns(value)
    seconds, rest = divmod(ns, 1_000_000_000)
    return EPOCH + timedelta(seconds=seconds, microseconds=rest // 1000)


def _until_ns(until: datetime) -> int:
    """The last ns that is not later than `until`: a datetime has µs precision, so a time
    copied from an export line (ns) still includes that line."""
    if until.tzinfo is None:
        raise ValueError("--until needs a time zone (Z or +HH:MM)")
    return (until - EPOCH) // timedelta(microseconds=1) * 1000 + 999


# ---- reading the stream -------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The stream's extent when an export or a verify starts; later appends are not read."""

    messages: int
    first_seq: int
    last_seq: int
    info: StreamInfo


async def snapshot(event_log: EventLog) -> Snapshot:
    try:
        info = await event_log.js.stream_info(event_log.stream)
    except (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        nats.js.errors.ServiceUnavailableError,
        TimeoutError,
    ) as exc:
        raise Unavailable(f"event log unavailable: {type(exc).__name__}") from exc
    state = info.state
    return Snapshot(int(state.messages), int(state.first_seq), int(state.last_seq), info)


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream sequence, stored time in ns, messages still pending) from a JetStream
    delivery's reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
        return int(tokens[5]), int(tokens[7]), int(tokens[8])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>...
        return int(tokens[7]), int(tokens[9]), int(tokens[10])
    raise ValueError(f"not a JetStream delivery: {reply!r}")


async def _batches(event_log: EventLog, last_seq: int) -> AsyncGenerator[list[Stored], None]:
    """Every message from sequence 1 to `last_seq`, in order, in batches of BATCH (it ends
    early if nothing is pending before `last_seq`: trailing messages gone).

    An ordered push consumer with flow control (the fastest correct reader measured; see
    bench/export_bench.py). Its callback blocks while QUEUED_BATCHES wait, so flow control
    holds the server back when the writer is slower: memory stays bounded.
    """
    if last_seq <= 0:
        return
    queue: asyncio.Queue[tuple[list[Stored], bool]] = asyncio.Queue(QUEUED_BATCHES)
    pending: list[Stored] = []
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal pending, seen
        seq, ns, left = _ack_fields(msg.reply)
        if seq <= seen:  # delivered again after an ordered-consumer reset
            return
        seen = seq
        pending.append((seq, ns, msg.subject, msg.headers, msg.data))
        last = seq >= last_seq or left == 0
        if len(pending) >= BATCH or last:
            batch, pending = pending, []
            await queue.put((batch, last))

    sub = await event_log.subscribe(1, on_msg)
    try:
        while True:
            try:
                batch, last = await asyncio.wait_for(queue.get(), IDLE_S)
            except TimeoutError:
                raise Unavailable(
                    f"event log unavailable: nothing delivered for {IDLE_S:.0f} s after "
                    f"sequence {seen} (reading to {last_seq})"
                ) from None
            yield batch
            if last:
                return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # pragma: no cover - the connection is already gone
            pass


# ---- export -------------------------------------------------------------------------------


def _embeddable(data: bytes) -> bool:
    """True if `data` can be embedded verbatim: one line of UTF-8 JSON, no outer whitespace."""
    if not data or data[:1] in _WHITESPACE or data[-1:] in _WHITESPACE:
        return False
    if b"\n" in data or b"\r" in data:
        return False
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
    try:
        _raw_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def encode_lines(batch: list[Stored]) -> bytes:
    lines = []
    for seq, ns, subject, headers, data in batch:
        if _embeddable(data):
            line = Line(seq, subject, rfc3339_ns(ns), headers or None, msgspec.Raw(data))
        else:
            b64 = base64.b64encode(data).decode()
            line = Line(seq, subject, rfc3339_ns(ns), headers or None, _NULL, b64)
        lines.append(line)
    return _encoder.encode_lines(lines)


async def iter_export(
    event_log: EventLog, snap: Snapshot, progress: Progress | None = None
) -> AsyncGenerator[bytes, None]:
    """The NDJSON of every message up to `snap.last_seq`, a chunk (BATCH lines) at a time."""
    done = 0
    async with aclosing(_batches(event_log, snap.last_seq)) as batches:
        async for batch in batches:
            done += len(batch)
            yield encode_lines(batch)
            if progress is not None:
                progress(done, snap.messages)


async def export(event_log: EventLog, out: BinaryIO, progress: Progress | None = None) -> int:
    """Write the whole stream (as it is when called) to `out` as NDJSON; the line count."""
    snap = await snapshot(event_log)
    count = 0

    def counted(done: int, total: int) -> None:
        nonlocal count
        count = done
        if progress is not None:
            progress(done, total)

    async with aclosing(iter_export(event_log, snap, counted)) as chunks:
        async for chunk in chunks:
            out.write(chunk)
    out.flush()
    return count


# ---- import -------------------------------------------------------------------------------


def _read_lines(inp: BinaryIO) -> Iterator[tuple[int, Line]]:
    for number, raw in enumerate(inp, 1):
        if not raw.strip():
            continue
        try:
            yield number, _line_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise ImportRefused(f"line {number}: not an export line: {exc}") from None


def _payload(line: Line, number: int) -> bytes:
    if line.data_b64 is None:
        return bytes(line.data)
    try:
        return base64.b64decode(line.data_b64, validate=True)
    except ValueError:
        raise ImportRefused(f"line {number}: data_b64 is not base64") from None


class _Plan:
    """Checks lines as they come: in order, without gaps, inside the stream; where to stop."""

    def __init__(self, prefix: str, until: int | datetime | None) -> None:
        self.prefix = prefix + "."
        self.until_seq = until if isinstance(until, int) else None
        self.until_ns = _until_ns(until) if isinstance(until, datetime) else None
        self.previous = 0

    def admit(self, number: int, line: Line) -> bool:
        """True to import the line, False to stop before it; raises on a bad line."""
        if self.until_seq is not None and line.seq > self.until_seq:
            return False
        if self.until_ns is not None:
            try:
                stored = parse_rfc3339_ns(line.time)
            except ValueError as exc:
                raise ImportRefused(f"line {number} (seq {line.seq}): {exc}") from None
            if stored > self.until_ns:
                return False
        if line.seq != self.previous + 1:
            if self.previous == 0:
                raise ImportRefused(
                    f"line {number}: the export starts at sequence {line.seq}, not 1; "
                    "sequences are ids here, so they cannot be renumbered"
                )
            raise ImportRefused(
                f"line {number}: sequence {line.seq} follows {self.previous}: the export has "
                f"a gap (or is out of order) and JetStream cannot store a gap; refusing "
                "rather than renumbering (sequences are ids here)"
            )
        if not line.subject.startswith(self.prefix):
            raise ImportRefused(
                f"line {number} (seq {line.seq}): subject {line.subject!r} is outside this "
                f"stream's subjects {self.prefix}>"
            )
        self.previous = line.seq
        return True


def _planned(inp: BinaryIO, plan: _Plan) -> Iterator[tuple[int, Line]]:
    for number, line in _read_lines(inp):
        if not plan.admit(number, line):
            return
        yield number, line


class _ApiErrorBody(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiErrorBody | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class _Pipeline:
    """Publishes in order with up to WINDOW acks outstanding; keeps the first failure."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self.inbox = event_log.nc.new_inbox()
        self.outstanding = 0
        self.acked = 0
        self.failure: tuple[int, str] | None = None
        self.msg_ids: dict[int, str] = {}
        self.room = asyncio.Event()
        self.room.set()
        self.sub: object = None

    async def start(self) -> None:
        self.sub = await self.event_log.nc.subscribe(
            f"{self.inbox}.*",
            cb=self._on_ack,
            pending_msgs_limit=WINDOW * 4,
            pending_bytes_limit=64 * 1024 * 1024,
        )

    def _fail(self, seq: int, reason: str) -> None:
        if self.failure is None or seq < self.failure[0]:
            self.failure = (seq, reason)

    async def _on_ack(self, msg: Msg) -> None:
        seq = int(msg.subject.rpartition(".")[2])
        msg_id = self.msg_ids.pop(seq, "")
        self.outstanding -= 1
        if self.outstanding <= WINDOW // 2:
            self.room.set()
        if msg.headers and msg.headers.get("Status"):
            self._fail(seq, f"no stream took it (status {msg.headers.get('Status')})")
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError:
            self._fail(seq, f"unreadable acknowledgement {msg.data[:200]!r}")
            return
        if ack.error is not None:
            reason = f"{ack.error.description} (err_code {ack.error.err_code})"
            if "wrong last sequence" in ack.error.description:
                reason += ": the stream changed under the import (another writer?)"
            self._fail(seq, reason)
        elif ack.duplicate:
            self._fail(
                seq,
                f"JetStream dropped it as a duplicate of sequence {ack.seq} "
                f"({MSG_ID} {msg_id!r}, within the stream's duplicate window); the source "
                "must have stored that id twice more than the window apart",
            )
        elif ack.seq != seq:
            self._fail(seq, f"stored as sequence {ack.seq}")
        else:
            self.acked += 1

    async def publish(
        self, seq: int, subject: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        if self.outstanding >= WINDOW:
            self.room.clear()
            await self._wait(self.room, "acknowledgements")
        msg_id = headers.get(MSG_ID)
        if msg_id:
            self.msg_ids[seq] = msg_id
        self.outstanding += 1
        await self.event_log.nc.publish(
            subject, payload, reply=f"{self.inbox}.{seq}", headers=headers
        )

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), ACK_TIMEOUT_S)
        except TimeoutError:
            raise ImportFailed(
                f"no {what} from JetStream for {ACK_TIMEOUT_S:.0f} s "
                f"({self.acked} messages acknowledged)"
            ) from None

    async def finish(self) -> None:
        await self.event_log.nc.flush()
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self.outstanding > 0:
            if time.monotonic() > deadline:
                raise ImportFailed(
                    f"{self.outstanding} publishes unacknowledged after {ACK_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        unsubscribe = getattr(self.sub, "unsubscribe", None)
        if unsubscribe is not None:
            try:
                await unsubscribe()
            except Exception:  # pragma: no cover
                pass


async def import_(
    event_log: EventLog,
    inp: BinaryIO,
    until: int | datetime | None = None,
    progress: Progress | None = None,
) -> int:
    """Publish the export in `inp` into the EMPTY stream of `event_log`; the count imported.

    Every message keeps its subject, headers (Nats-Msg-Id included), payload and sequence.
    `until` an int: stop after that sequence; a datetime: stop before the first message stored
    later than it (point-in-time recovery). A seekable `inp` is checked in full before the
    first publish (ImportRefused: nothing written); a pipe is checked as it is read.
    """
    snap = await snapshot(event_log)
    if snap.messages or snap.last_seq:
        raise ImportRefused(
            f"stream {event_log.stream} already holds {snap.messages:,} messages (last "
            f"sequence {snap.last_seq:,}); import only into a new, empty stream (sequences "
            "are ids here and must come out identical)"
        )
    total = 0
    start = inp.tell() if inp.seekable() else None
    if start is not None:
        for _ in _planned(inp, _Plan(event_log.prefix, until)):
            total += 1
        inp.seek(start)
    pipeline = _Pipeline(event_log)
    await pipeline.start()
    last = 0
    try:
        for number, line in _planned(inp, _Plan(event_log.prefix, until)):
            if pipeline.failure is not None:
                break
            headers = dict(line.headers) if line.headers else {}
            headers[EXPECTED_LAST_SEQUENCE] = str(line.seq - 1)
            await pipeline.publish(line.seq, line.subject, _payload(line, number), headers)
            last = line.seq
            if progress is not None and last % BATCH == 0:
                progress(pipeline.acked, max(total, last))
        await pipeline.finish()
    except ImportRefused as exc:
        if last == 0:
            raise
        await pipeline.finish()
        raise ImportFailed(f"{exc}; {_partial(pipeline.acked, event_log)}") from None
    finally:
        await pipeline.stop()
    if pipeline.failure is not None:
        seq, reason = pipeline.failure
        raise ImportFailed(
            f"import stopped at sequence {seq}: {reason}; {_partial(seq - 1, event_log)}"
        )
    if progress is not None:
        progress(pipeline.acked, max(total, last))
    after = await snapshot(event_log)
    if after.last_seq != last or after.messages != last:
        raise ImportFailed(
            f"stream {event_log.stream} holds {after.messages:,} messages up to sequence "
            f"{after.last_seq:,} after importing 1..{last:,} (another writer?)"
        )
    return last


def _partial(stored: int, event_log: EventLog) -> str:
    return (
        f"stream {event_log.stream} now holds sequences 1..{stored} of the export: delete the "
        "stream (or the data dir's nats store) before importing again"
    )


# ---- verify -------------------------------------------------------------------------------


@dataclass
class Report:
    """What verify found: ok, or the first problem (`seq` None: not tied to one message)."""

    stream: str
    ok: bool = True
    messages: int = 0  # messages read and decoded
    first_seq: int = 0
    last_seq: int = 0
    seq: int | None = None
    reason: str = ""
    types: dict[str, int] = field(default_factory=dict)

    def problem(self, seq: int | None, reason: str) -> "Report":
        self.ok, self.seq, self.reason = False, seq, reason
        return self

    def __str__(self) -> str:
        if not self.ok:
            where = f"sequence {self.seq}" if self.seq is not None else f"stream {self.stream}"
            return f"PROBLEM at {where}: {self.reason} ({self.messages:,} messages fine before)"
        if not self.messages:
            return f"ok: stream {self.stream} is empty; its config is append-only"
        return (
            f"ok: {self.messages:,} events, sequences {self.first_seq:,}..{self.last_seq:,} "
            f"without gaps, all decode; stream {self.stream} is append-only"
        )


def _unlimited(value: float | int | None) -> bool:
    return value is None or value <= 0


def config_problem(info: StreamInfo) -> str:
    """Why the stream's config could lose events ("" if it cannot)."""
    c = info.config
    if c.retention not in (None, RetentionPolicy.LIMITS):
        return f"retention is {c.retention}, not limits: consumers would remove events"
    if not c.deny_delete:
        return "deny_delete is off: single events could be deleted"
    if not c.deny_purge:
        return "deny_purge is off: the stream could be purged"
    for name in ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject"):
        value = getattr(c, name)
        if not _unlimited(value):
            return f"{name} is {value}: old events would be dropped"
    if c.allow_rollup_hdrs:
        return "allow_rollup_hdrs is on: a rollup message purges a subject"
    if c.allow_msg_ttl:
        return "allow_msg_ttl is on: messages with a TTL expire"
    return ""


async def verify(event_log: EventLog, progress: Progress | None = None) -> Report:
    """Checks the stream config, contiguity from sequence 1 and that every message decodes."""
    snap = await snapshot(event_log)
    report = Report(stream=event_log.stream, first_seq=snap.first_seq, last_seq=snap.last_seq)
    reason = config_problem(snap.info)
    if reason:
        return report.problem(None, reason)
    if snap.messages == 0:
        if snap.last_seq:
            return report.problem(1, f"sequences 1..{snap.last_seq} are all gone")
        return report
    types: Counter[str] = Counter()
    expected = 1
    async with aclosing(_batches(event_log, snap.last_seq)) as batches:
        async for batch in batches:
            for seq, _, subject, _, data in batch:
                if seq != expected:
                    missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                    report.types = dict(types)
                    return report.problem(expected, f"sequence {missing} missing (deleted?)")
                try:
                    env = decode(data)
                except msgspec.DecodeError as exc:
                    report.types = dict(types)
                    return report.problem(seq, f"cannot decode the message on {subject}: {exc}")
                types[event_tag(env.event)] += 1
                report.messages += 1
                expected += 1
            if progress is not None:
                progress(report.messages, snap.messages)
    report.types = dict(types)
    if report.messages != snap.messages or expected - 1 != snap.last_seq:
        return report.problem(
            expected,
            f"sequences {expected}..{snap.last_seq} missing (the stream reports "
            f"{snap.messages:,} messages up to {snap.last_seq:,})",
        )
    return report
