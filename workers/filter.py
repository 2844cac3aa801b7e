"""The before-queue content filter: spam (spamd) and virus (clamd) scanning with per-domain and
per-mailbox actions, and the quarantine store.

Postfix's port-25 smtpd proxies each SMTP session to this filter (smtpd_proxy_filter, see
SMTPD_PROXY_README) on 127.0.0.1:<filter_port>. The filter takes MAIL, RCPT and DATA, and at
the end of DATA scans the message (spamd SYMBOLS and clamd INSTREAM, concurrently), decides per
recipient with core.spam, and answers the one reply the sending client sees:

- reject: "550 5.7.1 Message rejected as spam" or "554 5.7.1 Virus found: <name>". A
  before-queue filter answers once per message, so when any recipient's action is reject the
  message is rejected for every recipient (the strictest action wins).
- quarantine: the raw message (with the verdict headers) is written to a 0600 .eml file and a
  row in the SQLite table `quarantine`; those recipients get nothing now (release delivers).
- tag / deliver: the verdict headers are added (forged copies of them removed) and the message
  is re-injected over SMTP into Postfix's after-filter smtpd on 127.0.0.1:<reinject_port>, one
  transaction per set of identical headers; Postfix's reply (queue id) is relayed back.
- A scanner that cannot be reached (or times out, or errs) does not stop mail: the message is
  delivered with "X-Spam-Status: unscanned" (and/or "X-Virus-Status: unscanned") and a warning
  is logged: the filter fails open. A failure of the filter itself answers 451 (the client
  retries); a re-injection failure relays the after-filter smtpd's reply, or 451 when it cannot
  be reached. Re-injection is all-or-nothing per transaction: when the after-filter smtpd
  refuses any recipient, that transaction is abandoned and its reply is the answer.

Recipients are matched to settings by address: a mailbox (also user+tag@), an alias or
catch-all with exactly one mailbox destination (that mailbox), otherwise the recipient's domain,
and for domains we do not host (relay from mynetworks) the domain_defaults tier. The before-filter
smtpd sees recipients before virtual alias expansion, so a multi-target alias gets its domain's
settings.

The settings snapshot is a plain attribute: `content_filter.settings = settings_from_state(...)`
applies to every message whose DATA ends after the assignment. spamd's address is the global
spam_remote_host/spam_remote_port when set, else the local spamd the filter was given.
"""

import asyncio
import contextlib
import email.parser
import email.policy
import logging
import os
import pwd
import re
import socket
import sqlite3
import stat
import struct
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import msgspec
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.spam import OWN_HEADERS, MessageDecision, RecipientPolicy, decide_message
from core.spam import recipient_policy as build_policy
from workers.reconcile.stack import stop_process, wait_until
from workers.reconcile.state import MailState, load_state
from workers.reconcile.validate import which

log = logging.getLogger("mailpanel.filter")

SPAMD_TIMEOUT_S = 30.0
CLAMD_TIMEOUT_S = 30.0
REINJECT_TIMEOUT_S = 45.0  # scan + re-inject stay under Postfix's smtpd_proxy_timeout (100 s)
SPAM_MAX_BYTES = 2 * 1024 * 1024  # larger messages are not sent to spamd (score: unscanned)
DATA_SIZE_LIMIT = 64 * 1024 * 1024
CLAMD_CHUNK = 64 * 1024
MAX_REPLY_LINE = 4096
TEMPFAIL = "451 4.3.0 Error: content filter temporarily unavailable"
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
MAIL_PASSTHROUGH = frozenset({"RET", "ENVID", "AUTH"})  # besides SIZE, BODY, SMTPUTF8
RCPT_PASSTHROUGH = frozenset({"NOTIFY", "ORCPT"})

# ---- the Postfix side -------------------------------------------------------------------


def proxy_filter_options(filter_port: int, host: str = "127.0.0.1") -> str:
    """The -o lines for the port-25 smtpd service in master.cf (the before-filter smtpd)."""
    return f"  -o smtpd_proxy_filter={host}:{int(filter_port)}\n"


