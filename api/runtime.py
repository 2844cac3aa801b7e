"""What a running API process holds: the read model, its projector, the NATS connection."""

import asyncio
import contextlib
import logging

import aiosqlite

from api.access import Access, AuthStats, RateLimiter, TokenUsage
from commands.log import EventLog
from commands.sealing import Sealer
from commands.service import Commands
from core.settings import Settings
from projections.db import open_reader
from projections.runner import Projector
from workers.reconcile.agent import Agent

log = logging.getLogger("mailpanel.runtime")


class Runtime:
    """Opens SQLite at once; connects to NATS now or, if it is down, keeps trying in the
    background (reads keep working, writes answer 503 until it is back)."""

    def __init__(self, settings: Settings, host_ips: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.host_ips = host_ips or settings.host_ips
        self.event_log: EventLog | None = None
        self.reader: aiosqlite.Connection
        self.projector: Projector
        self.commands: Commands
        self._connector: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.access = Access(settings)
        self.limiter = RateLimiter(f"{settings.stream}_RATE", f"{settings.prefix}rl")
        self.usage = TokenUsage()
        self.stats = AuthStats()
        self.agent: Agent | None = Agent(settings) if settings.mailstack else None
        self._agent_start: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.projector = Projector(s.read_db)
        self.reader = await open_reader(s.read_db)
        await self.access.reload(self.reader)
        self.projector.listeners.append(self._on_applied)
        self.commands = Commands(
            self.reader,
            self.projector,
            lambda: self.event_log,
            s.prefix,
            lambda: self.host_ips,
            s.publish_wait_s,
            Sealer(s.data_key, s.data_key_id, dict(s.old_data_keys)),
        )
        if not await self._try_connect():
            self._connector = asyncio.create_task(self._keep_connecting(), name="nats-connect")

    async def _try_connect(self) -> bool:
        s = self.settings
        try:
            event_log = await EventLog.connect(s.nats_url, s.stream, s.prefix)
        except Exception as exc:
            log.warning("NATS at %s not reachable yet: %r", s.nats_url, exc)
            return False
        try:
            await self.limiter.attach(event_log.nc)
            await self.usage.attach(event_log.nc)
        except Exception as exc:  # the API works without them: local counting, local usage
            log.warning("rate-limit / token-usage buckets unavailable: %r", exc)
        self.event_log = event_log
        await self.projector.start(event_log)
        self._flusher = asyncio.create_task(self._flush_usage(), name="token-usage")
        if self.agent is not None:  # in the background: the API is ready before the mail stack
            self._agent_start = asyncio.create_task(self._start_agent(event_log), name="agent")
        return True

    async def _start_agent(self, event_log: EventLog) -> None:
        assert self.agent is not None
        try:
            await self.agent.start(event_log)
        except Exception:
            log.exception("the reconcile agent did not start")

    async def _on_applied(self, tags: set[str]) -> None:
        if any(t.startswith(("token.", "security.")) for t in tags):
            await self.access.reload(self.reader)

    async def _flush_usage(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            await self.usage.flush()

    async def _keep_connecting(self) -> None:
        while not await self._try_connect():
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._agent_start is not None:
            with contextlib.suppress(Exception):
                await self._agent_start
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.stop()
        for task in (self._connector, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.usage.flush()
        await self.projector.stop()
        if self.event_log is not None:
            await self.event_log.close()
        await self.reader.close()
