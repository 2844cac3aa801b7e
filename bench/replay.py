"""Replay: `projections.rebuild.rebuild` against the floor of reading the same stream and
writing its raw messages to SQLite.

The events are real encoded envelopes on the separate stream REPLAY (subjects `rp.>`, same
config as MAILPANEL): DomainCreated on `rp.domain.<name>`, then AliasCreated on
`rp.addr.<address>` spread over those domains, so the projector runs its real appliers
(including the domain check) on every event.

The floor: the same ordered consumer (`EventLog.subscribe`) whose callback inserts
(seq, subject, data) into a table, one transaction per 1,000 messages plus a checkpoint row,
on a fresh file with the read model's pragmas.
"""

import asyncio
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from commands.log import EventLog
from core.events import AliasCreated, DomainCreated, Envelope, Meta, encode
from core.subjects import address_subject, domain_subject
from projections.rebuild import rebuild
from projections.schema import PRAGMAS

STREAM = "REPLAY"
PREFIX = "rp"
BATCH = 1000
IN_FLIGHT = 1000

RAW_DDL = """
CREATE TABLE raw (seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE checkpoint (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
INSERT_RAW = "INSERT INTO raw (seq, subject, data) VALUES (?, ?, ?)"
SET_CHECKPOINT = (
    "INSERT INTO checkpoint (name, seq) VALUES ('raw', ?) "
    "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq"
)


def _meta(at: datetime) -> Meta:
    return Meta(actor="api-key", actor_id="static", command_id=uuid.uuid4().hex, at=at)


async def fill(js: JetStreamContext, events: int, domains: int) -> int:
    """Append `events` envelopes (the first `domains` of them domains); returns the last seq.

    Aliases are spread evenly, so with 100 events per domain none passes the default cap of
    100 aliases per domain. Domains are awaited one by one (their seqs are the aliases' domain
    ids); aliases go through publish_async with every future bounded, since one answered with
    an error would never resolve (nats-py 2.16).
    """
    at = datetime.now(UTC)
    ids: list[tuple[int, str]] = []
    for i in range(domains):
        name = f"d{i}.replay.test"
        env = Envelope(meta=_meta(at), event=DomainCreated(name=name, outgoing_ip="192.0.2.10"))
        ack = await js.publish(domain_subject(name, PREFIX), encode(env))
        ids.append((int(ack.seq), name))
    pending: list[asyncio.Future[PubAck]] = []
    for i in range(events - domains):
        domain_id, name = ids[i % domains]
        source = f"u{i}@{name}"
        event = AliasCreated(domain_id=domain_id, source=source, destination="x@example.org")
        payload = encode(Envelope(meta=_meta(at), event=event))
        pending.append(await js.publish_async(address_subject(source, PREFIX), payload))
        if len(pending) >= IN_FLIGHT:
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            pending.clear()
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), 30)
    info = await js.stream_info(STREAM)
    return int(info.state.last_seq)


async def time_rebuild(event_log: EventLog, path: Path) -> tuple[float, dict[str, int]]:
    """Seconds for a full rebuild into a fresh `path`, and the row counts it produced."""
    started = time.perf_counter()
    await rebuild(path, event_log)
    elapsed = time.perf_counter() - started
    db = sqlite3.connect(path)
    try:
        counts = {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("events", "domains", "aliases")
        }
    finally:
        db.close()
    return elapsed, counts


async def time_raw(event_log: EventLog, path: Path, last_seq: int) -> float:
    """Seconds to consume the stream to `last_seq` and commit every raw message."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.executescript(RAW_DDL)
    batch: list[tuple[int, str, bytes]] = []
    done = asyncio.Event()

    def commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(INSERT_RAW, batch)
        db.execute(SET_CHECKPOINT, (batch[-1][0],))
        db.execute("COMMIT")
        batch.clear()

    async def on_msg(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        batch.append((seq, msg.subject, msg.data))
        if len(batch) >= BATCH or seq >= last_seq:
            commit()
        if seq >= last_seq:
            done.set()

    started = time.perf_counter()
    sub = await event_log.subscribe(1, on_msg)
    try:
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
    finally:
        await sub.unsubscribe()
        db.close()
    rows = sqlite3.connect(path)
    try:
        count = int(rows.execute("SELECT count(*) FROM raw").fetchone()[0])
    finally:
        rows.close()
    if count != last_seq:
        raise RuntimeError(f"raw replay stored {count} rows, expected {last_seq}")
    return elapsed
