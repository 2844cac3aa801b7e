"""Time to live: from a command's 201 to the change being live as the mail server sees it.

`mailpanel serve` runs with MAILPANEL_MAILSTACK=sandbox (its reconcile agent runs Postfix and
Dovecot under the data dir, on free loopback ports) against a nats-server of our own. One domain
is created and awaited; then, per sample, a new alias is POSTed and its address is probed with
`RCPT TO` on the sandbox SMTP port, on a fresh connection each time, every few milliseconds:
Postfix refuses it (550 5.1.1, unknown in the virtual tables) until the agent has rendered,
validated and swapped the maps and reloaded Postfix, and accepts it (250) from then on. A sample
is the time from the 201 to the end of the first accepted probe, so it overstates by at most one
probe plus the pause. Between samples the agent is let settle (lag 0 on
/api/v1/system/reconcile/status), so each sample is one lone command on a quiet system.

Needs root and Postfix + Dovecot (make mailstack-deps); without them it says why and skips.
Run alone as `python -m bench.live [--samples 30]`.
"""

import argparse
import json
import os
import shutil
import signal
import smtplib
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.load import quantile
from bench.procs import Child
from workers.nats_server import EmbeddedNats, free_port
from workers.reconcile.agent import DEBOUNCE_S
from workers.reconcile.layout import Layout
from workers.reconcile.stack import MailStack
from workers.reconcile.validate import which

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-live-api-key-0123456789abcdef"
# Not .test: the alias source check (email-validator) refuses the special-use TLD.
DOMAIN = "live.bench.example.com"
DESTINATION = "someone@example.org"
SENDER = "probe@example.org"
PROBE_PAUSE_S = 0.005
PROBE_TIMEOUT_S = 5.0
SAMPLE_BOUND_S = 20.0  # a change not live by then counts as never live
SETTLE_BOUND_S = 30.0
START_BOUND_S = 90.0
STOP_BOUND_S = 60.0  # serve stops its daemons on SIGTERM; give it time before SIGKILL
WARMUP = 2


