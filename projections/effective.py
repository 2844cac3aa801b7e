"""The effective-config read model: resolved settings per domain and per mailbox, kept up to
date inside the projector's transaction whenever a tier, an override, a domain or a mailbox
changes, so queries never resolve tiers ad hoc. Also the domain usage the caps are checked
against."""

import sqlite3
from typing import Any

import msgspec

from core.config import (
    TIER_TYPES,
    DomainOverrides,
    MailboxOverrides,
    Resolved,
    resolve_domain,
    resolve_mailbox,
)
from core.limits import DomainUsage

GET_TIER = "SELECT data, seq FROM config_tiers WHERE name = ?"
DOMAIN_ROW = "SELECT name, active, outgoing_ip FROM domains WHERE id = ?"
DOMAIN_OVERRIDES = "SELECT data, seq FROM domain_overrides WHERE domain_id = ?"
MAILBOX_ROW = (
    "SELECT m.username, m.domain_id, m.quota, m.active, m.quota_seq, d.name, d.active "
    "FROM mailboxes m JOIN domains d ON d.id = m.domain_id WHERE m.id = ?"
)
MAILBOX_OVERRIDES = "SELECT data, seq FROM mailbox_overrides WHERE mailbox_id = ?"
PUT_EFFECTIVE_DOMAIN = (
    "INSERT OR REPLACE INTO effective_domains (domain_id, data, explain, max_mailboxes, "
    "max_aliases, quota_total_bytes) VALUES (?, ?, ?, ?, ?, ?)"
)
PUT_EFFECTIVE_MAILBOX = (
    "INSERT OR REPLACE INTO effective_mailboxes (mailbox_id, domain_id, data, explain) "
    "VALUES (?, ?, ?, ?)"
)
SET_QUOTA_EFFECTIVE = "UPDATE mailboxes SET quota_effective = ? WHERE id = ?"
MAILBOXES_OF = "SELECT id FROM mailboxes WHERE domain_id = ? ORDER BY id"
ALL_DOMAINS = "SELECT id FROM domains ORDER BY id"
# A domain's caps and what it uses; each count runs only when its cap is set (0 = no cap), so
# an uncapped domain costs no scan however large it grows.
USAGE = (
    "SELECT e.max_mailboxes, e.max_aliases, e.quota_total_bytes, "
    "CASE WHEN e.max_mailboxes > 0 "
    "THEN (SELECT count(*) FROM mailboxes WHERE domain_id = e.domain_id) ELSE 0 END, "
    "CASE WHEN e.max_aliases > 0 "
    "THEN (SELECT count(*) FROM aliases WHERE domain_id = e.domain_id) ELSE 0 END, "
    "CASE WHEN e.quota_total_bytes > 0 THEN (SELECT coalesce(sum(quota_effective), 0) "
    "FROM mailboxes WHERE domain_id = e.domain_id) ELSE 0 END, d.name "
    "FROM domains d JOIN effective_domains e ON e.domain_id = d.id WHERE d.id = ?"
)

_json = msgspec.json.Encoder()
_tiers: dict[int, dict[str, tuple[Any, int]]] = {}


def invalidate(db: sqlite3.Connection) -> None:
    _tiers.pop(id(db), None)


def tiers(db: sqlite3.Connection) -> dict[str, tuple[Any, int]]:
    """The three tiers with the sequence that set each (0: still the built-in defaults)."""
    cached = _tiers.get(id(db))
    if cached is None:
        cached = {}
        for name, kind in TIER_TYPES.items():
            row = db.execute(GET_TIER, (name,)).fetchone()
            if row is None:
                cached[name] = (kind(), 0)
            else:
                cached[name] = (msgspec.json.decode(row[0].encode(), type=kind), int(row[1]))
        _tiers[id(db)] = cached
    return cached