def reinject_service(reinject_port: int, host: str = "127.0.0.1") -> str:
    """The master.cf entry of the after-filter smtpd the filter re-injects into (and quarantine
    release delivers through). It repeats no check the before-filter smtpd did: the recipient
    restrictions (including the policy service, which would count a message twice) and the
    end-of-data restrictions are emptied, only loopback may relay through it, and recipients
    are not looked up again. XFORWARD lets it log and put the original client in Received:.
    Milters (OpenDKIM) run here, in its cleanup, after the filter added its headers."""
    return (
        f"{host}:{int(reinject_port)} inet n - n - - smtpd\n"
        "  -o syslog_name=postfix/reinject\n"
        "  -o smtpd_proxy_filter=\n"
        "  -o content_filter=\n"
        "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n"
        "  -o smtpd_client_restrictions=\n"
        "  -o smtpd_helo_restrictions=\n"
        "  -o smtpd_sender_restrictions=\n"
        "  -o smtpd_relay_restrictions=\n"
        "  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n"
        "  -o smtpd_data_restrictions=\n"
        "  -o smtpd_end_of_data_restrictions=\n"
        "  -o mynetworks=127.0.0.0/8\n"
        "  -o smtpd_client_connection_count_limit=0\n"
        "  -o smtpd_client_connection_rate_limit=0\n"
        "  -o receive_override_options=no_unknown_recipient_checks\n"
    )


# ---- settings ---------------------------------------------------------------------------


class FilterSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the filter needs from a MailState: effective settings by domain and mailbox."""

    domains: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    mailboxes: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # Alias or catch-all source -> its one mailbox destination (aliases to several are left out).
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    domain_defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    spam_remote_host: str = ""
    spam_remote_port: int = 783

    def _mailbox(self, address: str) -> str | None:
        local, _, domain = address.rpartition("@")
        base = f"{local.split('+', 1)[0]}@{domain}" if "+" in local else address
        for candidate in dict.fromkeys((address, base)):
            if candidate in self.mailboxes:
                return candidate
        for candidate in dict.fromkeys((address, base, f"@{domain}")):
            target = self.aliases.get(candidate)
            if target is not None and target in self.mailboxes:
                return target
        return None

    def policy_for(self, recipient: str) -> RecipientPolicy:
        address = recipient.strip().strip("<>").lower()
        mailbox = self._mailbox(address)
        if mailbox is not None:
            domain = mailbox.rpartition("@")[2]
            effective = self.domains.get(domain, self.domain_defaults)
            return build_policy(effective, self.mailboxes[mailbox])
        domain = address.rpartition("@")[2]
        return build_policy(self.domains.get(domain, self.domain_defaults))


def settings_from_state(state: MailState) -> FilterSettings:
    """The filter's snapshot of a MailState (as policy_from_state is the policy service's)."""
    mailboxes = {m.address.lower(): dict(m.effective) for m in state.mailboxes}
    aliases = {}
    for alias in state.aliases:
        targets = {t.lower() for t in alias.destination}
        if len(targets) == 1:
            aliases[alias.source.lower()] = targets.pop()
    glob = state.global_config
    return FilterSettings(
        domains={d.name.lower(): dict(d.effective) for d in state.domains},
        mailboxes=mailboxes,
        aliases=aliases,
        domain_defaults=dict(state.tiers.get("domain_defaults") or {}),
        spam_remote_host=str(glob.get("spam_remote_host") or ""),
        spam_remote_port=int(glob.get("spam_remote_port") or 783),
    )


def load_filter_settings(db: sqlite3.Connection) -> FilterSettings:
    return settings_from_state(load_state(db))


# ---- scanners ---------------------------------------------------------------------------


class ScannerError(RuntimeError):
    pass


class SpamResult(NamedTuple):
    score: float
    tests: tuple[str, ...]


_SPAM_LINE = re.compile(r"^Spam:\s*(\w+)\s*;\s*(-?[0-9.]+)\s*/\s*(-?[0-9.]+)\s*$", re.I)


def parse_spamd_reply(data: bytes) -> SpamResult:
    """A spamd SYMBOLS/CHECK reply: "SPAMD/1.1 0 EX_OK", headers, a blank line, the symbols."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/") or status[1] != "0":
        raise ScannerError(f"spamd answered {lines[0][:200]!r}")
    for line in lines[1:]:
        match = _SPAM_LINE.match(line)
        if match:
            tests = tuple(t.strip() for t in body.decode("latin-1").split(",") if t.strip())
            return SpamResult(float(match.group(2)), tests)
    raise ScannerError("spamd answered without a Spam: line")


