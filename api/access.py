"""Access control state of one API process: managed tokens and security settings (refreshed
from the read model whenever the projector applies a change to them), shared per-IP rate
limits, token last-use times, and counters of refused calls."""

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import msgspec
from nats.aio.client import Client

from core.events import SecuritySettingsChanged
from core.security import SecuritySettings, from_event, normalise_networks
from core.settings import Settings

log = logging.getLogger("mailpanel.access")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LIVE_TOKENS = (
    "SELECT id, name, scope, domains, secret_sha256, expires_at FROM tokens "
    "WHERE revoked_at IS NULL"
)
SECURITY_ROW = "SELECT data FROM security_settings WHERE id = 1"


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    scope: str
    domains: tuple[str, ...]
    expires_at: datetime | None


def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def ip_in(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


class Access:
    """Tokens by SHA-256 of their secret, and the security settings in force."""

    def __init__(self, settings: Settings) -> None:
        self.defaults = SecuritySettings(
            rate_limit_login=settings.rate_limit_login,
            rate_limit_api=settings.rate_limit_api,
            trusted_proxies=normalise_networks(settings.trusted_proxies, "trusted_proxies"),
        )
        self.tokens: dict[str, TokenInfo] = {}
        self.security = self.defaults
        self._apply_networks()

    def _apply_networks(self) -> None:
        self.login_nets = _networks(self.security.login_allowlist)
        self.api_key_nets = _networks(self.security.api_key_allowlist)
        self.proxy_nets = _networks(self.security.trusted_proxies)

    async def reload(self, db: aiosqlite.Connection) -> None:
        tokens: dict[str, TokenInfo] = {}
        for row in await db.execute_fetchall(LIVE_TOKENS):
            expires = row[5]
            tokens[str(row[4])] = TokenInfo(
                id=int(row[0]),
                name=str(row[1]),
                scope=str(row[2]),
                domains=tuple(json.loads(row[3])),
                expires_at=None if expires is None else _parse_time(str(expires)),
            )
        self.tokens = tokens
        rows = list(await db.execute_fetchall(SECURITY_ROW))
        if rows:
            event = msgspec.json.decode(str(rows[0][0]).encode(), type=SecuritySettingsChanged)
            self.security = from_event(event)
        self._apply_networks()

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The socket peer, unless it is a trusted proxy: then the right-most X-Forwarded-For
        address that is not itself a trusted proxy."""
        if not forwarded_for or not self.proxy_nets or not ip_in(peer, self.proxy_nets):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if not ip_in(hop, self.proxy_nets):
                return hop
        return peer


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.limit <= 0:
            return []
        out = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_s).encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(max(1, self.reset_s)).encode()))
        return out


class _Window:
    __slots__ = ("exhausted", "global_count", "limit", "lock", "unspent")

    def __init__(self) -> None:
        self.limit = 0
        self.global_count = 0  # the shared counter as last seen (includes our unspent claim)
        self.unspent = 0
        self.exhausted = False
        self.lock = asyncio.Lock()


class RateLimiter:
    """Fixed one-minute windows per (kind, source IP), counted in a JetStream counter stream
    (atomic `Nats-Incr`) shared by every API process.

    Each process claims a slice of the limit at a time (1/20 of it, at least 1) and spends it
    locally, so a busy IP costs one NATS round trip per slice, not per request. The sum of
    claims never exceeds the limit, so the limit holds across processes; a slice a process
    claimed but did not use is lost to the others until the window ends (it errs on refusing).
    Without NATS it counts locally, per process.
    """

    def __init__(self, stream: str, subject_prefix: str) -> None:
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.nc: Client | None = None
        self._windows: dict[tuple[str, str, int], _Window] = {}
        self._window = 0

    async def attach(self, nc: Client) -> None:
        config = {
            "name": self.stream,
            "subjects": [f"{self.subject_prefix}.>"],
            "storage": "memory",
            "allow_msg_counter": True,
            "allow_direct": True,
            "max_age": 180 * 10**9,
            "max_msgs_per_subject": 1,
        }
        info = await nc.request(f"$JS.API.STREAM.INFO.{self.stream}", b"", timeout=2)
        if b'"error"' in info.data:
            reply = await nc.request(
                f"$JS.API.STREAM.CREATE.{self.stream}", json.dumps(config).encode(), timeout=2
            )
            if b'"error"' in reply.data and b"already in use" not in reply.data:
                raise RuntimeError(f"rate-limit stream: {reply.data[:200]!r}")
        self.nc = nc

    async def _incr(self, subject: str, amount: int) -> int | None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return None
        try:
            reply = await nc.request(subject, b"", headers={"Nats-Incr": f"{amount:+d}"}, timeout=1)
            return int(json.loads(reply.data)["val"])
        except Exception as exc:  # NATS trouble must not take the API down: count locally
            log.warning("rate limiter: shared counter unavailable (%r); counting locally", exc)
            return None

    async def hit(self, kind: str, ip: str, limit: int) -> Decision:
        if limit <= 0:
            return Decision(True, 0, 0, 0)
        now = time.time()
        window = int(now // 60)
        reset_s = math.ceil((window + 1) * 60 - now)
        key = (kind, ip, window)
        if window != self._window:  # a new minute: forget the old windows
            self._windows.clear()
            self._window = window
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        if w.limit != limit or (w.unspent == 0 and not w.exhausted):
            async with w.lock:
                if w.limit != limit:  # the limit changed: give back what we hold, then reclaim
                    await self._give_back(w, kind, ip, window)
                    w.limit = limit
                if w.unspent == 0 and not w.exhausted:
                    await self._claim(w, kind, ip, window, limit)
        if w.unspent > 0:
            w.unspent -= 1
            remaining = max(0, limit - w.global_count + w.unspent)
            return Decision(True, limit, remaining, reset_s)
        return Decision(False, limit, 0, reset_s)

    def _subject(self, kind: str, ip: str, window: int) -> str:
        token = ip.replace(".", "_").replace(":", "-").replace("*", "_").replace(">", "_")
        return f"{self.subject_prefix}.{kind}.{token or '_'}.{window}"

    async def _give_back(self, w: _Window, kind: str, ip: str, window: int) -> None:
        if w.unspent > 0:
            value = await self._incr(self._subject(kind, ip, window), -w.unspent)
            w.global_count = value if value is not None else w.global_count - w.unspent
        w.unspent = 0
        w.exhausted = False

    async def _claim(self, w: _Window, kind: str, ip: str, window: int, limit: int) -> None:
        chunk = max(1, limit // 20)
        value = await self._incr(self._subject(kind, ip, window), chunk)
        if value is None:  # local fallback: this process alone counts the whole limit
            value = w.global_count + chunk
        usable = max(0, min(chunk, limit - (value - chunk)))
        w.global_count = value
        w.unspent = usable
        w.exhausted = value >= limit and usable == 0


class TokenUsage:
    """Last use of each token: kept in memory, written to a JetStream KV bucket at most every
    few seconds (every API process sees every other's), never an event per request."""

    BUCKET = "MP_TOKEN_USAGE"

    def __init__(self) -> None:
        self.local: dict[int, float] = {}
        self._dirty: set[int] = set()
        self.kv: Any = None

    async def attach(self, nc: Client) -> None:
        js = nc.jetstream()
        try:
            self.kv = await js.key_value(self.BUCKET)
        except Exception:
            self.kv = await js.create_key_value(bucket=self.BUCKET, history=1)

    def touch(self, token_id: int) -> None:
        self.local[token_id] = time.time()
        self._dirty.add(token_id)

    async def flush(self) -> None:
        if self.kv is None or not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        for token_id in dirty:
            with contextlib.suppress(Exception):
                await self.kv.put(str(token_id), str(self.local[token_id]).encode())

    async def last_used(self, token_id: int) -> float | None:
        seen = self.local.get(token_id)
        if self.kv is not None:
            with contextlib.suppress(Exception):
                entry = await self.kv.get(str(token_id))
                if entry is not None and entry.value:
                    shared = float(entry.value.decode())
                    seen = shared if seen is None else max(seen, shared)
        return seen


class AuthStats:
    """Refused calls since this process started, in total and per source IP."""

    KINDS = ("failed_logins", "refused_keys", "refused_tokens", "rate_limited", "ip_restricted")

    def __init__(self) -> None:
        self.since = datetime.now(UTC)
        self.totals: Counter[str] = Counter()
        self.by_ip: dict[str, Counter[str]] = {}

    def count(self, kind: str, ip: str) -> None:
        self.totals[kind] += 1
        if ip not in self.by_ip and len(self.by_ip) >= 1000:
            return
        self.by_ip.setdefault(ip, Counter())[kind] += 1
