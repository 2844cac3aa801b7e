"""The Postfix access-policy delegation service: core.policy's decisions over the
SMTPD_POLICY_README protocol, with its counters in a SQLite file.

Postfix sends `name=value` lines ending with an empty line and reads `action=...` and an empty
line back; one connection carries many requests, one at a time. Each request is decided and its
effects are written before the answer goes out, inside one step of the event loop: requests of
all connections are serialised, so two messages of one user can never both pass the last unit
of a daily limit. Anything that is not a well-formed request is answered `action=DUNNO` and
logged; the connection stays usable. Every failure inside (a SQLite error, a bug) also answers
DUNNO: the service fails open, as Postfix's `default_action=DUNNO` does when it is unreachable.

The Policy snapshot is a plain attribute: `server.policy = policy_from_state(...)` swaps it for
every request that starts after the assignment.
"""

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import msgspec

from core.policy import (
    END_OF_MESSAGE,
    RCPT,
    Decision,
    Malformed,
    Policy,
    Request,
    Triplet,
    decide,
    utc_day,
)
from workers.reconcile.state import MailState, load_state

log = logging.getLogger("mailpanel.policy")

MAX_LINE = 2048  # bytes of one attribute line, without its newline
MAX_ATTRIBUTES = 100  # attribute lines of one request
PRUNE_EVERY_S = 3600.0
SENT_KEEP_DAYS = 7  # send-counter rows older than this many days are pruned
MAX_TRANSACTIONS = 4096  # mail transactions whose accepted recipients are remembered
MAX_TRACKED_RECIPIENTS = 10000  # per transaction (Postfix's smtpd_recipient_limit is 1000)
DUNNO_ANSWER = b"action=DUNNO\n\n"
WHITELIST_ROWS = "SELECT entry_type, value FROM whitelist"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    user TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (user, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS greylist (
    client_net TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen REAL NOT NULL,
    passed_at REAL,
    PRIMARY KEY (client_net, sender, recipient)
) WITHOUT ROWID;
"""
SENT_TODAY = "SELECT count FROM sent WHERE user = ? AND day = ?"
COUNT_SENT = (
    "INSERT INTO sent (user, day, count) VALUES (?, ?, 1) "
    "ON CONFLICT (user, day) DO UPDATE SET count = count + 1"
)
GREYLIST = (
    "SELECT first_seen, passed_at FROM greylist "
    "WHERE client_net = ? AND sender = ? AND recipient = ?"
)
GREYLIST_SEEN = (
    "INSERT INTO greylist (client_net, sender, recipient, first_seen, passed_at) "
    "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (client_net, sender, recipient) "
    "DO UPDATE SET first_seen = excluded.first_seen, passed_at = NULL"
)
GREYLIST_PASS = (
    "INSERT INTO greylist (client_net, sender, recipient, first_seen, passed_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (client_net, sender, recipient) "
    "DO UPDATE SET passed_at = excluded.passed_at"
)
PRUNE_GREYLIST = "DELETE FROM greylist WHERE coalesce(passed_at, first_seen) < ?"
PRUNE_SENT = "DELETE FROM sent WHERE day < ?"


class PolicyStore:
    """The service's counters (core.policy.Counters) in one SQLite file (WAL), so a restart
    keeps the messages counted today and the greylist. Every write is its own transaction,
    committed before the answer is sent."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses no commit
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- core.policy.Counters

    def sent_today(self, user: str, day: str) -> int:
        row = self.db.execute(SENT_TODAY, (user, day)).fetchone()
        return int(row[0]) if row else 0

    def greylist(self, triplet: Triplet) -> tuple[float, float | None] | None:
        row = self.db.execute(GREYLIST, triplet).fetchone()
        if row is None:
            return None
        return float(row[0]), None if row[1] is None else float(row[1])

    # ---- effects

    def count_sent(self, user: str, day: str) -> None:
        self.db.execute(COUNT_SENT, (user, day))

    def greylist_seen(self, triplet: Triplet, now: float) -> None:
        self.db.execute(GREYLIST_SEEN, (*triplet, now))

    def greylist_pass(self, triplet: Triplet, now: float) -> None:
        self.db.execute(GREYLIST_PASS, (*triplet, now, now))

    def persist(self, decision: Decision, req: Request, now: float) -> None:
        """The effects of one decision."""
        if decision.count_sent and req.sasl_username:
            self.count_sent(req.sasl_username, utc_day(now))
        if decision.greylist_seen is not None:
            self.greylist_seen(decision.greylist_seen, now)
        if decision.greylist_pass is not None:
            self.greylist_pass(decision.greylist_pass, now)

    def prune(self, now: float, max_age_days: int) -> tuple[int, int]:
        """Drop greylist triplets idle (unseen and unpassed) for longer than the max age, and
        send counters of days long past; how many rows of each went."""
        greylist = 0
        if max_age_days > 0:
            greylist = self.db.execute(PRUNE_GREYLIST, (now - max_age_days * 86400.0,)).rowcount
        sent = self.db.execute(PRUNE_SENT, (utc_day(now - SENT_KEEP_DAYS * 86400.0),)).rowcount
        return greylist, sent


def policy_from_state(state: MailState, whitelist_rows: Iterable[tuple[str, str]]) -> Policy:
    """The snapshot for `decide` from the agent's MailState and the whitelist rows
    (`SELECT entry_type, value FROM whitelist`). A mailbox is active only when its domain is;
    an empty `effective` (no row yet) means the tier defaults."""
    domains: dict[str, dict[str, Any]] = {
        d.name: {**d.effective, "active": d.active} for d in state.domains
    }
    mailboxes: dict[str, dict[str, Any]] = {}
    for m in state.mailboxes:
        domain_active = domains.get(m.domain, {}).get("active", True)
        mailboxes[m.address] = {**m.effective, "active": m.active and bool(domain_active)}
    return Policy.build(
        mailboxes=mailboxes,
        domains=domains,
        settings=state.global_config,
        whitelist=[(str(t), str(v)) for t, v in whitelist_rows],
    )


def load_policy(db: sqlite3.Connection) -> Policy:
    """policy_from_state over a read model, the state and the whitelist in one snapshot."""
    began = not db.in_transaction
    if began:
        db.execute("BEGIN")
    try:
        state = load_state(db)
        rows = db.execute(WHITELIST_ROWS).fetchall()
    finally:
        if began:
            db.execute("ROLLBACK")
    return policy_from_state(state, rows)


def _whole(block: bytes) -> dict[str, str] | None:
    """The attributes of one request's lines (without the empty line), or None when they are
    not plainly well-formed (the line-by-line path then says why)."""
    if b"\r" in block:
        return None
    lines = block.split(b"\n")
    if len(lines) > MAX_ATTRIBUTES or max(map(len, lines)) > MAX_LINE:
        return None
    try:
        attrs = dict(line.split("=", 1) for line in block.decode("utf-8", "replace").split("\n"))
    except ValueError:  # a line without "="
        return None
    return None if "" in attrs else attrs


class RequestReader:
    """Splits a connection's bytes into requests: each is a dict of attributes, or a str
    saying why it is malformed. A line longer than MAX_LINE is discarded as it arrives (only
    MAX_LINE bytes are ever buffered), and so is every further attribute of a request past
    MAX_ATTRIBUTES; the request is still answered when its empty line comes."""

    def __init__(self) -> None:
        self.buffer = b""
        self.attrs: dict[str, str] = {}
        self.lines = 0
        self.error = ""
        self.skipping = False  # inside an overlong line: drop bytes up to its newline

    def feed(self, data: bytes) -> list[dict[str, str] | str]:
        buffer = self.buffer + data if self.buffer else data
        out: list[dict[str, str] | str] = []
        start = 0
        # Fast path: whole well-formed requests, each split and decoded in one go. Anything
        # else (a partial request, CR, an error to report) goes line by line below.
        while not (self.lines or self.skipping):
            end = buffer.find(b"\n\n", start)
            if end < 0 or buffer.startswith(b"\n", start):
                break
            attrs = _whole(buffer[start:end])
            if attrs is None:
                break
            out.append(attrs)
            start = end + 2
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if self.skipping:
                self.skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                out.append((self.error or self.attrs) if self.lines else "empty request")
                self.attrs, self.lines, self.error = {}, 0, ""
                continue
            self.lines += 1
            if self.error:
                continue
            if len(line) > MAX_LINE:
                self.error = f"attribute line longer than {MAX_LINE} bytes"
            elif self.lines > MAX_ATTRIBUTES:
                self.error = f"more than {MAX_ATTRIBUTES} attributes"
            else:
                name, eq, value = line.partition(b"=")
                if not eq or not name:
                    self.error = f"not a name=value line: {line[:60]!r}"
                else:
                    key = name.decode("utf-8", "replace")
                    self.attrs[key] = value.decode("utf-8", "replace")
        rest = buffer[start:]
        if len(rest) > MAX_LINE:
            if not self.skipping:
                self.lines += 1
                self.error = self.error or f"attribute line longer than {MAX_LINE} bytes"
            self.skipping = True
            rest = b""
        self.buffer = rest
        return out


class _Connection(asyncio.Protocol):
    """One Postfix connection. Answers are computed synchronously as the bytes arrive and
    written in one go; while the client does not read them (the transport's buffer is full),
    its further requests are not read either."""

    def __init__(self, server: "PolicyServer") -> None:
        self.server = server
        self.reader = RequestReader()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            answers = [self.server.answer(item, self.peer) for item in self.reader.feed(data)]
        except Exception:
            log.exception("policy connection from %s failed", self.peer)
            self.close()
            return
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PolicyServer:
    """The service on `host:port` (loopback; port 0 picks one, see `.port`)."""

    def __init__(
        self,
        policy: Policy,
        store: PolicyStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.policy = policy
        self.store = store
        self.host = host
        self.requested_port = port
        self.clock = clock
        self.prune_every_s = prune_every_s
        self.requests = 0
        self.malformed = 0
        self.failures = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._next_prune = 0.0
        # instance -> recipients accepted in that transaction (an ordered set), oldest first.
        self._transactions: OrderedDict[str, dict[str, None]] = OrderedDict()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the policy server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._prune(self.clock())
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.requested_port
        )
        log.info("policy service listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> "PolicyServer":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- one request

    def answer(self, item: dict[str, str] | str, peer: Any = None) -> bytes:
        """The reply to one parsed request (attributes, or why it is malformed)."""
        self.requests += 1
        if isinstance(item, str):
            return self._malformed(item, peer)
        try:
            req = Request.from_attrs(item)
        except Malformed as exc:
            return self._malformed(str(exc), peer)
        try:
            now = self.clock()
            req = self._in_transaction(req)
            decision = decide(req, self.policy, self.store, now)
            self.store.persist(decision, req, now)
            self._remember(req, decision)
            if now >= self._next_prune:
                self._prune(now)
        except Exception:
            self.failures += 1
            log.exception("policy request failed; answering DUNNO")
            return DUNNO_ANSWER
        if decision.action != "DUNNO":
            log.info(
                "policy %s %s sasl=%s from=%s to=%s client=%s: %s",
                req.service,
                req.protocol_state,
                req.sasl_username or "-",
                req.sender or "<>",
                req.recipient or ",".join(req.recipients) or "-",
                req.client_address,
                decision.action,
            )
            action = decision.action.replace("\r", " ").replace("\n", " ")
            return b"action=" + action.encode("utf-8", "replace") + b"\n\n"
        return DUNNO_ANSWER

    def _malformed(self, reason: str, peer: Any) -> bytes:
        self.malformed += 1
        log.warning("malformed policy request from %s: %s", peer, reason)
        return DUNNO_ANSWER

    def _in_transaction(self, req: Request) -> Request:
        """The request with the recipients accepted earlier in its transaction; at RCPT, where
        Postfix sends recipient_count 0, their number is the count."""
        accepted = self._transactions.get(req.instance) if req.instance else None
        if not accepted:
            return req
        recipients = tuple(accepted)
        if req.protocol_state == RCPT:
            count = max(req.recipient_count, len(recipients))
            return msgspec.structs.replace(req, recipients=recipients, recipient_count=count)
        return msgspec.structs.replace(req, recipients=recipients)

    def _remember(self, req: Request, decision: Decision) -> None:
        if not req.instance:
            return
        if req.protocol_state == END_OF_MESSAGE:
            self._transactions.pop(req.instance, None)
            return
        if decision.accepted_recipient is None:
            return
        accepted = self._transactions.get(req.instance)
        if accepted is None:
            accepted = self._transactions[req.instance] = {}
            while len(self._transactions) > MAX_TRANSACTIONS:
                self._transactions.popitem(last=False)
        if len(accepted) < MAX_TRACKED_RECIPIENTS:
            accepted[decision.accepted_recipient] = None

    def _prune(self, now: float) -> None:
        self._next_prune = now + self.prune_every_s
        try:
            greylist, sent = self.store.prune(now, self.policy.settings.greylist_max_age_days)
        except sqlite3.Error:
            log.exception("pruning the policy store failed")
            return
        if greylist or sent:
            log.info("pruned %d greylist triplets and %d send counters", greylist, sent)
