"""`mailpanel rebuild`: replay the whole log into a fresh read model, then swap it in."""

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from commands.log import EventLog
from projections.runner import Projector, catch_up


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


async def _report(projector: Projector, target: int, progress: Callable[[int, int], None]) -> None:
    while True:
        progress(projector.applied, target)
        await asyncio.sleep(0.2)


async def rebuild(
    path: Path, event_log: EventLog, progress: Callable[[int, int], None] | None = None
) -> int:
    """Replay from sequence 1 into `path`.rebuild, then atomically replace `path`.

    The caller holds the data dir's lock, so no projector writes `path` meanwhile.
    `progress(applied, total)` is called a few times a second while it runs.
    """
    tmp = path.with_name(path.name + ".rebuild")
    _remove(tmp)
    projector = Projector(tmp)
    ticker: asyncio.Task[None] | None = None
    try:
        if progress is not None:
            target = await event_log.last_seq()
            ticker = asyncio.create_task(_report(projector, target, progress))
        applied = await catch_up(projector, event_log)
    finally:
        if ticker is not None:
            ticker.cancel()
        await projector.stop()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    os.replace(tmp, path)
    return applied
