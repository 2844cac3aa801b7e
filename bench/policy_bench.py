"""The policy service under load: requests/s and latency at steady state.

The service (workers.policy.PolicyServer, a real SQLite counter file in a temp dir) runs in a
process of its own; this process is the load: CONNECTIONS persistent connections, each sending
its next request as soon as the last is answered, as Postfix's smtpd processes do. The mix
alternates the two hot paths, both of which write a row per request:
- RCPT on the inbound service for a greylisted domain whose triplet passed before (a greylist
  read, then passed_at updated), and
- END-OF-MESSAGE on the submission service of a mailbox with room left today (the day's count
  read, then incremented).
A warm-up of WARMUP requests precedes the measured REQUESTS; every answer must be DUNNO.
A second line times the same requests through the service's steps in-process (RequestReader,
then PolicyServer.answer: parse, decide, persist; no socket): its own share of the figure.
Both sides run on the event loop `mailpanel serve` uses (workers.serve.run: uvloop where
installed).

Run as `python -m bench.policy_bench [--requests 20000] [--connections 4]`.
"""

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from bench.load import quantile
from core.policy import Policy, client_net
from workers.policy import PolicyServer, PolicyStore, RequestReader
from workers.serve import run as run_loop

REQUESTS = 20_000
CONNECTIONS = 4
WARMUP = 2_000
DOMAINS = 50
MAILBOXES_PER_DOMAIN = 20
CLIENTS = 64  # distinct sending hosts (one /24 each) and senders on the inbound side


def population() -> Policy:
    """50 domains with 20 mailboxes each, greylisting on, a small whitelist that matches none
    of the load's clients, and no daily limit anyone reaches."""
    domains = {f"d{d:02d}.example.com": {"message_size_limit": 10_485_760} for d in range(DOMAINS)}
    mailboxes = {
        f"user{m:02d}@{name}": {"max_send_per_day": 10**9, "max_recipients_per_message": 50}
        for name in domains
        for m in range(MAILBOXES_PER_DOMAIN)
    }
    whitelist = [("cidr", "192.0.2.0/24"), ("domain", "partner.example"), ("ip", "198.51.100.1")]
    return Policy.build(
        mailboxes=mailboxes,
        domains=domains,
        settings={"greylist_enabled": True, "greylist_delay_seconds": 300},
        whitelist=whitelist,
    )


def mailbox(n: int) -> str:
    domain = (n // MAILBOXES_PER_DOMAIN) % DOMAINS
    return f"user{n % MAILBOXES_PER_DOMAIN:02d}@d{domain:02d}.example.com"


def inbound_rcpt(n: int) -> dict[str, str]:
    host = n % CLIENTS
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": f"203.0.{host}.{10 + n % 200}",
        "client_name": f"mx{host}.sender{host}.example",
        "reverse_client_name": f"mx{host}.sender{host}.example",
        "helo_name": f"mx{host}.sender{host}.example",
        "sender": f"news@sender{host}.example",
        "recipient": mailbox(n),
        "recipient_count": "0",
        "queue_id": "",
        "instance": f"{n:x}.6b027f49.ec340.0",
        "size": "4096",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "policy_context": "inbound",
        "server_address": "127.0.0.1",
        "server_port": "25",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }


def submission_eom(n: int) -> dict[str, str]:
    user = mailbox(n)
    return inbound_rcpt(n) | {
        "protocol_state": "END-OF-MESSAGE",
        "client_address": "198.51.100.77",
        "sender": user,
        "recipient": f"friend{n % 97}@example.org",
        "recipient_count": "1",
        "queue_id": f"4Q{n:08X}",
        "size": str(2048 + n % 4096),
        "sasl_method": "PLAIN",
        "sasl_username": user,
        "policy_context": "submission",
        "server_port": "587",
    }


def request(n: int) -> dict[str, str]:
    return inbound_rcpt(n) if n % 2 == 0 else submission_eom(n)


