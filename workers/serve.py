"""`mailpanel serve`, `project` and `rebuild`: process lifecycles and the data-dir lock."""

import asyncio
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec
import uvicorn

from commands.log import EventLog
from core.settings import Settings
from projections.rebuild import rebuild
from projections.runner import Projector
from workers.nats_server import EmbeddedNats

log = logging.getLogger("mailpanel")
T = TypeVar("T")


@contextmanager
def data_dir_lock(settings: Settings, what: str) -> Iterator[None]:
    """One process owns a data dir's read model at a time."""
    path = settings.data_dir / "mailpanel.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(
            f"mailpanel: {settings.data_dir} is in use by another mailpanel process; "
            f"stop it before `{what}`, or give this one its own --data-dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        yield
    finally:
        os.close(fd)


def redact(url: str) -> str:
    """A NATS URL without its credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


@contextmanager
def nats_for(settings: Settings) -> Iterator[Settings]:
    """The settings with a NATS URL: MAILPANEL_NATS_URL, or an embedded server under DIR."""
    if settings.nats_url:
        yield settings
        return
    embedded = EmbeddedNats(
        settings.data_dir / "nats", user="mailpanel", password=settings.nats_password
    )
    embedded.start()
    (settings.data_dir / "nats.url").write_text(embedded.url + "\n")  # no credentials
    try:
        yield msgspec.structs.replace(settings, nats_url=embedded.client_url)
    finally:
        embedded.stop()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: our stop event owns shutdown."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_api(settings: Settings, stop: asyncio.Event) -> None:
    from api.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(
            f"mailpanel: API listening on http://{settings.listen_host}:{settings.listen_port} "
            f"(NATS {redact(settings.nats_url)})",
            file=sys.stderr,
            flush=True,
        )
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stopper.cancel()
    if not server.started:
        raise SystemExit("mailpanel: the API could not start (is the port in use?)")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (it roughly doubles HTTP throughput)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)


def serve(settings: Settings) -> None:
    with data_dir_lock(settings, "serve"), nats_for(settings) as s:

        async def main() -> None:
            stop = asyncio.Event()
            stop_on_signals(stop)
            await run_api(s, stop)

        run(main())


def project(settings: Settings) -> None:
    """The projector alone: keeps DIR/read.db up to date until SIGTERM."""
    with data_dir_lock(settings, "project"), nats_for(settings) as s:

        async def main() -> None:
            stop = asyncio.Event()
            stop_on_signals(stop)
            event_log = await EventLog.connect(s.nats_url, s.stream, s.prefix)
            projector = Projector(s.read_db)
            await projector.start(event_log)
            print(
                f"mailpanel: projector running from {projector.applied + 1}",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
            await projector.stop()
            await event_log.close()

        run(main())


def reconcile(settings: Settings) -> None:
    """The reconcile agent alone, for a mail host: needs only NATS (MAILPANEL_NATS_URL)."""
    from workers.reconcile.agent import Agent

    with data_dir_lock(settings, "reconcile"), nats_for(settings) as s:

        async def main() -> None:
            stop = asyncio.Event()
            stop_on_signals(stop)
            event_log = await EventLog.connect(s.nats_url, s.stream, s.prefix)
            agent = Agent(s)
            try:
                await agent.start(event_log)
                print(
                    f"mailpanel: reconcile agent {agent.host!r} running (mail stack: {agent.mode})",
                    file=sys.stderr,
                    flush=True,
                )
                await stop.wait()
            finally:
                await agent.stop()
                await event_log.close()

        run(main())


def rebuild_read_model(settings: Settings) -> int:
    with data_dir_lock(settings, "rebuild"), nats_for(settings) as s:

        async def main() -> int:
            event_log = await EventLog.connect(s.nats_url, s.stream, s.prefix)
            try:
                return await rebuild(s.read_db, event_log)
            finally:
                await event_log.close()

        applied = run(main())
    print(f"mailpanel: read model rebuilt from the log ({applied} events)", file=sys.stderr)
    return applied
