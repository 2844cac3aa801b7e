"""`python -m bench`: one nats-server, the real app and the bare app as subprocesses, the load
generator as a third; then replay; then render at scale (bench.render: the pure render() and
load_state for 10,000 and 100,000 mailboxes + aliases) and the time from a command's 201 to the
change being live in a sandbox mail stack (bench.live; skipped, with the reason, where the
sandbox cannot run). Prints a table, three ratios and those figures.

Each ratio is real / baseline from this run only. A pair runs in ABBA order over the rounds
(real, bare, bare, real, ...), so drift in the machine's load hits both sides alike; a
scenario's figures pool its rounds. All children are stopped on any exit, Ctrl-C included.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench import live, replay
from bench import render as render_bench
from bench.bare import PREFIX as BARE_PREFIX
from bench.bare import STREAM as BARE_STREAM
from bench.load import quantile
from bench.procs import Child, die_with_parent
from commands.log import EventLog
from workers.nats_server import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-api-key-0123456789abcdef"
DOMAINS = 50
# Not bench.test: the alias source check (email-validator) refuses the special-use TLD .test.
ALIAS_DOMAIN = "bench.example.com"
RATE_LIMIT = "1000000000"


@dataclass(frozen=True)
class Scenario:
    label: str
    server: str  # "real" | "bare"
    path: str
    post_alias: bool


@dataclass(frozen=True)
class Pair:
    label: str
    real: Scenario
    bare: Scenario
    target: float


PAIRS = (
    Pair(
        "real POST aliases / bare publish",
        Scenario("POST /api/v1/aliases   real", "real", "/api/v1/aliases", True),
        Scenario("POST /bare/publish     bare", "bare", "/bare/publish", True),
        0.5,
    ),
    Pair(
        "real GET domains / bare SQLite read",
        Scenario("GET  /api/v1/domains   real", "real", "/api/v1/domains", False),
        Scenario("GET  /bare/domains     bare", "bare", "/bare/domains", False),
        0.8,
    ),
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops its children."""
    raise KeyboardInterrupt


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment minus any MAILPANEL_* setting of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPANEL_")}
    env.update(extra)
    return env


def mailpanel_binary() -> str:
    beside = Path(sys.executable).parent / "mailpanel"
    found = str(beside) if beside.exists() else shutil.which("mailpanel")
    if not found:
        raise SystemExit("bench: the mailpanel command is not installed (make install)")
    return found


async def alias_total(real: str) -> int:
    """The real read model's alias count (the list's meta.total)."""
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        async with session.get(f"{real}/api/v1/aliases", params={"limit": "1"}) as resp:
            return int((await resp.json())["meta"]["total"])


async def prepare(real: str, bare: str) -> dict[str, int]:
    """50 domains through the real API (the alias domain first, with no alias cap); both list
    endpoints must then return the same 50 rows. Returns each list's body size in bytes."""
    names = [ALIAS_DOMAIN] + [f"d{i:02d}.{ALIAS_DOMAIN}" for i in range(1, DOMAINS)]
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        ids = []
        for name in names:
            async with session.post(f"{real}/api/v1/domains", json={"name": name}) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"creating {name}: {resp.status} {await resp.text()}")
                ids.append((await resp.json())["id"])
        # Domain caps (max_aliases, 100 by default) would refuse most of the POSTs; an app
        # without per-domain overrides answers 404/405 here and has no cap to lift.
        url = f"{real}/api/v1/domains/{ids[0]}/overrides"
        async with session.put(url, json={"max_aliases": 0}) as resp:
            if resp.status not in (200, 201, 204, 404, 405):
                raise RuntimeError(f"lifting the alias cap: {resp.status} {await resp.text()}")
        async with session.get(f"{real}/api/v1/domains") as resp:
            real_body = await resp.read()
        async with session.get(f"{bare}/bare/domains") as resp:
            bare_body = await resp.read()
    real_rows = [(d["id"], d["name"]) for d in json.loads(real_body)["data"]]
    bare_rows = [(d["id"], d["name"]) for d in json.loads(bare_body)["data"]]
    if len(real_rows) != DOMAINS or real_rows != bare_rows:
        raise RuntimeError(
            f"list endpoints differ: real {len(real_rows)} rows, bare {len(bare_rows)} rows"
        )
    return {"real": len(real_body), "bare": len(bare_body)}


