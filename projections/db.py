"""Opening read-model databases: the projector's writer and the API's aiosqlite reader."""

import os
import sqlite3
from pathlib import Path

import aiosqlite

from projections.schema import DDL, MODEL_VERSION, PRAGMAS, READ_MODEL_TABLES


def private(path: Path) -> None:
    """The read model holds password and token hashes: owner-only, like config.env. SQLite
    gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            p.chmod(0o600)


def open_writer(path: Path) -> sqlite3.Connection:
    """The projector's one writer. Batches run in a worker thread (one hop per batch instead
    of one per statement, as aiosqlite would need), so the connection is not thread-bound;
    only one batch uses it at a time."""
    private(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    from projections.effective import invalidate

    invalidate(db)  # a new connection may reuse an old one's id: no cached tiers
    for pragma in PRAGMAS:
        db.execute(pragma)
    if int(db.execute("PRAGMA user_version").fetchone()[0]) < MODEL_VERSION:
        for table in READ_MODEL_TABLES:
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.executescript(DDL)
        db.execute(f"PRAGMA user_version = {MODEL_VERSION}")
    db.executescript(DDL)
    return db


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A query connection for the API; WAL lets it read while the projector writes."""
    private(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        await db.execute(pragma)
    await db.executescript(DDL)
    return db


def dump(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every read-model table in a stable order (for the rebuild check)."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for table in READ_MODEL_TABLES:
        out[table] = [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
    return out
