"""The Postfix queue and the mail counters of one sandbox instance (seed sections 11, 12)."""

import json
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from workers.reconcile.layout import Layout

# Short (hex) and long (base-52 style) Postfix queue ids; never "ALL" or anything else.
QUEUE_ID = re.compile(r"^[0-9A-Za-z]{5,32}$")
_LOG_LINE = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) \S+ postfix/(\S+?)\[\d+\]: (.*)$")


class QueueError(RuntimeError):
    """postqueue/postsuper failed; the message says how."""


class Recipient(msgspec.Struct, frozen=True):
    address: str
    delay_reason: str


class QueuedMessage(msgspec.Struct, frozen=True):
    queue_name: str
    queue_id: str
    arrival_time: int
    message_size: int
    sender: str
    recipients: list[Recipient]


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise QueueError(f"{argv[0]}: {exc}") from exc
    if out.returncode != 0:
        raise QueueError((out.stderr or out.stdout).strip() or f"{argv[0]} exited {out.returncode}")
    return out.stdout


def list_queue(layout: Layout) -> list[QueuedMessage]:
    """`postqueue -j`: one JSON object per queued message."""
    out = _run(["postqueue", "-c", str(layout.postfix_dir), "-j"])
    messages = []
    for line in out.splitlines():
        if not line.strip():
            continue
        item: dict[str, Any] = json.loads(line)
        messages.append(
            QueuedMessage(
                queue_name=str(item.get("queue_name", "")),
                queue_id=str(item.get("queue_id", "")),
                arrival_time=int(item.get("arrival_time", 0)),
                message_size=int(item.get("message_size", 0)),
                sender=str(item.get("sender", "")),
                recipients=[
                    Recipient(
                        address=str(r.get("address", "")),
                        delay_reason=str(r.get("delay_reason", "")),
                    )
                    for r in item.get("recipients", [])
                ],
            )
        )
    return messages


def flush(layout: Layout) -> None:
    _run(["postqueue", "-c", str(layout.postfix_dir), "-f"])


def delete(layout: Layout, queue_id: str) -> bool:
    """`postsuper -d ID`; False when the id is not in the queue."""
    if not QUEUE_ID.match(queue_id) or queue_id.upper() == "ALL":
        raise ValueError("message_id is not a Postfix queue id")
    if not any(m.queue_id == queue_id for m in list_queue(layout)):
        return False
    _run(["postsuper", "-c", str(layout.postfix_dir), "-d", queue_id])
    return True


class MailStats(msgspec.Struct, frozen=True):
    sent_1h: int = 0
    sent_24h: int = 0
    recv_1h: int = 0
    recv_24h: int = 0


def mail_stats(log_file: Path, now: datetime | None = None) -> MailStats:
    """Counts from the Postfix log this instance writes: sent = messages accepted from an
    authenticated client (sasl_username), received = local deliveries handed to Dovecot over
    LMTP (status=sent). Zeros when the log cannot be read. Postfix stamps lines in local
    time without a year, so `now` is naive local time too."""
    now = now or datetime.now()
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return MailStats()
    counts = {"sent_1h": 0, "sent_24h": 0, "recv_1h": 0, "recv_24h": 0}
    for line in lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        stamp, service, text = match.groups()
        try:
            at = datetime.strptime(f"{now.year} {stamp}", "%Y %b %d %H:%M:%S")
        except ValueError:
            continue
        if at > now + timedelta(days=1):  # last year's December seen in January
            at = at.replace(year=now.year - 1)
        age = now - at
        if age > timedelta(hours=24) or age < -timedelta(minutes=5):
            continue
        kind = ""
        if service.endswith("smtpd") and "sasl_username=" in text:
            kind = "sent"
        elif service == "lmtp" and "status=sent" in text:
            kind = "recv"
        if kind:
            counts[f"{kind}_24h"] += 1
            if age <= timedelta(hours=1):
                counts[f"{kind}_1h"] += 1
    return MailStats(**counts)