def domain_resolution(db: sqlite3.Connection, domain_id: int) -> Resolved:
    t = tiers(db)
    row = db.execute(DOMAIN_OVERRIDES, (domain_id,)).fetchone()
    overrides = (
        (msgspec.json.decode(row[0].encode(), type=DomainOverrides), int(row[1]))
        if row
        else (DomainOverrides(), 0)
    )
    return resolve_domain(t["global"], t["domain_defaults"], overrides)


def _explain(sources: dict[str, Any]) -> str:
    return _json.encode(sources).decode()


def recompute_domain(db: sqlite3.Connection, domain_id: int) -> Resolved | None:
    row = db.execute(DOMAIN_ROW, (domain_id,)).fetchone()
    if row is None:
        return None
    resolved = domain_resolution(db, domain_id)
    values, sources = resolved
    data = {
        "domain_id": domain_id,
        "domain_name": row[0],
        "outgoing_ip": row[2],
        **values,
        "active": bool(row[1]),
    }
    db.execute(
        PUT_EFFECTIVE_DOMAIN,
        (
            domain_id,
            _json.encode(data).decode(),
            _explain(sources),
            values["max_mailboxes"],
            values["max_aliases"],
            values["quota_total_bytes"],
        ),
    )
    return resolved


def recompute_mailbox(
    db: sqlite3.Connection, mailbox_id: int, domain: Resolved | None = None
) -> None:
    row = db.execute(MAILBOX_ROW, (mailbox_id,)).fetchone()
    if row is None:
        return
    username, domain_id, quota, active, quota_seq, domain_name, domain_active = row
    if domain is None:
        domain = domain_resolution(db, domain_id)
    t = tiers(db)
    orow = db.execute(MAILBOX_OVERRIDES, (mailbox_id,)).fetchone()
    overrides = (
        (msgspec.json.decode(orow[0].encode(), type=MailboxOverrides), int(orow[1]))
        if orow
        else (MailboxOverrides(), 0)
    )
    values, sources = resolve_mailbox(domain, t["mailbox_defaults"], overrides, (quota, quota_seq))
    data = {
        "mailbox_id": mailbox_id,
        "mailbox_username": username,
        "domain_id": domain_id,
        "domain_name": domain_name,
        **values,
        "mailbox_active": bool(active),
        "domain_active": bool(domain_active),
    }
    db.execute(SET_QUOTA_EFFECTIVE, (values["quota_bytes"], mailbox_id))
    db.execute(
        PUT_EFFECTIVE_MAILBOX,
        (mailbox_id, domain_id, _json.encode(data).decode(), _explain(sources)),
    )


def recompute_domain_and_mailboxes(db: sqlite3.Connection, domain_id: int) -> None:
    resolved = recompute_domain(db, domain_id)
    if resolved is None:
        return
    for (mailbox_id,) in db.execute(MAILBOXES_OF, (domain_id,)).fetchall():
        recompute_mailbox(db, mailbox_id, resolved)


def recompute_all(db: sqlite3.Connection) -> None:
    for (domain_id,) in db.execute(ALL_DOMAINS).fetchall():
        recompute_domain_and_mailboxes(db, domain_id)


def usage_from(row: tuple[Any, ...] | None) -> DomainUsage | None:
    if row is None:
        return None
    return DomainUsage(
        max_mailboxes=row[0],
        max_aliases=row[1],
        quota_total_bytes=row[2],
        mailboxes=row[3],
        aliases=row[4],
        quota_sum=row[5],
    )


def usage(db: sqlite3.Connection, domain_id: int) -> tuple[str, DomainUsage] | None:
    """The domain's name and usage, or None when the domain does not exist."""
    row = db.execute(USAGE, (domain_id,)).fetchone()
    found = usage_from(row)
    return None if found is None else (str(row[6]), found)


def mailbox_quota_for(db: sqlite3.Connection, quota: int | None) -> int:
    """The effective quota a mailbox with this own quota gets (null: the default)."""
    return quota if quota is not None else int(tiers(db)["mailbox_defaults"][0].quota_bytes)
