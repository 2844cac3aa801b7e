"""The load generator, a process of its own so it never shares a core's time slice with the
server it measures: N keep-alive clients, each sending its next request as soon as the last
one is answered, for a warm-up and then a measured window (or until a request bound).

A request counts in the window if it completes inside it; req/s is that count over the
window. Every response is read to the end; non-2xx and failed requests are counted over the
whole run, warm-up included, since they must be zero.

Run as `python -m bench.load --url URL [--post-alias] ...`; prints one JSON object (with every
measured latency, so runs can be pooled).
"""

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import msgspec
import psutil


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cpu_seconds(pids: list[int]) -> list[float]:
    out: list[float] = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pid = os.getpid()
    numbers = itertools.count()
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    samples: list[str] = []
    latencies: list[float] = []
    encode = msgspec.json.encode
    issued = 0
    last_done = 0.0

    start = time.perf_counter()
    window_start = start + args.warmup
    window_end = window_start + args.duration
    cpu: dict[str, Any] = {}

    async def sample_cpu() -> None:
        """CPU seconds of the watched processes (and ours) over the measured window."""
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        before, own = cpu_seconds(args.watch), time.process_time()
        t0 = time.perf_counter()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        span = time.perf_counter() - t0
        after = cpu_seconds(args.watch)
        cpu["watched"] = [(a - b) / span for a, b in zip(after, before, strict=True)]
        cpu["load"] = (time.process_time() - own) / span

    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    headers = {"X-API-Key": args.api_key}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal issued, last_done
            body_headers = {"Content-Type": "application/json"}
            while issued < args.max_requests:
                t = time.perf_counter()
                if t >= window_end:
                    return
                issued += 1
                try:
                    if args.post_alias:
                        n = next(numbers)
                        body = encode(
                            {
                                "source": f"a{n}-{pid}@{args.alias_domain}",
                                "destination": "x@example.org",
                            }
                        )
                        request = session.post(args.url, data=body, headers=body_headers)
                    else:
                        request = session.get(args.url)
                    async with request as resp:
                        payload = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                done = time.perf_counter()
                statuses[status] += 1
                if not 200 <= status < 300 and len(samples) < 3:
                    samples.append(f"{status} {payload[:200].decode(errors='replace')}")
                if window_start <= done <= window_end:
                    latencies.append(done - t)
                    last_done = done

        sampler = asyncio.create_task(sample_cpu())
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        if not sampler.done():  # the request bound ended the run early
            sampler.cancel()

    # The window is cut short only when the request bound ended the run before its end.
    bounded = issued >= args.max_requests and last_done < window_end
    window = ((last_done if bounded else window_end) - window_start) if latencies else 0.0
    latencies.sort()
    return {
        "requests": len(latencies),
        "window_s": window,
        "rps": len(latencies) / window if window > 0 else 0.0,
        "p50_ms": quantile(latencies, 0.50) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
        "total": sum(statuses.values()),
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "errors": dict(errors),
        "samples": samples,
        "cpu_watched": cpu.get("watched", []),
        "cpu_load": cpu.get("load", 0.0),
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--post-alias", action="store_true", help="POST a new alias each time")
    parser.add_argument("--alias-domain", default="bench.example.com")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--watch", type=int, action="append", default=[], help="a pid")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
