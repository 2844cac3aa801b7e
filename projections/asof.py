"""Time travel: the read model as it was at stream sequence N.

The events index (table `events` of the read model) holds every applied event's stored
envelope, so the state at N is a replay of the index rows with seq <= N through the SAME
appliers the projector runs (`apply_batch`), into a temporary SQLite file. Replays are kept in
a small LRU (4 by default, keyed by sequence) of files under `DIR/asof/`, mode 0600, deleted
when evicted and on shutdown; a new replay starts from the nearest cached one at or below N
instead of from the beginning.

`as_of` is a sequence, or an RFC 3339 time: then the last sequence whose event time is at or
before it (0, the empty state, when none is).
"""

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from core.events import decode
from projections.appliers import Item, apply_batch
from projections.db import open_writer, private

log = logging.getLogger("mailpanel.asof")

BATCH = 1000
MAX_SEQ = 2**63 - 1
CAPACITY = 4
PREFIX = "asof-"
EVENTS_AFTER = (
    "SELECT seq, subject, data FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)
BEFORE_SECOND = "SELECT coalesce(max(seq), 0) FROM events WHERE at < ?"
IN_SECOND = "SELECT seq, data FROM events WHERE at = ? ORDER BY seq"


def parse(raw: str) -> int | datetime:
    """A sequence (digits) or an RFC 3339 time with a zone; ValueError otherwise."""
    value = raw.strip()
    if value.isascii() and value.isdigit():
        if len(value) > 19 or int(value) > MAX_SEQ:
            raise ValueError(f"{raw!r} is not a stream sequence")
        return int(value)
    if len(value) < 20 or value[10] not in "Tt":
        raise ValueError(f"{raw!r} is neither a sequence nor an RFC 3339 time")
    try:
        at = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{raw!r} is neither a sequence nor an RFC 3339 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{raw!r} has no time zone (end it in Z or +hh:mm)")
    return at.astimezone(UTC)


async def resolve_time(db: aiosqlite.Connection, at: datetime) -> int:
    """The last sequence whose event happened at or before `at` (the index keeps seconds; the
    events of that very second are compared at their full precision)."""
    second = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = list(await db.execute_fetchall(BEFORE_SECOND, (second,)))
    best = int(rows[0][0])
    for seq, data in await db.execute_fetchall(IN_SECOND, (second,)):
        if decode(str(data).encode()).meta.at <= at:
            best = max(best, int(seq))
    return best


def replay(source: Path, target: Path, seq: int, base: Path | None, base_seq: int) -> None:
    """Write the state at `seq` to `target`: a copy of `base` (the state at `base_seq`), or
    an empty model, then the index rows (base_seq, seq] of `source` through the appliers."""
    private(target)
    if base is not None:
        with contextlib.closing(sqlite3.connect(f"file:{base}?mode=ro", uri=True)) as src:
            with contextlib.closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
    db = open_writer(target)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        last = base_seq
        while True:
            rows = src.execute(EVENTS_AFTER, (last, seq, BATCH)).fetchall()
            if not rows:
                break
            batch = []
            for row_seq, subject, data in rows:
                raw = str(data).encode()
                batch.append(Item(int(row_seq), str(subject), decode(raw), raw))
            apply_batch(db, batch)
            last = int(rows[-1][0])
    finally:
        src.close()
        db.close()
    private(target)


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        p.unlink(missing_ok=True)


class _Replay:
    """One cached state: its file, a reader on it, and how many requests use it now."""

    __slots__ = ("evicted", "path", "reader", "seq", "users")

    def __init__(self, seq: int, path: Path, reader: aiosqlite.Connection) -> None:
        self.seq = seq
        self.path = path
        self.reader = reader
        self.users = 0
        self.evicted = False


class AsOf:
    """The cache of replays of one read model (`source`), files under `directory`."""

    def __init__(self, source: Path, directory: Path, capacity: int = CAPACITY) -> None:
        self.source = source
        self.directory = directory
        self.capacity = capacity
        self._cached: OrderedDict[int, _Replay] = OrderedDict()
        self._building: dict[int, asyncio.Future[None]] = {}
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        for stale in directory.glob(PREFIX + "*"):  # left by a process that was killed
            stale.unlink(missing_ok=True)

    @property
    def cached(self) -> list[int]:
        """The cached sequences, least recently used first."""
        return list(self._cached)

    @property
    def files(self) -> dict[int, Path]:
        """The replay file of each cached sequence."""
        return {seq: entry.path for seq, entry in self._cached.items()}

    @contextlib.asynccontextmanager
    async def at(self, seq: int) -> AsyncIterator[aiosqlite.Connection]:
        """A reader on the read model as it was at `seq` (which the caller has checked is not
        past the checkpoint), replayed now or taken from the cache."""
        entry = await self._acquire(seq)
        try:
            yield entry.reader
        finally:
            await self._release(entry)

    async def _acquire(self, seq: int) -> _Replay:
        while True:
            if self._closed:
                raise RuntimeError("time travel is shut down")
            entry = self._cached.get(seq)
            if entry is not None and not entry.evicted:
                self._cached.move_to_end(seq)
                entry.users += 1  # no await since the lookup: it cannot be evicted meanwhile
                return entry
            pending = self._building.get(seq)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            await self._build(seq)

    async def _release(self, entry: _Replay) -> None:
        entry.users -= 1
        if entry.evicted and entry.users == 0:
            await self._drop(entry)

    async def _build(self, seq: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._building[seq] = done
        base = max(
            (e for e in self._cached.values() if e.seq <= seq), key=lambda e: e.seq, default=None
        )
        if base is not None:
            base.users += 1  # kept while it is copied
        path = self.directory / f"{PREFIX}{seq}-{secrets.token_hex(4)}.db"
        try:
            await asyncio.to_thread(
                replay,
                self.source,
                path,
                seq,
                None if base is None else base.path,
                0 if base is None else base.seq,
            )
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only=1")
            self._cached[seq] = _Replay(seq, path, reader)
            while len(self._cached) > self.capacity:
                _, oldest = self._cached.popitem(last=False)
                oldest.evicted = True
                if oldest.users == 0:
                    await self._drop(oldest)
            done.set_result(None)
        except BaseException as exc:
            _remove(path)
            done.set_exception(exc)
            done.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._building[seq]
            if base is not None:
                await self._release(base)

    async def _drop(self, entry: _Replay) -> None:
        with contextlib.suppress(Exception):
            await entry.reader.close()
        _remove(entry.path)

    async def close(self) -> None:
        """Shutdown: every replay file goes."""
        self._closed = True
        cached, self._cached = list(self._cached.values()), OrderedDict()
        for entry in cached:
            entry.evicted = True
            await self._drop(entry)
