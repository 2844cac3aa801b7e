"""`python -m bench.export_bench`: log export, import and verify (workers.export) against the
floor of what JetStream gives a Python client on the same machine.

Two nats-servers (source and target, file store, as `mailpanel serve` embeds them). The source
stream MAILPANEL gets N real encoded envelopes with the headers a real append carries
(Nats-Msg-Id, Nats-Expected-Last-Subject-Sequence): DomainCreated on `mp.domain.<name>`, then
AliasCreated on `mp.addr.<address>` spread over those domains.

Figures, each the median of --rounds (pairs run in ABBA order so drift hits both sides):
- export to a file vs. the raw consume floor: the same ordered push consumer reading every
  message and doing nothing else;
- import into a fresh target stream vs. the raw publish floor: the same messages (already in
  memory) published with the same headers and in-flight window, acks counted, nothing checked;
- verify (walk + decode every message).
The imported stream is then exported again and compared with the source, line by line.
"""

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO, cast

import msgspec
from nats.aio.msg import Msg
from nats.js.api import Header, PubAck

from commands.log import EventLog
from core.events import AliasCreated, DomainCreated, Envelope, Meta, encode
from core.subjects import address_subject, domain_subject
from workers.export import (
    EXPECTED_LAST_SEQUENCE,
    WINDOW,
    Line,
    export,
    import_,
    verify,
)
from workers.nats_server import EmbeddedNats
from workers.serve import run as run_loop  # uvloop when installed, as the CLI runs

IN_FLIGHT = 1000


def _meta(at: datetime) -> Meta:
    return Meta(actor="api-key", actor_id="static", command_id=uuid.uuid4().hex, at=at)


async def fill(event_log: EventLog, events: int, domains: int) -> int:
    """Append `events` envelopes as the real append does (msg id, expected subject seq)."""
    js = event_log.js
    at = datetime.now(UTC)
    ids: list[tuple[int, str]] = []
    for i in range(domains):
        name = f"d{i}.export.test"
        env = Envelope(meta=_meta(at), event=DomainCreated(name=name, outgoing_ip="192.0.2.10"))
        headers = {Header.MSG_ID.value: env.meta.command_id, _SUBJECT_SEQ: "0"}
        ack = await js.publish(domain_subject(name), encode(env), headers=headers)
        ids.append((int(ack.seq), name))
    pending: list[asyncio.Future[PubAck]] = []
    for i in range(events - domains):
        domain_id, name = ids[i % domains]
        source = f"u{i}@{name}"
        event = AliasCreated(domain_id=domain_id, source=source, destination="x@example.org")
        env = Envelope(meta=_meta(at), event=event)
        headers = {Header.MSG_ID.value: env.meta.command_id, _SUBJECT_SEQ: "0"}
        pending.append(
            await js.publish_async(address_subject(source), encode(env), headers=headers)
        )
        if len(pending) >= IN_FLIGHT:
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            pending.clear()
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), 30)
    return await event_log.last_seq()


_SUBJECT_SEQ = Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value


async def raw_consume(event_log: EventLog, last_seq: int) -> None:
    """The ordered push consumer delivers every message to a no-op callback."""
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        count += 1
        if count >= last_seq:
            done.set()

    sub = await event_log.subscribe(1, on_msg)
    try:
        await asyncio.wait_for(done.wait(), 600)
    finally:
        await sub.unsubscribe()


async def raw_publish(
    event_log: EventLog, messages: list[tuple[str, bytes, dict[str, str] | None]]
) -> None:
    """Publish `messages` (in memory) with WINDOW acks in flight, acks counted."""
    nc = event_log.nc
    inbox = nc.new_inbox()
    acked = 0
    room = asyncio.Event()
    done = asyncio.Event()
    total = len(messages)

    async def on_ack(msg: Msg) -> None:
        nonlocal acked
        acked += 1
        room.set()
        if acked >= total:
            done.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack, pending_msgs_limit=WINDOW * 4)
    try:
        for i, (subject, payload, headers) in enumerate(messages):
            while i - acked >= WINDOW:
                room.clear()
                await asyncio.wait_for(room.wait(), 30)
            await nc.publish(subject, payload, reply=f"{inbox}.{i}", headers=headers)
        await nc.flush()
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await sub.unsubscribe()


async def fresh_stream(event_log: EventLog) -> None:
    """Drop and recreate the target stream (allowed: deny_delete only guards messages)."""
    await event_log.js.delete_stream(event_log.stream)
    await event_log.ensure_stream()


def _open(path: Path, mode: str) -> BinaryIO:
    """Opening a local file is not worth a thread here."""
    return cast(BinaryIO, open(path, mode))


