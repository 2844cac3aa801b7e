"""Render at scale: the pure `render(state, layout)` over N mailboxes and N aliases, and
`load_state` over a read model of the same size.

The population is one event history (a few hundred domains, N mailboxes, N aliases, domain
caps lifted first, as an install this large must have done). The in-memory MailState is built
from it the way the read model would hold it: ids are sequences, quotas are the effective ones,
`effective` dicts come from the real tier resolution (core.config), rows are in load_state's
order. The same history, applied to a fresh SQLite file through projections.appliers.apply_batch
(1,000 per transaction, as the projector does), gives the read model load_state is timed on;
its snapshot must equal the in-memory state, which checks that the state rendered is realistic.

Run alone as `python -m bench.render [--sizes 10000,100000] [--profile]`.
"""

import argparse
import base64
import cProfile
import io
import pstats
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    Resolved,
    resolve_domain,
    resolve_mailbox,
)
from core.events import (
    AliasCreated,
    DomainCreated,
    DomainDefaultsSet,
    Envelope,
    Event,
    MailboxCreated,
    Meta,
    encode,
)
from core.subjects import address_subject, config_subject, domain_subject
from projections.appliers import Item, apply_batch
from projections.db import open_writer
from workers.reconcile.layout import Layout
from workers.reconcile.render import render
from workers.reconcile.state import Alias, Domain, Mailbox, MailState, load_state

SIZES = (10_000, 100_000)
HOST_IPS = ("192.0.2.10", "192.0.2.11")
# Domain caps lifted (0 = no cap): the defaults (100 mailboxes, 100 aliases, 10 GiB) refuse
# most of a population this large.
UNCAPPED = DomainDefaults(max_mailboxes=0, max_aliases=0, quota_total_bytes=0)
# Own quotas of mailboxes: mostly none given (the 1 GiB default applies), some explicit,
# a few unlimited (0).
QUOTAS: tuple[int | None, ...] = (None,) * 6 + (2 << 30, 5 << 30, 512 << 20, 0)
LOCALS = ("info", "sales", "support", "billing", "team", "office", "hr", "dev", "ops", "news")
OUTSIDE = ("example.org", "example.net", "mail.example.com")
BATCH = 1000  # events per apply_batch transaction, as projections.runner.BATCH


def domain_count(mailboxes: int) -> int:
    """A few hundred domains: 200 for 10,000 mailboxes, 500 for 100,000."""
    return max(10, min(500, 100 + mailboxes // 100))


def argon2id(rng: random.Random) -> str:
    """A hash string shaped like commands.passwords makes (random salt and digest)."""

    def b64(n: int) -> str:
        return base64.b64encode(rng.randbytes(n)).decode().rstrip("=")

    return f"{{ARGON2ID}}$argon2id$v=19$m=19456,t=2,p=1${b64(16)}${b64(32)}"


def history(mailboxes: int, aliases: int, seed: int = 1) -> list[tuple[str, Event]]:
    """(subject, event) in log order; event n gets sequence n (ids are sequences)."""
    rng = random.Random(seed)
    events: list[tuple[str, Event]] = [
        (config_subject("domain_defaults"), DomainDefaultsSet(config=UNCAPPED))
    ]
    kinds = ("shop", "mail", "corp", "club")
    names = [f"d{i:03d}-{rng.choice(kinds)}.example.com" for i in range(domain_count(mailboxes))]
    domain_ids: list[int] = []
    for i, name in enumerate(names):
        outgoing = HOST_IPS[i % 2] if i % 5 == 0 else ""
        created = DomainCreated(name=name, active=i % 50 != 7, outgoing_ip=outgoing)
        events.append((domain_subject(name), created))
        domain_ids.append(len(events))
    # Skewed sizes: a few big domains, many small ones.
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(names))]
    owners = rng.choices(range(len(names)), weights=weights, k=mailboxes + aliases)
    users: dict[int, list[str]] = {}
    for n in range(mailboxes):
        d = owners[n]
        local = f"{rng.choice(('anna', 'ben', 'chris', 'dana', 'eli', 'fay'))}.user{n}"
        address = f"{local}@{names[d]}"
        mailbox = MailboxCreated(
            domain_id=domain_ids[d],
            username=local,
            address=address,
            password_hash=argon2id(rng),
            quota=rng.choice(QUOTAS),
            active=n % 97 != 3,
        )
        events.append((address_subject(address), mailbox))
        users.setdefault(d, []).append(address)
    catch_all = {d for d in range(len(names)) if d % 10 == 3}
    for n in range(aliases):
        d = owners[mailboxes + n]
        if d in catch_all:
            catch_all.discard(d)
            source = f"@{names[d]}"
        else:
            source = f"{rng.choice(LOCALS)}{n}@{names[d]}"
        local_users = users.get(d) or [f"someone{n}@{OUTSIDE[0]}"]
        kind = rng.random()
        if kind < 0.70:
            targets = [rng.choice(local_users)]
        elif kind < 0.90:
            targets = rng.sample(local_users, min(3, len(local_users)))
        else:
            targets = [f"fwd{n}@{rng.choice(OUTSIDE)}"]
        alias = AliasCreated(domain_id=domain_ids[d], source=source, destination=", ".join(targets))
        events.append((address_subject(source), alias))
    return events