async def spamd_symbols(
    host: str, port: int, message: bytes, *, timeout: float = SPAMD_TIMEOUT_S
) -> SpamResult:
    """Score `message` with spamd's SYMBOLS command (the spamc protocol, SPAMC/1.5)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message))
            writer.write(message)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            data = await reader.read(1 << 20)
            while chunk := await reader.read(1 << 16):
                data += chunk
                if len(data) > 1 << 20:
                    raise ScannerError("spamd reply too long")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return parse_spamd_reply(data)


def parse_clamd_reply(reply: bytes) -> str | None:
    """`stream: OK` -> None; `stream: <name> FOUND` -> name; anything else is an error."""
    text = reply.rstrip(b"\0\n").decode("utf-8", "replace")
    _, _, result = text.partition(": ")
    if text.endswith(" FOUND") and result:
        return result[: -len(" FOUND")]
    if result == "OK":
        return None
    raise ScannerError(f"clamd answered {text[:200]!r}")


async def clamd_instream(
    host: str, port: int, message: bytes, *, timeout: float = CLAMD_TIMEOUT_S
) -> str | None:
    """Scan `message` with clamd's INSTREAM command: the virus name, or None when clean."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            try:
                writer.write(b"zINSTREAM\0")
                view = memoryview(message)
                for start in range(0, len(message), CLAMD_CHUNK):
                    chunk = view[start : start + CLAMD_CHUNK]
                    writer.write(struct.pack(">I", len(chunk)))
                    writer.write(chunk)
                    await writer.drain()
                writer.write(struct.pack(">I", 0))
                await writer.drain()
            except ConnectionError:
                pass  # clamd closes early on "size limit exceeded": its reply says so
            reply = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as exc:
            reply = exc.partial
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return parse_clamd_reply(reply)


# ---- re-injection (a small SMTP client) -------------------------------------------------


class SmtpReply(NamedTuple):
    code: int
    text: str  # the last line's text

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def line(self) -> str:
        return f"{self.code} {self.text}".strip()


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}

    async def _read(self) -> tuple[int, list[str]]:
        """One reply: its code and the text of each of its lines."""
        lines: list[str] = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("connection closed")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise ConnectionError(f"bad reply {line[:100]!r}")
            lines.append(line[4:])
            if len(lines) > 100:
                raise ConnectionError("reply too long")
            if len(line) == 3 or line[3] != "-":
                return int(line[:3]), lines

    async def reply(self) -> SmtpReply:
        code, lines = await self._read()
        return SmtpReply(code, lines[-1])

    async def command(self, line: str) -> SmtpReply:
        self.writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def ehlo(self, helo: str) -> SmtpReply:
        """EHLO, remembering the extensions the server announced."""
        self.writer.write(f"EHLO {helo}\r\n".encode())
        await self.writer.drain()
        code, lines = await self._read()
        for ext in lines[1:]:
            name, _, params = ext.partition(" ")
            self.extensions[name.upper()] = params
        return SmtpReply(code, lines[-1])

    async def data(self, message: bytes) -> SmtpReply:
        reply = await self.command("DATA")
        if reply.code != 354:
            return reply
        body = message if message.endswith(b"\r\n") else message + b"\r\n"
        if body.startswith(b"."):
            body = b"." + body
        self.writer.write(body.replace(b"\r\n.", b"\r\n.."))
        self.writer.write(b".\r\n")
        await self.writer.drain()
        return await self.reply()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.command("QUIT")


def _xtext_ok(value: str) -> bool:
    return bool(value) and all("!" <= ch <= "~" and ch != "=" for ch in value)


