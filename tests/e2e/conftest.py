"""Process-level fixtures: real `mailpanel` processes, a real nats-server, real SQLite files.

Every process a test starts goes through the `procs` fixture, whose teardown stops it (SIGTERM,
then SIGKILL) and also any nats-server a `mailpanel serve` of ours left under the test's tmp dir.
Every wait is bounded; nothing asserts on wall-clock durations.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from commands.log import EventLog
from core.events import DomainCreated, Envelope, Meta, encode
from core.subjects import domain_subject
from projections.appliers import CHECKPOINT
from projections.db import dump
from tests.conftest import ADMIN_PASSWORD, API_KEY
from workers.nats_server import free_port

HOST_IP = "192.0.2.10"
AUTH = {"X-API-Key": API_KEY}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def mailpanel_binary() -> str:
    beside = Path(sys.executable).parent / "mailpanel"
    if beside.exists():
        return str(beside)
    found = shutil.which("mailpanel")
    if not found:  # pragma: no cover
        pytest.fail("the `mailpanel` console script is not installed")
    return found


def base_env(nats_url: str | None) -> dict[str, str]:
    """A clean environment: no MAILPANEL_* from the caller, fixed secrets, one host IP, and
    no rate limits (these tests send far more than 60 calls a minute from 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPANEL_")}
    env.update(
        MAILPANEL_API_KEY=API_KEY,
        MAILPANEL_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MAILPANEL_HOST_IPS=HOST_IP,
        MAILPANEL_RATE_LIMIT_API="0",
        MAILPANEL_MAILSTACK="off",
        # Processes of one deployment share their secrets (README: several API processes).
        MAILPANEL_JWT_SECRET="e2e-jwt-secret-0123456789abcdef",
        MAILPANEL_DATA_KEY="ZTJlLWRhdGEta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTI=",
        MAILPANEL_RATE_LIMIT_LOGIN="0",
    )
    if nats_url:
        env["MAILPANEL_NATS_URL"] = nats_url
    return env


@dataclass
class Proc:
    """One child process with its output in a log file (never a pipe that could fill up)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Proc":
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout} s\n{self.log_tail()}")

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit code."""
        self.send(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGKILL and reap."""
        self.send(signal.SIGKILL)
        return self.wait(timeout)

    def cleanup(self) -> None:
        """Teardown: never leave it running, whatever the test did."""
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_S)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return f"--- {self.log_path} ---\n{self.log_path.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"(no log at {self.log_path})"


@dataclass
class Server(Proc):
    """A `mailpanel serve` process and its API address."""

    data_dir: Path = Path()
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll GET /health until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    pytest.fail(
                        f"{self.name} exited ({self.popen and self.popen.returncode})\n"
                        f"{self.log_tail()}"
                    )
                try:
                    response = await client.get("/health")
                except httpx.HTTPError as exc:
                    last = repr(exc)
                else:
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                    last = f"{response.status_code} {response.text}"
                await asyncio.sleep(0.05)
        pytest.fail(f"{self.name} not healthy within {timeout} s: {last}\n{self.log_tail()}")


@dataclass
class Procs:
    """Starts `mailpanel` processes for one test and stops all of them at teardown."""

    root: Path
    started: list[Proc] = field(default_factory=list)
    _count: int = 0

    def _log(self, name: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:02d}-{name}.log"

    def serve(
        self,
        data_dir: Path,
        nats_url: str | None,
        name: str = "serve",
        env: dict[str, str] | None = None,
    ) -> Server:
        port = free_port()
        server = Server(
            name=name,
            argv=[
                mailpanel_binary(),
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            env={**base_env(nats_url), **(env or {})},
            log_path=self._log(name),
            data_dir=data_dir,
            port=port,
        )
        self.started.append(server)
        server.start()
        return server

    def project(self, data_dir: Path, nats_url: str, name: str = "project") -> Proc:
        proc = Proc(
            name=name,
            argv=[mailpanel_binary(), "project", "--data-dir", str(data_dir)],
            env=base_env(nats_url),
            log_path=self._log(name),
        )
        self.started.append(proc)
        return proc.start()

    def rebuild(self, data_dir: Path, nats_url: str, timeout: float = 120.0) -> None:
        """Run `mailpanel rebuild` to completion; fail with its log unless it exits 0."""
        proc = Proc(
            name="rebuild",
            argv=[mailpanel_binary(), "rebuild", "--data-dir", str(data_dir)],
            env=base_env(nats_url),
            log_path=self._log("rebuild"),
        )
        self.started.append(proc)
        proc.start()
        code = proc.wait(timeout)
        assert code == 0, proc.log_tail()

    def cleanup(self) -> None:
        for proc in self.started:  # all at once: their graceful shutdowns overlap
            proc.send(signal.SIGTERM)
        for proc in reversed(self.started):
            proc.cleanup()
        # A nats-server embedded by one of our `serve` processes (found by our tmp dir in its
        # command line) must not outlive the test either.
        for pid in nats_servers_under(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Request it after `nats_server`, so that teardown stops our processes before it."""
    launcher = Procs(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


# ---- /proc ------------------------------------------------------------------------------


def nats_servers_under(path: Path) -> list[int]:
    """Live (not zombie) nats-server processes whose command line mentions `path`."""
    needle = str(path).encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"nats-server"):
            continue
        state = stat.rpartition(")")[2].split()[0]
        if state in ("Z", "X"):
            continue
        if any(needle in arg for arg in argv):
            found.append(int(entry.name))
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting until {what}")


# ---- SQLite -----------------------------------------------------------------------------


def read_checkpoint(db_path: Path) -> int:
    """The projector's checkpoint in a read.db another process may be writing (0 if none)."""
    if not db_path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as db:
            row = db.execute("SELECT seq FROM checkpoint WHERE name = ?", (CHECKPOINT,)).fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    return int(row[0]) if row else 0


def dump_db(db_path: Path) -> dict[str, list[tuple[object, ...]]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return dump(db)


# ---- the log ----------------------------------------------------------------------------


async def publish_domains(nats_url: str, count: int, prefix: str = "bulk") -> int:
    """Append `count` DomainCreated events (distinct names and subjects) straight to the
    stream; returns the stream's last sequence once all of them are stored."""
    event_log = await EventLog.connect(nats_url)
    try:
        before = await event_log.last_seq()
        meta = Meta(actor="e2e", at=datetime.now(UTC))
        for i in range(count):
            name = f"{prefix}{i}.example"
            data = encode(Envelope(meta=meta, event=DomainCreated(name=name)))
            await event_log.nc.publish(domain_subject(name), data)
        await event_log.nc.flush()
        target = before + count
        deadline = time.monotonic() + 30
        while (last := await event_log.last_seq()) < target:
            if time.monotonic() > deadline:
                pytest.fail(f"stream holds {last} events, expected {target}")
            await asyncio.sleep(0.01)
        assert last == target
        return last
    finally:
        await event_log.close()


async def stream_last_seq(nats_url: str) -> int:
    event_log = await EventLog.connect(nats_url)
    try:
        return await event_log.last_seq()
    finally:
        await event_log.close()


# ---- HTTP -------------------------------------------------------------------------------


def api(server: Server, timeout: float = 30.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        headers=AUTH,
        timeout=timeout,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
    )


async def list_all(client: httpx.AsyncClient, what: str = "domains") -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/{what}", params={"limit": 500})
    assert response.status_code == 200, response.text
    body = response.json()
    rows: list[dict[str, Any]] = body["data"]
    assert body["meta"]["total"] == len(rows), "more than one page; raise the limit"
    return rows
