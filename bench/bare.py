"""The baselines: the least a Litestar endpoint can do for the same work as the real one.

POST /bare/publish: one `js.publish` awaiting the ack, with the headers (Nats-Msg-Id, expected
last subject sequence 0) and payload (an encoded AliasCreated envelope) of `EventLog.append`,
on subject `bench.addr.<source>` of the separate stream BENCH (same config as MAILPANEL). A
separate stream, so the real app's projector never sees these messages.

GET /bare/domains: one `execute_fetchall` of the real app's first 50 domains from its read.db
(the SQL of the real list), returned in the real list envelope {"data": [...], "meta": {...}}.
The SQL and structs are copies, not imports: the baseline must not move when the app does;
the benchmark checks that both lists hold the same rows.

Served like `mailpanel serve`: uvicorn, one worker, uvloop + httptools, log level warning,
no access log. Run as `python -m bench.bare --nats URL --db PATH --listen HOST:PORT`.
"""

import argparse
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import msgspec
import nats
import nats.js.errors
import uvicorn
from litestar import Litestar, get, post
from litestar.params import JSONBody
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import Header

from commands.log import stream_config
from core.events import AliasCreated, Envelope, Meta, encode
from core.subjects import address_subject

STREAM = "BENCH"
PREFIX = "bench"
PUBLISH_TIMEOUT_S = 3.0
LIST_DOMAINS = (
    "SELECT id, name, active, outgoing_ip, created_at, count(*) OVER () FROM domains "
    "ORDER BY id LIMIT ? OFFSET ?"
)


class AliasIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source: str
    destination: str


class Alias(msgspec.Struct, frozen=True):
    id: int
    domain_id: int
    source: str
    destination: str
    created_at: str


class Domain(msgspec.Struct, frozen=True):
    id: int
    name: str
    active: bool
    outgoing_ip: str
    created_at: str


class PageMeta(msgspec.Struct, frozen=True):
    page: int
    limit: int
    total: int


class DomainList(msgspec.Struct, frozen=True):
    data: list[Domain]
    meta: PageMeta


class Held:
    """What the bare app holds between requests: one NATS connection, one reader."""

    nc: Client
    js: JetStreamContext
    db: aiosqlite.Connection


def create_app(nats_url: str, read_db: Path) -> Litestar:
    held = Held()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        held.nc = await nats.connect(nats_url, name="bench-bare")
        held.js = held.nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        try:
            await held.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            await held.js.add_stream(stream_config(STREAM, PREFIX))
        held.db = await aiosqlite.connect(read_db, isolation_level=None)
        try:
            yield
        finally:
            await held.db.close()
            await held.nc.drain()

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @post("/bare/publish", status_code=201)
    async def publish(data: JSONBody[AliasIn]) -> Alias:
        now = datetime.now(UTC)
        command_id = uuid.uuid4().hex
        event = AliasCreated(domain_id=1, source=data.source, destination=data.destination)
        env = Envelope(meta=Meta(actor="api-key", command_id=command_id, at=now), event=event)
        headers = {
            Header.MSG_ID.value: command_id,
            Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "0",
        }
        subject = address_subject(data.source, PREFIX)
        ack = await held.js.publish(subject, encode(env), headers=headers)
        return Alias(
            id=ack.seq,
            domain_id=1,
            source=data.source,
            destination=data.destination,
            created_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    @get("/bare/domains")
    async def domains() -> DomainList:
        rows = list(await held.db.execute_fetchall(LIST_DOMAINS, (50, 0)))
        data = [
            Domain(id=r[0], name=r[1], active=bool(r[2]), outgoing_ip=r[3], created_at=r[4])
            for r in rows
        ]
        total = int(rows[0][-1]) if data else 0
        return DomainList(data=data, meta=PageMeta(page=1, limit=50, total=total))

    return Litestar(route_handlers=[health, publish, domains], lifespan=[lifespan], debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--nats", required=True, help="NATS URL")
    parser.add_argument("--db", required=True, type=Path, help="the real app's read.db")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    # The same logging set-up as `mailpanel serve` (workers/cli.py).
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    host, _, port = args.listen.rpartition(":")
    config = uvicorn.Config(
        create_app(args.nats, args.db),
        host=host,
        port=int(port),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