async def reinject(
    host: str,
    port: int,
    *,
    sender: str,
    recipients: Sequence[tuple[str, Sequence[str]]],
    message: bytes,
    mail_params: Sequence[str] = (),
    xforward: Mapping[str, str] | None = None,
    helo: str = "localhost",
    timeout: float = REINJECT_TIMEOUT_S,
) -> SmtpReply:
    """One SMTP transaction into Postfix: MAIL, every RCPT (with its parameters), DATA. When any
    recipient is refused the transaction is abandoned and that reply returned; an unreachable
    or broken server gives TEMPFAIL."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            client = _Client(reader, writer)
            greeting = await client.reply()
            if greeting.code != 220:
                return greeting
            reply = await client.ehlo(helo)
            if not reply.ok:
                return reply
            offered = set(client.extensions.get("XFORWARD", "").upper().split())
            pairs = [
                f"{k}={v}"
                for k, v in (xforward or {}).items()
                if k in offered and k in XFORWARD_ATTRS and _xtext_ok(v)
            ]
            if pairs:
                log.debug("XFORWARD %s", pairs)
                reply = await client.command("XFORWARD " + " ".join(pairs))
                if not reply.ok:
                    log.warning("XFORWARD refused by %s:%d: %s", host, port, reply.line())
            params = _mail_params(mail_params, client.extensions)
            reply = await client.command(f"MAIL FROM:<{_path(sender)}>{params}")
            if not reply.ok:
                return reply
            dsn = "DSN" in client.extensions
            for rcpt, options in recipients:
                extra = "".join(
                    f" {o}" for o in options if dsn and _param_name(o) in RCPT_PASSTHROUGH
                )
                reply = await client.command(f"RCPT TO:<{_path(rcpt)}>{extra}")
                if not reply.ok:
                    await client.command("RSET")
                    await client.quit()
                    return reply
            reply = await client.data(message)
            await client.quit()
            return reply
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        log.warning("re-injection into %s:%d failed: %s", host, port, exc or type(exc).__name__)
        return SmtpReply(451, "4.3.0 Error: re-injection failed, try again later")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _path(address: str) -> str:
    address = "" if address == "<>" else address
    if any(ch in address for ch in "<>\r\n") or len(address) > 1000:
        raise ConnectionError(f"refusing to send address {address[:60]!r}")
    return address


def _param_name(option: str) -> str:
    return option.partition("=")[0].upper()


def _mail_params(options: Sequence[str], extensions: Mapping[str, str]) -> str:
    """The MAIL parameters the next hop announced support for."""
    wanted = {
        "SIZE": "SIZE" in extensions,
        "BODY": "8BITMIME" in extensions,
        "SMTPUTF8": "SMTPUTF8" in extensions,
        "RET": "DSN" in extensions,
        "ENVID": "DSN" in extensions,
        "AUTH": "AUTH" in extensions,
    }
    return "".join(f" {o}" for o in options if wanted.get(_param_name(o), False))


# ---- headers ----------------------------------------------------------------------------

_OWN = frozenset(h.lower().encode() for h in OWN_HEADERS)


def _fold(name: str, value: str, width: int = 78) -> bytes:
    """A header line, folded before a word (after a space or a comma) where it would pass
    `width`. Unfolding gives the value back, with a tab where a comma-separated list broke."""
    lines: list[str] = []
    current = f"{name}:"
    first = True
    for spaces, word in re.findall(r"( *)([^ ,]+,?|,)", value):
        candidate = current + (" " if spaces or first else "") + word
        if len(candidate) > width and not first:
            lines.append(current)
            current = f"\t{word}"
        else:
            current = candidate
        first = False
    lines.append(current)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")


def rewrite_headers(message: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """`message` with every header of OWN_HEADERS removed (with its continuation lines) and
    `headers` prepended. The body is left as it is."""
    if message.startswith(b"\r\n"):
        head, body = b"", message
    else:
        end = message.find(b"\r\n\r\n")
        head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        dropping = name in _OWN
        if not dropping:
            kept.append(line)
    rest = b"\r\n".join(kept)
    added = b"".join(_fold(name, value) for name, value in headers)
    return added + rest + body


def subject_of(message: bytes) -> str:
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message)
        subject = str(parsed.get("subject", "") or "")
    except Exception:  # a header the parser cannot make sense of
        subject = ""
    return " ".join(subject.split())[:998]


# ---- the quarantine store ---------------------------------------------------------------

QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    score REAL,
    virus TEXT,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_at);
"""
_COLUMNS = "id, received_at, sender, recipients, subject, score, virus, reason, path, size"