def in_memory_state(events: list[tuple[str, Event]]) -> MailState:
    """The MailState load_state would return for a read model built from `events` (which set
    only the domain-defaults tier, create, and never delete or update)."""
    tier_seq = {"global": 0, "domain_defaults": 0, "mailbox_defaults": 0}
    domain_defaults = DomainDefaults()
    for seq, (_, event) in enumerate(events, 1):
        if isinstance(event, DomainDefaultsSet):
            domain_defaults, tier_seq["domain_defaults"] = event.config, seq
    mailbox_defaults = MailboxDefaults()
    glob = (GlobalConfig(), tier_seq["global"])
    domains: dict[int, tuple[Domain, Resolved]] = {}
    mailboxes: list[Mailbox] = []
    aliases: list[Alias] = []
    for seq, (_, event) in enumerate(events, 1):
        match event:
            case DomainCreated() as e:
                resolved = resolve_domain(
                    glob, (domain_defaults, tier_seq["domain_defaults"]), (DomainOverrides(), 0)
                )
                values = resolved[0]
                effective = {
                    "domain_id": seq,
                    "domain_name": e.name,
                    "outgoing_ip": e.outgoing_ip,
                    **values,
                    "active": e.active,
                }
                domain = Domain(
                    id=seq,
                    name=e.name,
                    active=e.active,
                    outgoing_ip=e.outgoing_ip,
                    effective=effective,
                )
                domains[seq] = (domain, resolved)
            case MailboxCreated() as e:
                domain, resolved = domains[e.domain_id]
                own = (e.quota, seq if e.quota is not None else 0)
                values, _ = resolve_mailbox(
                    resolved, (mailbox_defaults, 0), (MailboxOverrides(), 0), own
                )
                effective = {
                    "mailbox_id": seq,
                    "mailbox_username": e.username,
                    "domain_id": e.domain_id,
                    "domain_name": domain.name,
                    **values,
                    "mailbox_active": e.active,
                    "domain_active": domain.active,
                }
                mailboxes.append(
                    Mailbox(
                        id=seq,
                        domain=domain.name,
                        local=e.username,
                        address=e.address,
                        password_hash=e.password_hash,
                        quota_bytes=int(values["quota_bytes"]),
                        active=e.active,
                        effective=effective,
                    )
                )
            case AliasCreated() as e:
                dest = tuple(p.strip() for p in e.destination.split(",") if p.strip())
                aliases.append(Alias(id=seq, source=e.source, destination=dest))
    tiers = {
        "global": msgspec.to_builtins(GlobalConfig()),
        "domain_defaults": msgspec.to_builtins(domain_defaults),
        "mailbox_defaults": msgspec.to_builtins(mailbox_defaults),
    }
    return MailState(
        domains=tuple(sorted((d for d, _ in domains.values()), key=lambda d: d.name)),
        mailboxes=tuple(sorted(mailboxes, key=lambda m: m.address)),
        aliases=tuple(sorted(aliases, key=lambda a: a.source)),
        tiers=tiers,
        seq=len(events),
    )


def build_read_model(path: Path, events: list[tuple[str, Event]]) -> sqlite3.Connection:
    """The read model of `events`, through the projector's appliers."""
    db = open_writer(path)
    meta = Meta(actor="bench", actor_id="bench", at=datetime.now(UTC))
    for start in range(0, len(events), BATCH):
        batch = []
        for seq, (subject, event) in enumerate(events[start : start + BATCH], start + 1):
            env = Envelope(meta=meta, event=event)
            batch.append(Item(seq, subject, env, encode(env)))
        _, rejected = apply_batch(db, batch)
        if rejected:
            raise RuntimeError(f"the appliers refused {len(rejected)} events: {rejected}")
    return db


