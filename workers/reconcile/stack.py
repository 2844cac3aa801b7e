"""A sandbox mail stack (Postfix, Dovecot, optionally OpenDKIM) run from one Layout's root.

Rules (each from something that went wrong, see mailstack.md):
- The root and every parent must be traversable by the postfix, dovecot and vmail users
  (pytest's tmp dirs are 0700): start() refuses such a root instead of failing obscurely.
- Dovecot starts first, so Postfix never defers a first message for a missing LMTP socket;
  OpenDKIM before Postfix, so no message passes unsigned while the milter is still starting.
- Daemons run in the foreground in their own session and are owned by this object: Postfix
  `master -d` with MAIL_CONFIG (daemons ignore -c; `postfix start-fg` leaves master behind),
  `dovecot -F -c FILE`, `opendkim -f -x FILE`. `postfix check` runs first because a bare
  master does not create the queue directories.
- Postfix commands print errors only to a terminal, so they run under a pty here.
- Stop is by PID; a process counts as gone once it is a zombie (PID 1 reaps orphans late).
"""

import contextlib
import os
import pty
import pwd
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

import msgspec

from workers.reconcile.layout import MAIN_CF, MAX_BASE_DIR, Layout
from workers.reconcile.maildirs import ensure_mail_root
from workers.reconcile.validate import which

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
OPENDKIM_GRACE_S = 0.5
DAEMONS = ("dovecot", "opendkim", "postfix")  # start order; stop is the reverse


class StackError(RuntimeError):
    pass


