"""The event log on NATS JetStream: one stream, per-aggregate subjects, optimistic concurrency
through Nats-Expected-Last-Subject-Sequence and idempotency through Nats-Msg-Id."""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    Header,
    StorageType,
    StreamConfig,
)

from core.events import Envelope, encode
from core.subjects import PREFIX, STREAM

log = logging.getLogger("mailpanel.log")

WRONG_LAST_SEQUENCE = 10071
DUPLICATE_WINDOW_S = 24 * 3600.0
PUBLISH_TIMEOUT_S = 3.0
_WRONG_SEQ = re.compile(r"wrong last sequence: (\d+)")


class Unavailable(Exception):
    """NATS or the stream cannot be reached; nothing was (knowingly) written."""


class WrongSequence(Exception):
    """A concurrent writer appended to the subject first."""

    def __init__(self, actual: int) -> None:
        super().__init__(f"wrong last sequence: {actual}")
        self.actual = actual


def stream_config(stream: str = STREAM, prefix: str = PREFIX, replicas: int = 1) -> StreamConfig:
    """Append-only: no deletes, no purges, no limits; a 24 h window for idempotency keys."""
    return StreamConfig(
        name=stream,
        subjects=[f"{prefix}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


class EventLog:
    """Appends envelopes and reads them back; the only place that talks JetStream."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, prefix: str) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.prefix = prefix

    @classmethod
    async def connect(
        cls,
        url: str,
        stream: str = STREAM,
        prefix: str = PREFIX,
        replicas: int = 1,
        name: str = "mailpanel",
        connect_timeout: float = 2.0,
    ) -> "EventLog":
        async def _error(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        closing: list[Client] = []

        async def _disconnected() -> None:
            if not any(c.is_closed or c.is_draining for c in closing):
                log.warning("nats: disconnected from %s; reconnecting", url)

        async def _reconnected() -> None:
            log.warning("nats: reconnected to %s", url)

        # nats-py retries even the first connect forever with unlimited reconnects: bound it.
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_error,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
            ),
            connect_timeout + 1.0,
        )
        closing.append(nc)
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        event_log = cls(nc, js, stream, prefix)
        await event_log.ensure_stream(replicas)
        return event_log

    async def ensure_stream(self, replicas: int = 1) -> None:
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(stream_config(self.stream, self.prefix, replicas))

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:  # pragma: no cover - best effort on shutdown
                await self.nc.close()

    async def append(
        self, subject: str, env: Envelope, expected: int, msg_id: str
    ) -> tuple[int, bool]:
        """Append one envelope if the subject is still at `expected`: (its sequence, False).

        A retry with the same msg_id is answered (first write's sequence, True), also when the
        expected sequence has gone stale meanwhile (JetStream answers 10071 then).
        """
        headers = {
            Header.MSG_ID.value: msg_id,
            Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected),
        }
        try:
            ack = await self.js.publish(subject, encode(env), headers=headers)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            last = await self._last_on(subject)
            if last is not None and last[1] == msg_id:
                return last[0], True
            match = _WRONG_SEQ.search(exc.description or "")
            actual = int(match.group(1)) if match else (last[0] if last else 0)
            raise WrongSequence(actual) from None
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
            TimeoutError,
        ) as exc:
            raise Unavailable(f"event log unavailable: {type(exc).__name__}") from exc
        return int(ack.seq), bool(ack.duplicate)

    async def _last_on(self, subject: str) -> tuple[int, str] | None:
        try:
            msg = await self.js.get_last_msg(self.stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise Unavailable("event log unavailable: timeout") from exc
        headers: dict[str, str] = msg.headers or {}
        return int(msg.seq or 0), headers.get(Header.MSG_ID.value, "")

    async def last_seq_on(self, subject: str) -> int:
        """The sequence of the last message on `subject` (0: none yet)."""
        last = await self._last_on(subject)
        return 0 if last is None else last[0]

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def subscribe(self, start_seq: int, on_msg: Callable[[Msg], Awaitable[None]]) -> Any:
        """An ordered push consumer from start_seq: in order, gap-free, re-created on failure."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq)
        )
        return await self.js.subscribe(
            f"{self.prefix}.>",
            stream=self.stream,
            cb=on_msg,
            ordered_consumer=True,
            config=config,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