class QuarantineItem(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    received_at: str  # ISO 8601 UTC, "2026-05-02T12:00:00Z"
    sender: str
    recipients: list[str]
    subject: str
    score: float | None
    virus: str | None
    reason: str  # "spam" or "virus"
    path: str
    size: int


class QuarantinePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[QuarantineItem]
    total: int
    limit: int
    offset: int


def open_quarantine_db(path: str | Path) -> sqlite3.Connection:
    """The quarantine table in a SQLite file (WAL; autocommit: every write is its own
    transaction)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA busy_timeout = 5000")
    db.executescript(QUARANTINE_SCHEMA)
    return db


def _item(row: Sequence[Any]) -> QuarantineItem:
    return QuarantineItem(
        id=int(row[0]),
        received_at=str(row[1]),
        sender=str(row[2]),
        recipients=list(msgspec.json.decode(str(row[3]).encode(), type=list[str])),
        subject=str(row[4]),
        score=None if row[5] is None else float(row[5]),
        virus=None if row[6] is None else str(row[6]),
        reason=str(row[7]),
        path=str(row[8]),
        size=int(row[9]),
    )


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_eml(directory: Path, message: bytes, now: float) -> Path:
    """The message as a 0600 file under directory/<UTC date>/ (directories 0700), durable
    (fsynced) before this returns."""
    day = directory / datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    for folder in (directory, day):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = day / f"{uuid.uuid4().hex}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(message)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(day, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def add_quarantine(
    db: sqlite3.Connection,
    *,
    path: Path,
    sender: str,
    recipients: Sequence[str],
    subject: str,
    score: float | None,
    virus: str | None,
    reason: str,
    size: int,
    now: float,
) -> int:
    cur = db.execute(
        "INSERT INTO quarantine (received_at, sender, recipients, subject, score, virus, reason, "
        "path, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            _iso(now),
            sender,
            msgspec.json.encode(list(recipients)).decode(),
            subject,
            score,
            virus,
            reason,
            str(path),
            size,
        ),
    )
    return int(cur.lastrowid or 0)


def list_quarantine(db: sqlite3.Connection, *, limit: int = 50, offset: int = 0) -> QuarantinePage:
    """One page, newest first."""
    limit = max(1, min(int(limit), 500))
    offset = max(0, int(offset))
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM quarantine ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
    ).fetchall()
    total = int(db.execute("SELECT count(*) FROM quarantine").fetchone()[0])
    return QuarantinePage(items=[_item(r) for r in rows], total=total, limit=limit, offset=offset)


def get_quarantine(db: sqlite3.Connection, qid: int) -> QuarantineItem | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (int(qid),)).fetchone()
    return None if row is None else _item(row)


def read_quarantined(item: QuarantineItem) -> bytes:
    return Path(item.path).read_bytes()


def delete_quarantine(db: sqlite3.Connection, qid: int) -> bool:
    """Remove the row and its file; False when there is no such row."""
    item = get_quarantine(db, qid)
    if item is None:
        return False
    db.execute("DELETE FROM quarantine WHERE id = ?", (item.id,))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(item.path)
    return True


async def release_quarantine(
    db: sqlite3.Connection,
    qid: int,
    host: str,
    port: int,
    *,
    helo: str = "localhost",
    timeout: float = REINJECT_TIMEOUT_S,
) -> SmtpReply:
    """Deliver a held message to its original recipients through the re-injection smtpd (not
    scanned again), then delete it. On failure it stays held and the reply says why.
    Raises KeyError when there is no such message."""
    item = get_quarantine(db, qid)
    if item is None:
        raise KeyError(qid)
    message = await asyncio.to_thread(read_quarantined, item)
    reply = await reinject(
        host,
        port,
        sender=item.sender,
        recipients=[(r, ()) for r in item.recipients],
        message=message,
        helo=helo,
        timeout=timeout,
    )
    if reply.ok:
        delete_quarantine(db, item.id)
        log.info("quarantine %d released to %s: %s", item.id, item.recipients, reply.line())
    return reply


# ---- the SMTP server --------------------------------------------------------------------


class _Envelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.mail_params: list[str] = []
        self.recipients: list[tuple[str, list[str]]] = []


def _split_params(arg: str | None, passthrough: frozenset[str]) -> tuple[str | None, list[str]]:
    """(arg without the parameters aiosmtpd would refuse, those parameters as sent)."""
    if arg is None:
        return None, []
    close = arg.find(">")
    if close < 0:
        return arg, []
    head, tail = arg[: close + 1], arg[close + 1 :].split()
    kept = [t for t in tail if _param_name(t) not in passthrough]
    extra = [t for t in tail if _param_name(t) in passthrough]
    return " ".join([head, *kept]), extra


class _ProxySMTP(SMTP):
    """aiosmtpd's SMTP, made transparent enough for Postfix's smtpd_proxy: XFORWARD, DSN
    parameters passed through, long lines and long commands accepted."""

    line_length_limit = 1 << 20

    def __init__(self, handler: "ContentFilter", **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.command_size_limit = 4096
        self.command_size_limits = defaultdict(lambda: 4096)
        self.xforward: dict[str, str] = {}
        self.pending: list[str] = []

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        pairs = [p.partition("=") for p in (arg or "").split()]
        if not pairs or any(not eq or name.upper() not in XFORWARD_ATTRS for name, eq, _ in pairs):
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value...")
            return
        for name, _, value in pairs:
            self.xforward[name.upper()] = value
        log.debug("XFORWARD received: %s", self.xforward)
        await self.push("250 2.0.0 Ok")

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, self.pending = _split_params(arg, MAIL_PASSTHROUGH)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, self.pending = _split_params(arg, RCPT_PASSTHROUGH)
        await super().smtp_RCPT(arg)


class ContentFilter:
    """The filter on `host:port` (port 0 picks one, see `.port`), an aiosmtpd handler."""

    def __init__(
        self,
        settings: FilterSettings,
        *,
        quarantine_db: sqlite3.Connection,
        quarantine_dir: str | Path,
        reinject_port: int,
        reinject_host: str = "127.0.0.1",
        spamd: tuple[str, int] | None = None,
        clamd: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "localhost",
        spamd_timeout: float = SPAMD_TIMEOUT_S,
        clamd_timeout: float = CLAMD_TIMEOUT_S,
        reinject_timeout: float = REINJECT_TIMEOUT_S,
        spam_max_bytes: int = SPAM_MAX_BYTES,
        data_size_limit: int = DATA_SIZE_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = quarantine_db
        self.quarantine_dir = Path(quarantine_dir)
        self.reinject_host = reinject_host
        self.reinject_port = reinject_port
        self.spamd = spamd
        self.clamd = clamd
        self.host = host
        self.requested_port = port
        self.hostname = hostname
        self.spamd_timeout = spamd_timeout
        self.clamd_timeout = clamd_timeout
        self.reinject_timeout = reinject_timeout
        self.spam_max_bytes = spam_max_bytes
        self.data_size_limit = data_size_limit
        self.clock = clock
        self.messages = 0
        self.unscanned = 0
        self.failures = 0
        self._server: asyncio.Server | None = None

    # ---- lifecycle

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the content filter is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    def _protocol(self) -> _ProxySMTP:
        return _ProxySMTP(
            self,
            hostname=self.hostname,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        # aiosmtpd logs every command (addresses included) at INFO on "mail.log": keep that to
        # warnings unless the application configured the logger itself.
        smtp_log = logging.getLogger("mail.log")
        if smtp_log.level == logging.NOTSET:
            smtp_log.setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.requested_port)
        log.info("content filter listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> "ContentFilter":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- aiosmtpd hooks

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-XFORWARD " + " ".join(XFORWARD_ATTRS), "250-DSN"]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(server, _ProxySMTP) and isinstance(envelope, _Envelope)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.mail_params = [*options, *server.pending]
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(server, _ProxySMTP) and isinstance(envelope, _Envelope)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.recipients.append((address, [*options, *server.pending]))
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _ProxySMTP) and isinstance(envelope, _Envelope)
        self.messages += 1
        try:
            return await self._process(server, envelope)
        except Exception:
            self.failures += 1
            log.exception("content filter failed on a message from %s", envelope.mail_from)
            return TEMPFAIL

    async def handle_exception(self, error: Exception) -> str:
        self.failures += 1
        log.error("content filter session error: %r", error)
        return TEMPFAIL

    # ---- one message

    def _spamd_address(self) -> tuple[str, int] | None:
        if self.settings.spam_remote_host:
            return self.settings.spam_remote_host, self.settings.spam_remote_port
        return self.spamd

    async def _score(self, message: bytes) -> SpamResult | None:
        address = self._spamd_address()
        if address is None:
            return None
        if len(message) > self.spam_max_bytes:
            log.info(
                "message of %d bytes not sent to spamd (limit %d)",
                len(message),
                self.spam_max_bytes,
            )
            return None
        try:
            return await spamd_symbols(*address, message, timeout=self.spamd_timeout)
        except (
            OSError,
            TimeoutError,
            ScannerError,
            ValueError,
            asyncio.IncompleteReadError,
        ) as exc:
            log.warning("spamd at %s:%d unavailable, message not scored: %r", *address, exc)
            return None

    async def _virus(self, message: bytes) -> tuple[str | None, bool]:
        if self.clamd is None:
            return None, False
        try:
            return await clamd_instream(*self.clamd, message, timeout=self.clamd_timeout), True
        except (OSError, TimeoutError, ScannerError, asyncio.IncompleteReadError) as exc:
            log.warning("clamd at %s:%d unavailable, message not scanned: %r", *self.clamd, exc)
            return None, False

    async def _process(self, server: _ProxySMTP, envelope: _Envelope) -> str:
        message = envelope.original_content or b""
        sender = envelope.mail_from or ""
        spam, (virus, virus_scanned) = await asyncio.gather(
            self._score(message), self._virus(message)
        )
        if spam is None or not virus_scanned:
            self.unscanned += 1
        settings = self.settings
        policies = {rcpt: settings.policy_for(rcpt) for rcpt, _ in envelope.recipients}
        decision = decide_message(
            policies,
            None if spam is None else spam.score,
            virus,
            tests=() if spam is None else spam.tests,
            virus_scanned=virus_scanned,
        )
        summary = (
            f"from=<{sender}> to={','.join(policies)} size={len(message)} "
            f"score={'-' if spam is None else f'{spam.score:.1f}'} "
            f"virus={virus or ('-' if virus_scanned else 'unscanned')}"
        )
        if decision.reject is not None:
            log.info("filter reject %s: %s", summary, decision.reject)
            return decision.reject
        held = await self._hold(decision, envelope, message, spam, virus)
        answer = "250 2.0.0 Ok"
        params = dict(envelope.recipients)
        for headers, rcpts in decision.deliver:
            reply = await reinject(
                self.reinject_host,
                self.reinject_port,
                sender=sender,
                recipients=[(r, params.get(r, [])) for r in rcpts],
                message=rewrite_headers(message, headers),
                mail_params=envelope.mail_params,
                xforward=server.xforward,
                helo=self.hostname,
                timeout=self.reinject_timeout,
            )
            if not reply.ok:
                if held is not None:  # the client will send it again
                    delete_quarantine(self.db, held)
                log.warning("filter re-injection failed %s: %s", summary, reply.line())
                return reply.line()
            answer = reply.line()
        actions = ",".join(f"{r}:{v.action}" for r, v in decision.verdicts.items())
        log.info("filter %s actions=%s quarantine=%s: %s", summary, actions, held or "-", answer)
        return answer

    async def _hold(
        self,
        decision: MessageDecision,
        envelope: _Envelope,
        message: bytes,
        spam: SpamResult | None,
        virus: str | None,
    ) -> int | None:
        if not decision.quarantine:
            return None
        first = decision.verdicts[decision.quarantine[0]]
        stored = rewrite_headers(message, first.headers)
        now = self.clock()
        path = await asyncio.to_thread(write_eml, self.quarantine_dir, stored, now)
        try:
            return add_quarantine(
                self.db,
                path=path,
                sender=envelope.mail_from or "",
                recipients=decision.quarantine,
                subject=subject_of(message),
                score=None if spam is None else spam.score,
                virus=virus,
                reason="virus" if virus is not None else "spam",
                size=len(stored),
                now=now,
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise


# ---- local spamd and clamd --------------------------------------------------------------

DAEMON_START_TIMEOUT_S = 60.0
DAEMON_STOP_TIMEOUT_S = 15.0
EICAR_NAME = "Eicar-Test-Signature"
# The EICAR test file's 68 bytes, in hex: the only signature of the bundled database.
EICAR_HEX = (
    "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d41"
    "4e544956495255532d544553542d46494c452124482b482a"
)
# An .ndb (extended) signature: Name:TargetType:Offset:HexSignature. Target 0 = any file,
# offset * = anywhere, so it matches the plain file and, after clamd decodes MIME, an
# attachment. ClamAV reports it as "Eicar-Test-Signature.UNOFFICIAL" (an unsigned database).
EICAR_NDB = f"{EICAR_NAME}:0:*:{EICAR_HEX}\n"

SPAMD_PLUGINS = (
    "Check",
    "BodyEval",
    "HeaderEval",
    "MIMEEval",
    "HTMLEval",
    "URIEval",
    "WLBLEval",
    "RelayEval",
    "MIMEHeader",
    "ReplaceTags",
    "FreeMail",
    "ImageInfo",
    "VBounce",
    "HTTPSMismatch",
    "URIDetail",
)
SPAMD_LOCAL_CF = """# Generated by mailpanel: local tests only, nothing learnt, no network.
use_bayes 0
bayes_auto_learn 0
dns_available no
skip_rbl_checks 1
report_safe 0
"""


def _ping(host: str, port: int, request: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.settimeout(5.0)
            sock.sendall(request)
            data = b""
            while expect not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return expect in data
    except OSError:
        return False


def _traversable(path: Path) -> Path | None:
    """The first of path and its parents that other users cannot enter, if any."""
    for part in [path, *path.parents]:
        if not stat.S_IMODE(part.stat().st_mode) & 0o001:
            return part
    return None


class DaemonError(RuntimeError):
    pass


class _Daemon:
    """A scanner daemon run in the foreground in its own session, owned by this object."""

    name = ""
    binary_name = ""

    def __init__(self, directory: str | Path, port: int, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> str | None:
        return which(self.binary_name)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def console(self) -> Path:
        return self.directory / f"{self.name}.console"

    def prepare(self) -> None:
        raise NotImplementedError

    def argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    def start(self, timeout: float = DAEMON_START_TIMEOUT_S) -> bool:
        """Write the config and start; True once the daemon answers, False (and a warning)
        when its binary is not installed. Raises DaemonError when it does not come up."""
        binary = self.binary
        if binary is None:
            log.warning("%s is not installed: not started", self.binary_name)
            return False
        if self.running:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.console, "ab") as console:
            self.proc = subprocess.Popen(
                self.argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                env=self.env(),
                start_new_session=True,
            )
        proc = self.proc
        if not wait_until(lambda: proc.poll() is not None or self.ready(), timeout):
            self.stop()
            raise DaemonError(f"{self.name} did not answer within {timeout:.0f} s: {self._tail()}")
        if proc.poll() is not None:
            self.proc = None
            raise DaemonError(f"{self.name} exited with rc {proc.returncode}: {self._tail()}")
        return True

    def _tail(self) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no output)"

    def stop(self, timeout: float = DAEMON_STOP_TIMEOUT_S) -> None:
        """SIGTERM by PID, wait, then SIGKILL what is left of its session."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc.pid, proc, timeout)

    def __enter__(self) -> "_Daemon":
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SpamdRunner(_Daemon):
    """spamd on host:port with its own site config under `directory` (local tests only, no
    Bayes, no DNS, no user configs). As root it runs its children as `user` (debian-spamd when
    that exists, else nobody), which must be able to read the config: spamd reads it with that
    user's rights, so the directory and its parents must be traversable (not under a 0700
    pytest tmp dir). `rules_dir` (-C) defaults to spamd's own choice: sa-update's rules when
    there are any, else the shipped /usr/share/spamassassin (which has GTUBE)."""

    name = "spamd"
    binary_name = "spamd"

    def __init__(
        self,
        directory: str | Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        max_children: int = 3,
        rules_dir: str | None = None,
        user: str | None = None,
    ) -> None:
        super().__init__(directory, port, host)
        self.max_children = max_children
        self.rules_dir = rules_dir
        self.user = user

    @property
    def site_dir(self) -> Path:
        return self.directory / "site"

    @property
    def home_dir(self) -> Path:
        return self.directory / "home"

    @property
    def log_file(self) -> Path:
        return self.directory / "spamd.log"

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        for name in (self.user, "debian-spamd", "nobody"):
            if name:
                with contextlib.suppress(KeyError):
                    pwd.getpwnam(name)
                    return name
        return None

    def prepare(self) -> None:
        self.site_dir.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.directory, self.site_dir, self.home_dir):
            os.chmod(folder, 0o755)
        pre = "".join(f"loadplugin Mail::SpamAssassin::Plugin::{p}\n" for p in SPAMD_PLUGINS)
        (self.site_dir / "init.pre").write_text("# Generated by mailpanel.\n" + pre)
        (self.site_dir / "local.cf").write_text(SPAMD_LOCAL_CF)
        user = self._user()
        if user is not None:
            closed = _traversable(self.site_dir)
            if closed is not None:
                raise DaemonError(
                    f"{closed} is not traversable by other users: spamd reads its config as "
                    f"{user}; use a directory such as /tmp/mailpanel-<random> (0755)"
                )
            entry = pwd.getpwnam(user)
            os.chown(self.home_dir, entry.pw_uid, entry.pw_gid)

    def argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            "--local",
            "--nouser-config",
            f"--listen={self.host}:{self.port}",
            f"--allowed-ips={self.host}",
            f"--siteconfigpath={self.site_dir}",
            f"--helper-home-dir={self.home_dir}",
            f"--pidfile={self.directory / 'spamd.pid'}",
            f"--syslog={self.log_file}",
            "--min-children=1",
            f"--max-children={self.max_children}",
        ]
        user = self._user()
        if user is not None:
            argv.append(f"--username={user}")
        if self.rules_dir:
            argv.append(f"--configpath={self.rules_dir}")
        return argv

    def env(self) -> dict[str, str]:
        return {**super().env(), "HOME": str(self.home_dir)}

    def ready(self) -> bool:
        return _ping(self.host, self.port, b"PING SPAMC/1.5\r\n\r\n", b"PONG")