def wire(attrs: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def seed(path: Path) -> None:
    """Every inbound triplet of the load passed greylisting an hour ago (steady state)."""
    store = PolicyStore(path)
    past = time.time() - 3600
    for n in range(0, 2 * DOMAINS * MAILBOXES_PER_DOMAIN * CLIENTS, 2):
        attrs = inbound_rcpt(n)
        triplet = (client_net(attrs["client_address"]), attrs["sender"], attrs["recipient"])
        store.greylist_pass(triplet, past)
    store.close()


def serve(path: str, conn: Connection) -> None:
    """The child: the service on a free loopback port until told to stop."""

    async def run() -> None:
        store = PolicyStore(path)
        server = PolicyServer(population(), store)
        await server.start()
        conn.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        conn.send((server.requests, server.malformed, server.failures))
        await server.close()
        store.close()

    run_loop(run())


async def load(port: int, first: int, count: int, connections: int) -> tuple[list[int], float]:
    """`count` requests numbered from `first`, over `connections` connections; the latency of
    each in ns and the wall time of all."""
    latencies: list[int] = []
    per_connection = count // connections

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = first + index * per_connection
        payloads = [wire(request(n)) for n in range(start, start + per_connection)]
        try:
            for payload in payloads:
                t = time.perf_counter_ns()
                writer.write(payload)
                answer = await reader.readuntil(b"\n\n")
                latencies.append(time.perf_counter_ns() - t)
                if answer != b"action=DUNNO\n\n":
                    raise RuntimeError(f"unexpected answer {answer!r}")
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    return latencies, time.perf_counter() - started


def in_process(path: Path, count: int) -> tuple[list[int], float]:
    """The same mix through the service's own steps, bytes in and bytes out: RequestReader,
    then PolicyServer.answer (decide, persist); no socket, no event loop."""
    store = PolicyStore(path)
    server = PolicyServer(population(), store)
    reader = RequestReader()
    payloads = [wire(request(n)) for n in range(count)]
    latencies: list[int] = []
    started = time.perf_counter()
    for payload in payloads:
        t = time.perf_counter_ns()
        answers = [server.answer(item) for item in reader.feed(payload)]
        latencies.append(time.perf_counter_ns() - t)
        if answers != [b"action=DUNNO\n\n"]:
            raise RuntimeError(f"unexpected answer in process: {answers!r}")
    elapsed = time.perf_counter() - started
    store.close()
    return latencies, elapsed


def loop_name() -> str:
    """The event loop workers.serve.run gives (uvloop where installed, as `mailpanel serve`)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def row(label: str, latencies: list[int], elapsed: float, cpu: str) -> str:
    ordered = sorted(latencies)
    p50 = quantile([float(x) for x in ordered], 0.50) / 1000
    p99 = quantile([float(x) for x in ordered], 0.99) / 1000
    rps = len(latencies) / elapsed if elapsed > 0 else 0.0
    return f"{label:<36} {len(latencies):>7} {rps:>10.0f} {p50:>9.1f} {p99:>9.1f} {cpu:>9}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    args = parser.parse_args()
    count = args.requests - args.requests % args.connections

    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        path = Path(tmp) / "policy.db"
        seed(path)
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        child = ctx.Process(target=serve, args=(str(path), theirs), daemon=True)
        child.start()
        try:
            if not ours.poll(30):
                raise SystemExit("policy bench: the service did not start")
            port = int(ours.recv())
            warm = args.warmup - args.warmup % args.connections
            run_loop(load(port, 0, warm, args.connections))
            proc = psutil.Process(child.pid)
            before = proc.cpu_times()
            latencies, elapsed = run_loop(load(port, warm, count, args.connections))
            after = proc.cpu_times()
            busy = (after.user + after.system - before.user - before.system) / elapsed
            ours.send("stop")
            requests, malformed, failures = ours.recv()
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
        local, local_elapsed = in_process(path, count)

    print(f"policy service: {count} requests over {args.connections} connections after a")
    print(f"{warm}-request warm-up; half inbound RCPT (greylist pass), half submission")
    print("END-OF-MESSAGE (counted); SQLite WAL;", end=" ")
    print(f"{loop_name()} on both sides; {os.cpu_count()} CPUs")
    print()
    print(f"{'':<36} {'requests':>7} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'srv CPU':>9}")
    print(row("over TCP (service process)", latencies, elapsed, f"{busy:.0%}"))
    print(row("in-process parse+answer (no socket)", local, local_elapsed, "-"))
    print()
    print(f"service counted {requests} requests, {malformed} malformed, {failures} failed")
    if malformed or failures or requests != warm + count:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