def skip_reason() -> str:
    """Why the sandbox cannot run here ("" if it can); as workers.config.mailstack_available."""
    if os.geteuid() != 0:
        return "not root (Postfix and Dovecot drop to their own users)"
    missing = [name for name in ("postfix", "dovecot") if which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (make mailstack-deps, as root)"
    return ""


def mailpanel_binary() -> str:
    beside = Path(sys.executable).parent / "mailpanel"
    found = str(beside) if beside.exists() else shutil.which("mailpanel")
    if not found:
        raise RuntimeError("the mailpanel command is not installed (make install)")
    return found


class Api:
    """A tiny JSON client (one connection per call; the calls are not what is timed)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")[:300]

    def agent(self) -> dict[str, Any]:
        status, body = self.call("GET", "/api/v1/system/reconcile/status")
        if status != 200 or not body["data"]:
            return {}
        return dict(body["data"][0])

    def settle(self, seq: int, timeout: float = SETTLE_BOUND_S) -> dict[str, Any]:
        """Until the agent reports a run at or past `seq` with nothing left behind it."""
        deadline = time.monotonic() + timeout
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            report = self.agent()
            if report and report["applied_seq"] >= seq and report["lag"] == 0:
                return report
            time.sleep(0.02)
        raise RuntimeError(f"the agent did not catch up with {seq} in {timeout:.0f} s: {report}")


def probe(port: int, rcpt: str) -> int:
    """The reply code to RCPT TO:<rcpt> on a fresh SMTP connection (-1: no SMTP answer)."""
    try:
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname="probe.bench.example", timeout=PROBE_TIMEOUT_S
        ) as smtp:
            smtp.ehlo()
            code, _ = smtp.mail(SENDER)
            if code != 250:
                return code
            code, _ = smtp.rcpt(rcpt)
            return int(code)
    except (OSError, smtplib.SMTPException):
        return -1


@dataclass
class Sample:
    post_ms: float
    live_ms: float | None  # None: not live within the bound
    probes: int
    probe_ms: list[float] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    agent_run_ms: int = 0


def one_sample(api: Api, port: int, local: str) -> Sample:
    address = f"{local}@{DOMAIN}"
    before = probe(port, address)
    if before == 250 or before < 0:
        raise RuntimeError(f"{address} answers {before} before it exists: nothing to measure")
    started = time.perf_counter()
    alias = {"source": address, "destination": DESTINATION}
    status, body = api.call("POST", "/api/v1/aliases", alias)
    answered = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"POST /api/v1/aliases: {status} {body}")
    sample = Sample(post_ms=(answered - started) * 1000, live_ms=None, probes=0)
    while True:
        t = time.perf_counter()
        code = probe(port, address)
        done = time.perf_counter()
        sample.probes += 1
        sample.probe_ms.append((done - t) * 1000)
        if code == 250:
            sample.live_ms = (done - answered) * 1000
            break
        sample.refused[code] += 1
        if done - answered > SAMPLE_BOUND_S:
            break
        time.sleep(PROBE_PAUSE_S)
    report = api.settle(int(body["id"]))
    sample.agent_run_ms = int(report.get("duration_ms", 0))
    return sample


def start(work: Path, stack: ExitStack) -> tuple[Api, int, float]:
    """nats-server and `mailpanel serve` (sandbox), every stop registered on `stack`."""
    nats_server = EmbeddedNats(work / "nats", port=0)
    stack.callback(nats_server.stop)
    nats_server.start()
    ports = {name: free_port() for name in ("smtp", "submission", "imap", "pop3", "milter")}
    listen = f"127.0.0.1:{free_port()}"
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPANEL_")}
    env.update(
        MAILPANEL_NATS_URL=nats_server.url,
        MAILPANEL_API_KEY=API_KEY,
        MAILPANEL_ADMIN_PASSWORD="bench-admin-password",
        MAILPANEL_HOST_IPS="192.0.2.10",
        MAILPANEL_RATE_LIMIT_API="0",
        MAILPANEL_RATE_LIMIT_LOGIN="0",
        MAILPANEL_MAILSTACK="sandbox",
        MAILPANEL_SMTP_PORT=str(ports["smtp"]),
        MAILPANEL_SUBMISSION_PORT=str(ports["submission"]),
        MAILPANEL_IMAP_PORT=str(ports["imap"]),
        MAILPANEL_POP3_PORT=str(ports["pop3"]),
        MAILPANEL_MILTER_PORT=str(ports["milter"]),
    )
    serve = Child(
        "mailpanel serve (sandbox)",
        [mailpanel_binary(), "serve", "--data-dir", str(data_dir), "--listen", listen],
        env,
        work / "serve.log",
    )
    # Unwound in reverse: serve stops its daemons on SIGTERM; then any daemon it left behind
    # (it was killed, say) is stopped by the PIDs in the instance's pid files.
    leftovers = MailStack(Layout(root=data_dir / "mailstack", mail_root_dir=data_dir / "mail"))
    stack.callback(leftovers.stop)
    stack.callback(serve.stop, STOP_BOUND_S)
    started = time.perf_counter()
    serve.start(ROOT)
    serve.wait_http(f"http://{listen}/health", timeout=START_BOUND_S)
    return Api(f"http://{listen}"), ports["smtp"], time.perf_counter() - started


def prepare(api: Api, port: int, tag: str) -> None:
    """The domain, live: an unknown address of it is refused (before, relay from a trusted
    network would accept it)."""
    status, body = api.call("POST", "/api/v1/domains", {"name": DOMAIN})
    if status != 201:
        raise RuntimeError(f"POST /api/v1/domains: {status} {body}")
    api.settle(int(body["id"]))
    deadline = time.monotonic() + SETTLE_BOUND_S
    code = 0
    while time.monotonic() < deadline:
        code = probe(port, f"nobody-{tag}@{DOMAIN}")
        if 500 <= code < 600:
            return
        time.sleep(0.05)
    raise RuntimeError(f"an unknown address of {DOMAIN} still answers {code}")


def summary(samples: list[Sample], startup_s: float) -> list[str]:
    live = sorted(s.live_ms for s in samples if s.live_ms is not None)
    missed = sum(1 for s in samples if s.live_ms is None)
    probe_ms = sorted(x for s in samples for x in s.probe_ms)
    runs = sorted(float(s.agent_run_ms) for s in samples)
    posts = sorted(s.post_ms for s in samples)
    refused: Counter[int] = Counter()
    for s in samples:
        refused.update(s.refused)
    out = [
        f"time from 201 to live (sandbox Postfix + Dovecot; RCPT TO on a fresh SMTP connection "
        f"every probe + {PROBE_PAUSE_S * 1000:.0f} ms):"
    ]
    if live:
        out.append(
            f"  {len(live)} aliases (after {WARMUP} warm-up): p50 {quantile(live, 0.5):.0f} ms, "
            f"p99 {quantile(live, 0.99):.0f} ms, min {live[0]:.0f} ms, max {live[-1]:.0f} ms"
        )
    if missed:
        out.append(f"  {missed} aliases NOT live within {SAMPLE_BOUND_S:.0f} s")
    out.append(
        f"  of which the agent's run (load_state .. swap, reload not included): p50 "
        f"{quantile(runs, 0.5):.0f} ms, max {runs[-1]:.0f} ms; debounce {DEBOUNCE_S * 1000:.0f} ms"
    )
    out.append(
        f"  POST /api/v1/aliases answered 201 in p50 {quantile(posts, 0.5):.1f} ms; "
        f"a probe takes p50 {quantile(probe_ms, 0.5):.1f} ms (p99 {quantile(probe_ms, 0.99):.1f}); "
        f"{statistics.mean(s.probes for s in samples):.0f} probes per sample"
    )
    codes = ", ".join(f"{'no answer' if c < 0 else c} x {n}" for c, n in sorted(refused.items()))
    out.append(
        f"  replies before live: {codes or 'none'}; serve healthy {startup_s:.1f} s after start"
    )
    return out


def run(samples: int = 30, keep: bool = False) -> tuple[list[str], bool]:
    """The printed lines, and False if the figure is suspect (a change never went live)."""
    reason = skip_reason()
    if reason:
        return [f"time from 201 to live: skipped, {reason}"], True
    # The daemons' users must traverse every parent: a fresh 0755 dir, not a 0700 mkdtemp chain.
    work = Path(tempfile.mkdtemp(prefix="mailpanel-bench-live-", dir="/tmp"))
    work.chmod(0o755)
    tag = uuid.uuid4().hex[:8]
    try:
        with ExitStack() as stack:
            api, port, startup_s = start(work, stack)
            prepare(api, port, tag)
            for n in range(WARMUP):
                one_sample(api, port, f"warm{n}-{tag}")
            measured = [one_sample(api, port, f"s{n}-{tag}") for n in range(samples)]
    except RuntimeError as exc:
        log = (work / "serve.log").read_text(errors="replace")[-3000:] if work.exists() else ""
        return [f"time from 201 to live: FAILED: {exc}", f"  serve log (tail):\n{log}"], False
    finally:
        if keep:
            print(f"bench.live: work dir kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return summary(measured, startup_s), all(s.live_ms is not None for s in measured)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        lines, ok = run(args.samples, args.keep)
    except KeyboardInterrupt:
        print("\nbench.live: interrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None
    print("\n".join(lines))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
