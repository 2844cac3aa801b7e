"""`mailpanel export`, `import`, `verify` and `rebuild` (with progress): one-shot commands on the
log, reaching NATS the way `mailpanel rebuild` does.

With MAILPANEL_NATS_URL they use that NATS. Without it they start the data dir's embedded
nats-server under the data-dir lock, as `rebuild` does. `export` and `verify` only read, so
when a `mailpanel serve` (or `project`) of the same data dir holds the lock, they use the
nats-server it embedded (DIR/nats.url, with the NATS_PASSWORD of config.env) instead of
refusing: a backup does not need a stop. `import` and `rebuild` always take the lock.
"""

import fcntl
import os
import sys
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar
from urllib.parse import quote

import msgspec
import nats.errors
import nats.js.errors

from commands.log import EventLog, Unavailable
from core.settings import Settings
from projections.rebuild import rebuild
from workers.export import LogImportError, export, import_, parse_until, verify
from workers.serve import data_dir_lock, nats_for, redact, run

T = TypeVar("T")
EMBEDDED_USER = "mailpanel"  # the user workers.serve.nats_for gives the embedded server
FAILURES = (
    Unavailable,
    LogImportError,
    OSError,
    TimeoutError,
    nats.errors.Error,
    nats.js.errors.Error,
)