class ClamdRunner(_Daemon):
    """clamd on host:port (TCP) with its config under `directory`. Its signature database is
    `database_dir` when given (e.g. /var/lib/clamav kept by freshclam), else a local one under
    `directory`/db holding only the EICAR test signature: no download is needed."""

    name = "clamd"
    binary_name = "clamd"

    def __init__(
        self,
        directory: str | Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        database_dir: str | Path | None = None,
        max_threads: int = 4,
        stream_max_bytes: int = DATA_SIZE_LIMIT,
    ) -> None:
        super().__init__(directory, port, host)
        self.database_dir = Path(database_dir) if database_dir is not None else None
        self.max_threads = max_threads
        self.stream_max_bytes = stream_max_bytes

    @property
    def db_dir(self) -> Path:
        return self.database_dir or self.directory / "db"

    @property
    def conf(self) -> Path:
        return self.directory / "clamd.conf"

    def prepare(self) -> None:
        if self.database_dir is None:
            self.db_dir.mkdir(parents=True, exist_ok=True)
            (self.db_dir / "eicar.ndb").write_text(EICAR_NDB)
        self.conf.write_text(
            "# Generated by mailpanel.\n"
            f"DatabaseDirectory {self.db_dir}\n"
            f"TCPAddr {self.host}\n"
            f"TCPSocket {self.port}\n"
            "Foreground yes\n"
            f"LogFile {self.directory / 'clamd.log'}\n"
            "LogTime yes\n"
            f"PidFile {self.directory / 'clamd.pid'}\n"
            f"MaxThreads {self.max_threads}\n"
            f"StreamMaxLength {self.stream_max_bytes}\n"
            "ScanMail yes\n"
        )

    def argv(self, binary: str) -> list[str]:
        return [binary, "--foreground", f"--config-file={self.conf}"]

    def ready(self) -> bool:
        return _ping(self.host, self.port, b"zPING\0", b"PONG")