# render() is pure and writes nothing: a fixed root keeps the passwd homes (and so the byte
# counts) the same wherever the bench runs.
LAYOUT = Layout(root=Path("/var/lib/mailpanel/mailstack"), sandbox=True)


def time_render(state: MailState, where: Layout, runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    files: dict[str, str] = {}
    for _ in range(runs):
        started = time.perf_counter()
        files = render(state, where)
        seconds.append(time.perf_counter() - started)
    sizes = {rel: len(text.encode()) for rel, text in files.items()}
    return {
        "seconds": seconds,
        "files": len(files),
        "bytes": sum(sizes.values()),
        "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:3],
        "rendered": files,
    }


def profile_render(state: MailState, where: Layout, top: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    render(state, where)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def measure(
    size: int, work: Path, runs: int, with_load_state: bool = True, profile: bool = False
) -> dict[str, Any]:
    """One size: build the population, time render (and load_state), return the figures."""
    started = time.perf_counter()
    events = history(size, size)
    state = in_memory_state(events)
    built_s = time.perf_counter() - started
    where = LAYOUT
    result: dict[str, Any] = {
        "size": size,
        "domains": len(state.domains),
        "mailboxes": len(state.mailboxes),
        "aliases": len(state.aliases),
        "built_s": built_s,
        **time_render(state, where, runs),
    }
    if profile:
        result["profile"] = profile_render(state, where)
    if with_load_state:
        path = work / f"read-{size}.db"
        started = time.perf_counter()
        db = build_read_model(path, events)
        result["apply_s"] = time.perf_counter() - started
        result["events"] = len(events)
        try:
            loads: list[float] = []
            loaded = MailState()
            for _ in range(runs):
                started = time.perf_counter()
                loaded = load_state(db)
                loads.append(time.perf_counter() - started)
            result["load_s"] = loads
            result["load_equal"] = loaded == state
            if not result["load_equal"]:  # at least the files must agree
                result["load_render_equal"] = render(loaded, where) == result["rendered"]
        finally:
            db.close()
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
    del result["rendered"]
    return result


def report(results: list[dict[str, Any]]) -> list[str]:
    """The printed lines."""
    out = ["render() of the whole file set (pure, in memory; median of the runs):"]
    for r in results:
        secs = r["seconds"]
        runs = ", ".join(f"{s:.2f}" for s in secs)
        largest = ", ".join(f"{rel.rsplit('/', 1)[-1]} {n / 1e6:.1f} MB" for rel, n in r["largest"])
        out.append(
            f"  {r['mailboxes']:>7,} mailboxes + {r['aliases']:>7,} aliases, {r['domains']} "
            f"domains: {statistics.median(secs):6.2f} s/render (runs {runs} s); "
            f"{r['files']} files, {r['bytes']:,} bytes"
        )
        out.append(f"      largest: {largest}")
        if "load_s" in r:
            loads = ", ".join(f"{s:.2f}" for s in r["load_s"])
            if r["load_equal"]:
                check = "equals the in-memory state"
            elif r.get("load_render_equal"):
                check = "differs from the in-memory state, renders the same files"
            else:
                check = "DIFFERS from the in-memory state and renders other files"
            out.append(
                f"      load_state: {statistics.median(r['load_s']):.2f} s (runs {loads} s) on "
                f"a read model of {r['events']:,} events built by apply_batch in "
                f"{r['apply_s']:.1f} s; snapshot {check}"
            )
        else:
            out.append("      load_state: skipped (--no-load-state)")
        if "profile" in r:
            out.append(r["profile"])
    return out


def run(
    sizes: tuple[int, ...] = SIZES,
    with_load_state: bool = True,
    profile: bool = False,
    work: Path | None = None,
) -> tuple[list[str], bool]:
    """Every size; the printed lines, and False if a loaded snapshot renders other files."""
    results = []
    with tempfile.TemporaryDirectory(prefix="mailpanel-bench-render-", dir=work) as tmp:
        for size in sizes:
            runs = 3 if size <= 20_000 else 2
            results.append(measure(size, Path(tmp), runs, with_load_state, profile))
    ok = all(r.get("load_equal", True) or r.get("load_render_equal") for r in results)
    return report(results), ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--no-load-state", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one render per size")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    lines, ok = run(sizes, not args.no_load_state, args.profile)
    print("\n".join(lines))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