class Progress:
    """`\\r12,345 / 100,000 events (8,200 ev/s)` on stderr while it runs, if stderr is a
    terminal; `summary` prints the final line in any case."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.ended: float | None = None
        self.shown = 0.0
        self.width = 0

    def restart(self) -> None:
        """The clock starts now (once connected, not while the nats-server starts)."""
        self.started = time.monotonic()

    def stop(self) -> None:
        """The clock stops now (the summary's time and rate end here)."""
        self.ended = time.monotonic()

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def rate(self, done: int) -> float:
        elapsed = self.elapsed()
        return done / elapsed if elapsed > 0 else 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.shown < self.interval and done < total:
            return
        self.shown = now
        text = f"{done:,} / {total:,} events ({self.rate(done):,.0f} ev/s)"
        self.width = max(self.width, len(text))
        self.stream.write(f"\r{text:<{self.width}}")
        self.stream.flush()

    def summary(self, text: str, done: int) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
        self.stream.write(
            f"mailpanel: {text} in {self.elapsed():.2f} s ({self.rate(done):,.0f} events/s)\n"
        )
        self.stream.flush()


def _lock_is_free(settings: Settings) -> bool:
    path = settings.data_dir / "mailpanel.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock if we got it
    return True


def _running_embedded(settings: Settings) -> str:
    """The client URL of the nats-server a running mailpanel process embedded in DIR."""
    try:
        url = (settings.data_dir / "nats.url").read_text().strip()
    except OSError:
        url = ""
    scheme, sep, hostport = url.partition("://")
    if not sep or not hostport:
        raise SystemExit(
            f"mailpanel: {settings.data_dir} is in use by another mailpanel process that runs "
            "no embedded nats-server there; set MAILPANEL_NATS_URL to the NATS it uses"
        )
    user, password = quote(EMBEDDED_USER), quote(settings.nats_password)
    return f"{scheme}://{user}:{password}@{hostport}"


@contextmanager
def log_nats(settings: Settings, what: str, read_only: bool) -> Iterator[Settings]:
    """The settings with a NATS URL for a one-shot command (see the module docstring)."""
    if settings.nats_url:
        if read_only:
            yield settings
        else:
            with data_dir_lock(settings, what):
                yield settings
        return
    if read_only and not _lock_is_free(settings):
        yield msgspec.structs.replace(settings, nats_url=_running_embedded(settings))
        return
    with data_dir_lock(settings, what), nats_for(settings) as s:
        yield s


def _run(settings: Settings, what: str, main: Coroutine[Any, Any, T]) -> T:
    try:
        return run(main)
    except FAILURES as exc:
        detail = str(exc) or type(exc).__name__
        raise SystemExit(
            f"mailpanel: {what} failed (NATS {redact(settings.nats_url)}): {detail}"
        ) from None


async def _connect(s: Settings, name: str) -> EventLog:
    return await EventLog.connect(s.nats_url, s.stream, s.prefix, name=name)


def _open_out(path: Path) -> BinaryIO:
    """Owner-only: the log holds password and token hashes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb", buffering=1024 * 1024)


def export_command(settings: Settings, out: str) -> int:
    """`mailpanel export --out FILE` ("-": stdout); the file appears only once complete."""
    progress = Progress()
    with log_nats(settings, "export", read_only=True) as s:

        async def main(f: BinaryIO) -> int:
            event_log = await _connect(s, "mailpanel-export")
            progress.restart()
            try:
                return await export(event_log, f, progress)
            finally:
                await event_log.close()

        if out == "-":
            count = _run(s, "export", main(sys.stdout.buffer))
            where = "stdout"
        else:
            final = Path(out)
            partial = final.with_name(final.name + ".partial")
            try:
                with _open_out(partial) as f:
                    count = _run(s, "export", main(f))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial, final)
            finally:
                partial.unlink(missing_ok=True)
            where = str(final)
    progress.summary(f"exported {count:,} events to {where}", count)
    return count


def import_command(settings: Settings, inp: str, until: str | None) -> int:
    """`mailpanel import --in FILE [--until SEQ|TIME]` into an empty stream; then rebuilds
    DIR/read.db if there is one (it was built from another log)."""
    try:
        limit = parse_until(until) if until else None
    except ValueError as exc:
        raise SystemExit(f"mailpanel: --until: {exc}") from None
    progress = Progress()
    rebuilt = -1
    with log_nats(settings, "import", read_only=False) as s:

        async def main(f: BinaryIO) -> tuple[int, int]:
            event_log = await _connect(s, "mailpanel-import")
            progress.restart()
            try:
                count = await import_(event_log, f, limit, progress)
                progress.stop()
                again = -1
                if s.read_db.exists():
                    again = await rebuild(s.read_db, event_log)
                return count, again
            finally:
                await event_log.close()

        if inp == "-":
            count, rebuilt = _run(s, "import", main(sys.stdin.buffer))
        else:
            try:
                f = open(inp, "rb", buffering=1024 * 1024)
            except OSError as exc:
                raise SystemExit(f"mailpanel: import: {exc}") from None
            with f:
                count, rebuilt = _run(s, "import", main(f))
    upto = f" (until {until})" if until else ""
    progress.summary(f"imported {count:,} events into stream {settings.stream}{upto}", count)
    if rebuilt >= 0:
        print(
            f"mailpanel: read model {settings.read_db} rebuilt from the imported log",
            file=sys.stderr,
        )
    return count


def verify_command(settings: Settings) -> bool:
    """`mailpanel verify`: prints the report; True when the log is sound."""
    progress = Progress()
    with log_nats(settings, "verify", read_only=True) as s:

        async def main() -> Any:
            event_log = await _connect(s, "mailpanel-verify")
            progress.restart()
            try:
                return await verify(event_log, progress)
            finally:
                await event_log.close()

        report = _run(s, "verify", main())
    progress.summary(f"verified {report.messages:,} events", report.messages)
    print(f"mailpanel: verify: {report}")
    if report.ok and report.types:
        counts = ", ".join(f"{name} {n:,}" for name, n in sorted(report.types.items()))
        print(f"mailpanel: events by type: {counts}")
    return bool(report.ok)


def rebuild_command(settings: Settings) -> int:
    """`mailpanel rebuild`, as workers.serve.rebuild_read_model, with progress and a rate."""
    progress = Progress()
    with data_dir_lock(settings, "rebuild"), nats_for(settings) as s:

        async def main() -> int:
            event_log = await _connect(s, "mailpanel")
            progress.restart()
            try:
                return await rebuild(s.read_db, event_log, progress)
            finally:
                await event_log.close()

        applied = run(main())
    progress.summary(f"read model rebuilt from the log ({applied:,} events)", applied)
    return applied