def run_load(url: str, post_alias: bool, watch: list[int], args: argparse.Namespace) -> Any:
    """One load-generator process against `url`; its JSON result."""
    argv = [sys.executable, "-m", "bench.load", "--url", url, "--api-key", API_KEY]
    argv += ["--concurrency", str(args.concurrency), "--warmup", str(args.warmup)]
    argv += ["--duration", str(args.duration), "--max-requests", str(args.max_requests)]
    argv += ["--alias-domain", ALIAS_DOMAIN]
    if post_alias:
        argv.append("--post-alias")
    for pid in watch:
        argv += ["--watch", str(pid)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent
    )
    try:
        out, err = proc.communicate(timeout=args.warmup + args.duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err.decode()}")
    return json.loads(out)


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's rounds as one: requests over total window, quantiles over all latencies,
    CPU shares averaged, failures summed."""
    latencies = sorted(x for r in runs for x in r["latencies_ms"])
    window = sum(r["window_s"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for name, n in r["errors"].items():
            errors[name] = errors.get(name, 0) + n
    watched = [r["cpu_watched"] + [0.0, 0.0] for r in runs]
    return {
        "rps": len(latencies) / window if window > 0 else 0.0,
        "rounds_rps": [r["rps"] for r in runs],
        "p50_ms": quantile(latencies, 0.50),
        "p99_ms": quantile(latencies, 0.99),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "errors": errors,
        "samples": [s for r in runs for s in r["samples"]][:3],
        "cpu_app": statistics.mean(w[0] for w in watched),
        "cpu_nats": statistics.mean(w[1] for w in watched),
        "cpu_load": statistics.mean(r["cpu_load"] for r in runs),
    }


async def run_replay(url: str, work: Path, events: int, rounds: int) -> dict[str, Any]:
    """Fill the REPLAY stream once, then alternate raw and rebuild `rounds` times."""
    event_log = await EventLog.connect(url, replay.STREAM, replay.PREFIX, name="bench-replay")
    try:
        started = time.perf_counter()
        last_seq = await replay.fill(event_log.js, events, domains=max(1, events // 100))
        fill_s = time.perf_counter() - started
        raw_s: list[float] = []
        rebuild_s: list[float] = []
        counts: dict[str, int] = {}
        for _ in range(rounds):
            raw_s.append(await replay.time_raw(event_log, work / "raw.db", last_seq))
            elapsed, counts = await replay.time_rebuild(event_log, work / "read.db")
            rebuild_s.append(elapsed)
    finally:
        await event_log.close()
    if counts.get("events") != last_seq:
        raise RuntimeError(f"rebuild applied {counts} of {last_seq} events")
    return {
        "events": last_seq,
        "fill_s": fill_s,
        "raw_s": raw_s,
        "rebuild_s": rebuild_s,
        "counts": counts,
    }


def ratio_line(label: str, value: float, target: float) -> str:
    verdict = "meets target" if value >= target else "BELOW target"
    return f"  {label:<44} {value:5.2f}   (target >= {target:.1f}: {verdict})"


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    rep: dict[str, Any],
    sizes: dict[str, int],
    load_before: float,
    figures: list[str],
) -> bool:
    """Print everything; True when no request failed."""
    print()
    print(
        f"mailpanel bench: {args.concurrency} clients; per scenario {args.rounds} x "
        f"({args.warmup:g} s warm-up + {args.duration:g} s measured); {os.cpu_count()} CPUs; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{'scenario':<29}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}"
        f"{'app CPU':>9}{'nats CPU':>10}{'load CPU':>10}   req/s per round"
    )
    clean = True
    for pair in PAIRS:
        for sc in (pair.real, pair.bare):
            r = results[sc.label]
            errors = sum(r["errors"].values())
            clean = clean and r["non_2xx"] == 0 and errors == 0
            rounds = ", ".join(f"{x:.0f}" for x in r["rounds_rps"])
            print(
                f"{sc.label:<29}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                f"{r['non_2xx']:>9}{errors:>8}{r['cpu_app']:>9.0%}{r['cpu_nats']:>10.0%}"
                f"{r['cpu_load']:>10.0%}   {rounds}"
            )
            for sample in r["samples"]:
                print(f"    non-2xx sample: {sample}")
            if r["errors"]:
                print(f"    failed requests: {r['errors']}")
    print(
        "  CPU: share of one core over the measured windows (app = the server under test).\n"
        f"  GET bodies: real {sizes['real']} B, bare {sizes['bare']} B, same {DOMAINS} rows.\n"
        f"  Bare publish: stream {BARE_STREAM}, subject {BARE_PREFIX}.addr.<source>, with the "
        "real append's\n  Nats-Msg-Id and expected-last-subject-sequence headers and an "
        "AliasCreated envelope."
    )
    n = rep["events"]
    raw_s = statistics.median(rep["raw_s"])
    rebuild_s = statistics.median(rep["rebuild_s"])
    print()
    print(
        f"replay of {n:,} events (median of {len(rep['raw_s'])}; "
        f"stream filled in {rep['fill_s']:.2f} s, {n / rep['fill_s']:,.0f}/s):"
    )
    print(
        f"  {'rebuild (Projector on a fresh DB file)':<44} {n / rebuild_s:>9,.0f} events/s"
        f"   runs {', '.join(f'{s:.2f}' for s in rep['rebuild_s'])} s"
    )
    print(
        f"  {'raw ordered consumer -> SQLite, 1,000/txn':<44} {n / raw_s:>9,.0f} events/s"
        f"   runs {', '.join(f'{s:.2f}' for s in rep['raw_s'])} s"
    )
    counts = rep["counts"]
    print(
        f"  rebuilt read model: {counts['events']:,} events, {counts['domains']:,} domains, "
        f"{counts['aliases']:,} aliases"
    )
    for line in figures:
        print(line)
    print()
    print("ratios (same run):")
    for pair in PAIRS:
        value = results[pair.real.label]["rps"] / max(results[pair.bare.label]["rps"], 1e-9)
        print(ratio_line(pair.label, value, pair.target))
    print(ratio_line("rebuild / raw consume-and-apply", raw_s / rebuild_s, 0.5))
    if not clean:
        print()
        print("bench: some requests failed (non-2xx or connection errors); figures are suspect")
    return clean


def scale_and_live(args: argparse.Namespace, work: Path) -> tuple[list[str], bool]:
    """Render at scale (in this process) and time to live (its own nats-server and sandbox
    `mailpanel serve`, all stopped before it returns): the lines to print, and whether the
    figures can be trusted."""
    lines: list[str] = []
    ok = True
    sizes = tuple(int(n) for n in args.render_sizes.split(",") if n.strip())
    if sizes:
        print(f"bench: render at {', '.join(f'{n:,}' for n in sizes)} mailboxes ...", flush=True)
        found, good = render_bench.run(sizes, not args.no_load_state, work=work)
        lines += ["", *found]
        ok = ok and good
    if args.live_samples > 0:
        print(f"bench: time to live, {args.live_samples} samples (sandbox) ...", flush=True)
        found, good = live.run(args.live_samples)
        lines += ["", *found]
        ok = ok and good
    return lines, ok


def run(args: argparse.Namespace, work: Path, stack: ExitStack) -> bool:
    load_before = os.getloadavg()[0]
    nats_server = EmbeddedNats(work / "nats", port=0)
    stack.callback(nats_server.stop)
    nats_server.start()
    assert nats_server.proc is not None

    real_listen, bare_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    real_url, bare_url = f"http://{real_listen}", f"http://{bare_listen}"
    real_dir = work / "real"
    real = Child(
        "mailpanel serve",
        [mailpanel_binary(), "serve", "--data-dir", str(real_dir), "--listen", real_listen],
        child_env(
            {
                "MAILPANEL_NATS_URL": nats_server.url,
                "MAILPANEL_API_KEY": API_KEY,
                "MAILPANEL_ADMIN_PASSWORD": "bench-admin-password",
                "MAILPANEL_HOST_IPS": "192.0.2.10",
                # The per-IP limiter runs on every request but never refuses one.
                "MAILPANEL_RATE_LIMIT_API": RATE_LIMIT,
                "MAILPANEL_MAILSTACK": "off",
                "MAILPANEL_RATE_LIMIT_LOGIN": RATE_LIMIT,
            }
        ),
        work / "real.log",
    )
    stack.callback(real.stop)
    real.start(ROOT)
    real.wait_http(f"{real_url}/health")

    bare_argv = [sys.executable, "-m", "bench.bare", "--nats", nats_server.url]
    bare_argv += ["--db", str(real_dir / "read.db"), "--listen", bare_listen]
    bare = Child(
        "bench.bare",
        bare_argv,
        child_env({}),
        work / "bare.log",
    )
    stack.callback(bare.stop)
    bare.start(ROOT)
    bare.wait_http(f"{bare_url}/health")

    print(f"bench: NATS {nats_server.url}, real app {real_url}, bare app {bare_url}", flush=True)
    sizes = asyncio.run(prepare(real_url, bare_url))

    runs: dict[str, list[dict[str, Any]]] = {}
    for pair in PAIRS:
        for i in range(args.rounds):
            order = (pair.real, pair.bare) if i % 2 == 0 else (pair.bare, pair.real)
            for sc in order:
                server, base = (real, real_url) if sc.server == "real" else (bare, bare_url)
                print(f"bench: {sc.label} (round {i + 1}/{args.rounds}) ...", flush=True)
                result = run_load(
                    base + sc.path, sc.post_alias, [server.pid, nats_server.proc.pid], args
                )
                runs.setdefault(sc.label, []).append(result)
    results = {label: pool(rs) for label, rs in runs.items()}
    created = sum(r["statuses"].get("201", 0) for r in runs[PAIRS[0].real.label])
    stored = asyncio.run(alias_total(real_url))

    # Replay runs alone: the HTTP servers are stopped so they take no CPU from it.
    bare.stop()
    real.stop()
    print(f"bench: replay of {args.events:,} events ...", flush=True)
    rep = asyncio.run(run_replay(nats_server.url, work, args.events, args.replay_rounds))
    figures, figures_ok = scale_and_live(args, work)
    ok = report(args, results, rep, sizes, load_before, figures) and figures_ok
    print(f"\nbench: {created:,} aliases answered 201 (warm-ups included); the real read model")
    print(f"       lists {stored:,}{'' if stored == created else '  << MISMATCH'}")
    return ok and stored == created


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, per run")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured, per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per HTTP scenario (ABBA)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per run")
    parser.add_argument("--events", type=int, default=20_000, help="events to replay")
    parser.add_argument("--replay-rounds", type=int, default=3, help="replay runs (median)")
    parser.add_argument(
        "--render-sizes",
        default=",".join(str(n) for n in render_bench.SIZES),
        help="mailboxes (and as many aliases) per render figure; empty to skip",
    )
    parser.add_argument("--no-load-state", action="store_true", help="skip timing load_state")
    parser.add_argument(
        "--live-samples", type=int, default=30, help="time-to-live samples; 0 to skip"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    work = Path(tempfile.mkdtemp(prefix="mailpanel-bench-"))
    ok = False
    try:
        with ExitStack() as stack:
            ok = run(args, work, stack)
    except KeyboardInterrupt:
        print("\nbench: interrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if args.keep:
            print(f"bench: work dir kept at {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