def load_messages(path: Path) -> list[tuple[str, bytes, dict[str, str] | None]]:
    decoder = msgspec.json.Decoder(Line)
    with open(path, "rb") as f:
        return [
            (line.subject, bytes(line.data), line.headers)
            for line in (decoder.decode(raw) for raw in f)
        ]


def comparable(path: Path) -> str:
    """A digest of the export without times and the header an import adds."""
    decoder = msgspec.json.Decoder(Line)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for raw in f:
            line = decoder.decode(raw)
            headers = {k: v for k, v in (line.headers or {}).items() if k != EXPECTED_LAST_SEQUENCE}
            digest.update(msgspec.json.encode([line.seq, line.subject, headers]))
            digest.update(bytes(line.data))
    return digest.hexdigest()


Timing = tuple[float, float]  # (wall s, CPU s of this process)


async def timed(action: Callable[[], Awaitable[object]]) -> tuple[Timing, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = await action()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def rate(n: int, runs: list[Timing]) -> str:
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    each = ", ".join(f"{w:.2f}" for w, _ in runs)
    return f"{n / wall:>9,.0f} events/s {cpu * 1e6 / n:>6.1f} µs CPU/event   runs {each} s"


def median_wall(runs: list[Timing]) -> float:
    return statistics.median(w for w, _ in runs)


async def run(source_url: str, target_url: str, work: Path, args: argparse.Namespace) -> bool:
    source = await EventLog.connect(source_url, name="bench-export-source")
    target = await EventLog.connect(target_url, name="bench-export-target")
    try:
        print(f"bench: filling {args.events:,} events ...", flush=True)
        started = time.perf_counter()
        n = await fill(source, args.events, max(1, args.events // 100))
        fill_s = time.perf_counter() - started
        out = work / "export.ndjson"
        consume: list[Timing] = []
        exports: list[Timing] = []
        for i in range(args.rounds):
            print(f"bench: raw consume / export (round {i + 1}/{args.rounds}) ...", flush=True)
            for which in ("raw", "export") if i % 2 == 0 else ("export", "raw"):
                if which == "raw":
                    timing, _ = await timed(lambda: raw_consume(source, n))
                    consume.append(timing)
                else:
                    with _open(out, "wb") as f:
                        timing, count = await timed(partial(export, source, f))
                    exports.append(timing)
                    if count != n:
                        raise RuntimeError(f"export wrote {count} lines, expected {n}")
        size = out.stat().st_size
        messages = load_messages(out)
        publish: list[Timing] = []
        imports: list[Timing] = []
        for i in range(args.rounds):
            print(f"bench: raw publish / import (round {i + 1}/{args.rounds}) ...", flush=True)
            for which in ("raw", "import") if i % 2 == 0 else ("import", "raw"):
                await fresh_stream(target)
                if which == "raw":
                    timing, _ = await timed(lambda: raw_publish(target, messages))
                    publish.append(timing)
                else:
                    with _open(out, "rb") as f:
                        timing, count = await timed(partial(import_, target, f))
                    imports.append(timing)
                    if count != n:
                        raise RuntimeError(f"import stored {count}, expected {n}")
        verifies = [(await timed(lambda: verify(source)))[0] for _ in range(args.rounds)]
        source_report = await verify(source)
        target_report = await verify(target)
        again = work / "again.ndjson"
        with _open(again, "wb") as f:
            await export(target, f)
        same = comparable(out) == comparable(again)
    finally:
        await source.close()
        await target.close()

    print()
    print(
        f"log export / import of {n:,} events ({size / n:,.0f} B per line, "
        f"{size / 1e6:,.1f} MB; filled in {fill_s:.2f} s); median of {args.rounds}, "
        f"{os.cpu_count()} CPUs:"
    )
    print(f"  {'raw ordered consumer, no-op callback':<38}{rate(n, consume)}")
    print(f"  {'export to an NDJSON file':<38}{rate(n, exports)}")
    print(f"  {'raw pipelined publish, same headers':<38}{rate(n, publish)}")
    print(f"  {'import into a fresh stream':<38}{rate(n, imports)}")
    print(f"  {'verify (walk + decode every event)':<38}{rate(n, verifies)}")
    print(
        f"  export / raw consume {median_wall(consume) / median_wall(exports):.2f}; "
        f"import / raw publish {median_wall(publish) / median_wall(imports):.2f} (events/s)"
    )
    print(f"  verify source: {source_report}")
    print(f"  verify target: {target_report}")
    print(f"  re-export of the imported stream equals the source: {'yes' if same else 'NO'}")
    return same and source_report.ok and target_report.ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export_bench", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailpanel-export-bench-"))
    source = EmbeddedNats(work / "source", port=0)
    target = EmbeddedNats(work / "target", port=0)
    ok = False
    try:
        source.start()
        target.start()
        ok = run_loop(run(source.url, target.url, work, args))
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        target.stop()
        source.stop()
        if args.keep:
            print(f"bench: work dir kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