class DaemonStatus(msgspec.Struct, kw_only=True):
    installed: bool
    running: bool
    pid: int | None = None


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) from /proc/PID/stat; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def alive(pid: int) -> bool:
    """kill -0 succeeds on zombies; a zombie has exited for our purposes."""
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def session_members(sid: int) -> list[int]:
    """Live processes in session `sid` (the daemon and everything it spawned)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state = proc_state(int(entry))
            if state is not None and state[1] == sid and state[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def run_tty(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str]:
    """Run with stdout/stderr on a pty (Postfix commands are silent without a terminal)."""
    master_fd, slave_fd = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=slave_fd, stderr=slave_fd, env=env
        )
    finally:
        os.close(slave_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master_fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master_fd, 65536)
                except OSError:  # EIO: every writer has closed the pty
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    finally:
        os.close(master_fd)
    return rc, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").strip()


def _banner(host: str, port: int, prefix: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(256).startswith(prefix)
    except OSError:
        return False


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _ids(name: str) -> tuple[int, int]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class MailStack:
    """Start, reload, stop and inspect the daemons of one Layout. Use as a context manager
    so the daemons are stopped whatever happens."""

    def __init__(self, layout: Layout, opendkim: bool | None = None) -> None:
        self.layout = layout
        self.with_opendkim = layout.dkim if opendkim is None else opendkim
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- paths -------------------------------------------------------------------------

    def binaries(self) -> dict[str, str | None]:
        return {
            "postfix": which("postfix"),
            "dovecot": which("dovecot"),
            "opendkim": which("opendkim"),
            "doveadm": which("doveadm"),
        }

    def _master_binary(self) -> str:
        postconf = which("postconf") or "postconf"
        out = subprocess.run(
            [postconf, "-c", str(self.layout.postfix_dir), "-h", "daemon_directory"],
            capture_output=True,
            text=True,
            check=False,
        )
        directory = out.stdout.strip() or "/usr/lib/postfix/sbin"
        return str(Path(directory) / "master")

    def pid_file(self, daemon: str) -> Path:
        return {
            "postfix": self.layout.master_pid,
            "dovecot": self.layout.dovecot_pid,
            "opendkim": self.layout.opendkim_pid,
        }[daemon]

    # ---- directories -------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the instance's directories with the owners and modes each daemon needs."""
        lay = self.layout
        lay.root.mkdir(parents=True, exist_ok=True)
        os.chmod(lay.root, 0o755)
        for parent in [lay.root, *lay.root.parents]:
            if not stat.S_IMODE(parent.stat().st_mode) & 0o001:
                raise StackError(
                    f"{parent} is not traversable by other users (mode "
                    f"{stat.S_IMODE(parent.stat().st_mode):04o}): postfix, dovecot and vmail "
                    "cannot reach the root. Use a root such as /tmp/mailpanel-<random> (0755)."
                )
        for directory in (lay.dovecot_base_dir, lay.queue_dir):
            if len(str(directory)) > MAX_BASE_DIR:
                raise StackError(f"{directory} is too long a path for the unix sockets in it")
        plain = [
            lay.postfix_dir,
            lay.dovecot_dir,
            lay.opendkim_dir,
            lay.queue_dir,
            lay.log_dir,
            lay.root / "run",
            lay.root / "state",
            lay.dovecot_state_dir,
        ]
        for directory in plain:
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o755)
        lay.data_dir.mkdir(exist_ok=True)
        self._own(lay.data_dir, "postfix", 0o700)
        lay.keys_dir.mkdir(parents=True, exist_ok=True)
        self._own(lay.keys_dir, "opendkim", 0o750)
        lay.opendkim_run_dir.mkdir(parents=True, exist_ok=True)
        self._own(lay.opendkim_run_dir, "opendkim", 0o755)
        ensure_mail_root(lay.mail_root, lay.vmail_uid, lay.vmail_gid)

    @staticmethod
    def _own(path: Path, user: str, mode: int) -> None:
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.chown(path, *_ids(user))
        os.chmod(path, mode)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Dovecot, OpenDKIM (if wanted and installed), then Postfix; each one is up (its
        port answers) before the next starts. On failure, whatever started is stopped."""
        bins = self.binaries()
        missing = [name for name in ("postfix", "dovecot") if bins[name] is None]
        if missing:
            raise StackError(f"not installed: {', '.join(missing)}")
        if not self.layout.live(MAIN_CF).exists() or not self.layout.dovecot_conf.exists():
            raise StackError("no rendered config under the root: apply() one first")
        running = [name for name in DAEMONS if self._pid(name) is not None]
        if running:
            raise StackError(f"already running for this root: {', '.join(running)}")
        self.prepare()
        try:
            self._postfix_check(bins["postfix"] or "postfix")
            self._start_dovecot(bins["dovecot"] or "dovecot", timeout)
            if self.with_opendkim and bins["opendkim"] is not None:
                self._start_opendkim(bins["opendkim"], timeout)
            self._start_postfix(timeout)
        except BaseException:
            self.stop()
            raise

    def _postfix_check(self, postfix: str) -> None:
        rc, out = run_tty([postfix, "-c", str(self.layout.postfix_dir), "check"])
        if rc != 0:
            raise StackError(
                f"postfix check failed (rc {rc}): {out}\n{_tail(self.layout.postfix_log)}"
            )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.layout.log_dir / f"{name}.console", "ab") as console:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                env=env,
                start_new_session=True,
            )

    def _await(self, name: str, ready: Callable[[], bool], timeout: float, log: Path) -> None:
        proc = self.procs[name]
        if not wait_until(lambda: ready() or proc.poll() is not None, timeout):
            raise StackError(f"{name} did not come up in {timeout:.0f} s:\n{_tail(log)}")
        if proc.poll() is not None:
            raise StackError(
                f"{name} exited with rc {proc.returncode}:\n{_tail(log)}\n"
                f"{_tail(self.layout.log_dir / f'{name}.console')}"
            )

    def _start_dovecot(self, dovecot: str, timeout: float) -> None:
        lay = self.layout
        self._spawn("dovecot", [dovecot, "-F", "-c", str(lay.dovecot_conf)])
        self._await(
            "dovecot",
            lambda: (
                lay.lmtp_socket.exists()
                and lay.auth_socket.exists()
                and _banner(lay.listen, lay.imap_port, b"* OK")
                and _banner(lay.listen, lay.pop3_port, b"+OK")
            ),
            timeout,
            lay.dovecot_log,
        )

    def _start_postfix(self, timeout: float) -> None:
        lay = self.layout
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "MAIL_CONFIG": str(lay.postfix_dir),
        }
        self._spawn("postfix", [self._master_binary(), "-d"], env=env)
        self._await(
            "postfix",
            lambda: (
                _banner(lay.listen, lay.smtp_port, b"220")
                and _banner(lay.listen, lay.submission_port, b"220")
            ),
            timeout,
            lay.postfix_log,
        )

    def _start_opendkim(self, opendkim: str, timeout: float) -> None:
        lay = self.layout
        self._spawn("opendkim", [opendkim, "-f", "-x", str(lay.opendkim_conf)])
        self._await(
            "opendkim",
            lambda: _listening("127.0.0.1", lay.milter_port),
            timeout,
            lay.log_dir / "opendkim.console",
        )

    def reload(self, daemons: Iterable[str]) -> dict[str, str]:
        """Reload the named daemons that run: "reloaded", "not running" or "failed: ...".
        Postfix must be reloaded after every map change (texthash is read at process start)."""
        lay = self.layout
        bins = self.binaries()
        results: dict[str, str] = {}
        for daemon in sorted(set(daemons)):
            pid = self._pid(daemon)
            if pid is None:
                results[daemon] = "not running"
                continue
            if daemon == "postfix":
                rc, out = run_tty(
                    [bins["postfix"] or "postfix", "-c", str(lay.postfix_dir), "reload"]
                )
            elif daemon == "dovecot":
                # doveadm parses the config first and keeps the old one when it is broken.
                rc, out = run_tty(
                    [bins["doveadm"] or "doveadm", "-c", str(lay.dovecot_conf), "reload"]
                )
            elif daemon == "opendkim":
                os.kill(pid, signal.SIGUSR1)  # re-reads KeyTable and SigningTable
                rc, out = 0, ""
            else:
                results[daemon] = "failed: unknown daemon"
                continue
            results[daemon] = "reloaded" if rc == 0 else f"failed: rc {rc}: {out}"
        return results

    def _pid(self, daemon: str) -> int | None:
        proc = self.procs.get(daemon)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        pid = _read_pid(self.pid_file(daemon))
        return pid if pid is not None and alive(pid) else None

    def status(self) -> dict[str, DaemonStatus]:
        bins = self.binaries()
        out = {}
        for daemon in DAEMONS:
            pid = self._pid(daemon)
            out[daemon] = DaemonStatus(
                installed=bins[daemon] is not None, running=pid is not None, pid=pid
            )
        return out

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM each daemon by PID (reverse start order), wait for it and everything in its
        session to exit; SIGKILL by PID what is still there after `timeout`."""
        targets: list[tuple[str, int, subprocess.Popen[bytes] | None]] = []
        for daemon in reversed(DAEMONS):
            proc = self.procs.pop(daemon, None)
            if proc is not None:
                targets.append((daemon, proc.pid, proc))
            else:
                pid = _read_pid(self.pid_file(daemon))
                if pid is not None and alive(pid) and self._is_ours(pid, daemon):
                    targets.append((daemon, pid, None))
        # All told at once (their shutdowns overlap), then each waited for. OpenDKIM holds no
        # state but lingers ~5 s after SIGTERM: it gets SIGKILL after a short grace.
        for _, pid, _ in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for daemon, pid, proc in targets:
            grace = min(timeout, OPENDKIM_GRACE_S) if daemon == "opendkim" else timeout
            self._stop_pid(pid, proc, grace)

    def _is_ours(self, pid: int, daemon: str) -> bool:
        """A stale pid file must not make us signal an unrelated process."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        name = {"postfix": b"master", "dovecot": b"dovecot", "opendkim": b"opendkim"}[daemon]
        return bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name.encode() == name

    @staticmethod
    def _stop_pid(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        stop_process(pid, proc, timeout)

    def __enter__(self) -> "MailStack":
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM by PID, wait, SIGKILL after `timeout`; then sweep the session it led (one we
    created with start_new_session) so no child outlives it."""
    state = proc_state(pid)
    sid = state[1] if state is not None else pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    else:
        if not wait_until(lambda: not alive(pid), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if sid != pid:
        return  # not a session we created: do not sweep it
    if not wait_until(lambda: not session_members(sid), timeout):
        for member in session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        wait_until(lambda: not session_members(sid), timeout)
