"""`mailpanel rebuild`: replay the whole log into a fresh read model, then swap it in."""

import os
from pathlib import Path

from commands.log import EventLog
from projections.runner import Projector, catch_up


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


async def rebuild(path: Path, event_log: EventLog) -> int:
    """Replay from sequence 1 into `path`.rebuild, then atomically replace `path`.

    The caller holds the data dir's lock, so no projector writes `path` meanwhile.
    """
    tmp = path.with_name(path.name + ".rebuild")
    _remove(tmp)
    projector = Projector(tmp)
    try:
        applied = await catch_up(projector, event_log)
    finally:
        await projector.stop()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    os.replace(tmp, path)
    return applied
