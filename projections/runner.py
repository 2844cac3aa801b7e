"""The projection runner: consume the log in order, apply in batches, signal waiters.

A decode failure stops the projector loudly; it never skips an event.
"""

import asyncio
import heapq
import itertools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg

from commands.log import EventLog
from core.events import decode, event_tag
from projections.appliers import CHECKPOINT, Item, apply_batch
from projections.db import open_writer

log = logging.getLogger("mailpanel.projector")

BATCH = 1000
# Small batches (an API write or a few) apply directly on the event loop: a hop to a worker
# thread costs more than the few statements themselves when the loop is busy. Catch-up and
# rebuild batches go to a thread so the loop stays responsive.
INLINE_BATCH = 32
REMEMBERED_REJECTIONS = 10_000


class ProjectorFailed(Exception):
    """The projector stopped on an event it cannot apply."""


def read_checkpoint(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM checkpoint WHERE name = ?", (CHECKPOINT,)).fetchone()
    return int(row[0]) if row else 0


class Projector:
    """Keeps one SQLite read model up to date with the log."""

    def __init__(self, path: Path, event_log: EventLog | None = None) -> None:
        self.path = path
        self.event_log = event_log
        self.db = open_writer(path)
        self.applied = read_checkpoint(self.db)
        self.failed: BaseException | None = None
        # Recent events the projector left without effect, so the writer can answer 409.
        self.rejected: dict[int, str] = {}
        # Arrived, not yet applied: a plain list and a wake-up event (an asyncio.Queue costs
        # two method calls per message, which showed in replay profiles).
        self._arrived: list[tuple[int, str, bytes]] = []
        self._wake = asyncio.Event()
        # Waiters by the sequence they wait for: only those now satisfied are woken (a
        # Condition woke every waiter on every batch, which showed under concurrent writes).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        # Called with the tags of each applied batch, before waiters are released, so a
        # change that alters what the API must know (tokens, settings) is in force when a
        # client hears its write succeeded.
        self.listeners: list[Callable[[set[str]], Awaitable[None]]] = []

    async def start(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self._sub = await event_log.subscribe(self.applied + 1, self._on_msg)
        self._task = asyncio.create_task(self._run(), name="projector")

    async def _on_msg(self, msg: Msg) -> None:
        self._arrived.append((msg.metadata.sequence.stream, msg.subject, msg.data))
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._arrived:
                    raw = self._arrived[:BATCH]
                    del self._arrived[:BATCH]
                    await self.apply_raw(raw)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failed = exc
            log.critical("projector stopped: %s", exc)
            self._release(all_waiters=True)

    async def apply_raw(self, raw: list[tuple[int, str, bytes]]) -> None:
        batch: list[Item] = []
        for seq, subject, data in raw:
            try:
                batch.append(Item(seq, subject, decode(data), data))
            except msgspec.DecodeError as exc:
                raise ProjectorFailed(f"cannot decode event {seq} on {subject}: {exc}") from exc
        if len(batch) <= INLINE_BATCH:
            applied, rejected = apply_batch(self.db, batch)
        else:
            applied, rejected = await asyncio.to_thread(apply_batch, self.db, batch)
        if rejected:
            self.rejected.update(rejected)
            while len(self.rejected) > REMEMBERED_REJECTIONS:
                del self.rejected[next(iter(self.rejected))]
        if self.listeners:
            tags = {event_tag(item.env.event) for item in batch}
            for listener in self.listeners:
                await listener(tags)
        self.applied = applied
        self._release()

    def _release(self, all_waiters: bool = False) -> None:
        while self._waiters and (all_waiters or self._waiters[0][0] <= self.applied):
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def rejection(self, seq: int) -> str:
        """Why event `seq` was left without effect ("" if it took effect or is unknown)."""
        return self.rejected.get(seq, "")

    async def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        """True once the read model has applied `seq` (read-your-writes), False on timeout."""
        if self.applied >= seq:
            return True
        if self.failed is not None:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._waiter_ids), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return self.applied >= seq

    async def stop(self) -> None:
        self._release(all_waiters=True)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # pragma: no cover - connection already gone
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        # Apply what already arrived so a clean stop loses no work.
        pending, self._arrived = self._arrived, []
        if pending and self.failed is None:
            try:
                await self.apply_raw(pending)
            except Exception as exc:  # pragma: no cover
                log.error("projector: final batch not applied: %s", exc)
        self.db.close()


async def catch_up(projector: Projector, event_log: EventLog, timeout: float = 600.0) -> int:
    """Start the projector and wait until it has applied everything in the log now."""
    target = await event_log.last_seq()
    await projector.start(event_log)
    if target and not await projector.wait_for(target, timeout):
        raise ProjectorFailed(f"projector did not reach {target}: {projector.failed}")
    if projector.failed is not None:
        raise ProjectorFailed(str(projector.failed))
    return target
