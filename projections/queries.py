"""Read-side SQL for the API. One statement per list page: the window COUNT gives the total.

Statements are built once, at import, for each table and filter combination: all rows, one
domain's rows, and either of those restricted to a domain-scoped token's domain names.
"""

import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from core.config import TIER_TYPES, DomainOverrides, MailboxOverrides
from core.events import (
    AliasRow,
    DkimRow,
    DomainOverridesRow,
    DomainRow,
    MailboxOverridesRow,
    MailboxRow,
    Snapshot,
    Tiers,
    TlsRow,
    WhitelistRow,
)

Row = tuple[Any, ...]

COLUMNS = {
    "domains": "id, name, active, outgoing_ip, created_at",
    "mailboxes": "id, domain_id, username, quota_effective, active, created_at",
    "aliases": "id, domain_id, source, destination, created_at",
    "tokens": "id, name, scope, domains, hint, created_at, expires_at",
}
BASE_WHERE = {"tokens": "revoked_at IS NULL"}
DOMAIN_COLUMN = {"domains": "id", "mailboxes": "domain_id", "aliases": "domain_id"}
IN_NAMES = "(SELECT value FROM json_each(?))"


def _where(table: str, by_domain: bool, restricted: bool) -> str:
    parts = [BASE_WHERE[table]] if table in BASE_WHERE else []
    if by_domain:
        parts.append(f"{DOMAIN_COLUMN[table]} = ?")
    if restricted:
        if table == "domains":
            parts.append(f"name IN {IN_NAMES}")
        else:
            parts.append(f"domain_id IN (SELECT id FROM domains WHERE name IN {IN_NAMES})")
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def _statements() -> dict[tuple[str, bool, bool], tuple[str, str]]:
    out = {}
    for table, cols in COLUMNS.items():
        scoped = table in DOMAIN_COLUMN
        for by_domain in (False, True) if scoped else (False,):
            for restricted in (False, True) if scoped else (False,):
                where = _where(table, by_domain, restricted)
                out[(table, by_domain, restricted)] = (
                    f"SELECT {cols}, count(*) OVER () FROM {table}{where} "
                    "ORDER BY id LIMIT ? OFFSET ?",
                    f"SELECT count(*) FROM {table}{where}",
                )
    return out


LISTS = _statements()
GETS = {
    table: f"SELECT {cols}, version FROM {table} WHERE id = ?"
    + (f" AND {BASE_WHERE[table]}" if table in BASE_WHERE else "")
    for table, cols in COLUMNS.items()
}
DOMAIN_NAME = "SELECT name FROM domains WHERE id = ?"


async def page(
    db: aiosqlite.Connection,
    table: str,
    limit: int,
    offset: int,
    domain_id: int | None = None,
    allowed: tuple[str, ...] | None = None,
) -> tuple[list[Row], int]:
    """Rows of one page (count column dropped) and the total count."""
    list_sql, count_sql = LISTS[(table, domain_id is not None, allowed is not None)]
    args: tuple[Any, ...] = ()
    if domain_id is not None:
        args += (domain_id,)
    if allowed is not None:
        args += (msgspec.json.encode(allowed).decode(),)
    rows = list(await db.execute_fetchall(list_sql, (*args, limit, offset)))
    if rows:
        return [tuple(r)[:-1] for r in rows], int(rows[0][-1])
    # Past the last page the window has no row to carry the total.
    count = list(await db.execute_fetchall(count_sql, args))
    return [], int(count[0][0])


async def one(db: aiosqlite.Connection, table: str, row_id: int) -> Row | None:
    """One row (with its version as the last column), or None."""
    rows = list(await db.execute_fetchall(GETS[table], (row_id,)))
    return tuple(rows[0]) if rows else None


async def domain_name(db: aiosqlite.Connection, domain_id: int) -> str | None:
    rows = list(await db.execute_fetchall(DOMAIN_NAME, (domain_id,)))
    return str(rows[0][0]) if rows else None


LIST_WHITELIST = (
    "SELECT id, entry_type, value, note, created_at, count(*) OVER () FROM whitelist "
    "ORDER BY id LIMIT ? OFFSET ?"
)
COUNT_WHITELIST = "SELECT count(*) FROM whitelist"
LISTS[("whitelist", False, False)] = (LIST_WHITELIST, COUNT_WHITELIST)
GET_TIER = "SELECT data, updated_at FROM config_tiers WHERE name = ?"
EFFECTIVE = {
    "domain": "SELECT data, explain FROM effective_domains WHERE domain_id = ?",
    "mailbox": "SELECT data, explain FROM effective_mailboxes WHERE mailbox_id = ?",
}
OVERRIDES = {
    "domain": "SELECT data FROM domain_overrides WHERE domain_id = ?",
    "mailbox": "SELECT data FROM mailbox_overrides WHERE mailbox_id = ?",
}
EVENTS_AT = "SELECT seq, at, actor FROM events WHERE seq IN (SELECT value FROM json_each(?))"


async def first(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> Row | None:
    rows = list(await db.execute_fetchall(sql, args))
    return tuple(rows[0]) if rows else None


async def events_at(db: aiosqlite.Connection, seqs: list[int]) -> dict[int, tuple[str, str]]:
    """(time, actor) of each event sequence."""
    rows = await db.execute_fetchall(EVENTS_AT, (msgspec.json.encode(seqs).decode(),))
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


# ---- DKIM keys, TLS certificates ----------------------------------------------------------

DKIM_COLUMNS = "domain, selector, algorithm, public_key, status, created_at, updated_at"
LIST_DKIM = (
    f"SELECT {DKIM_COLUMNS}, count(*) OVER () FROM dkim_keys "
    "WHERE (?1 IS NULL OR domain = ?1) "
    "AND (?2 IS NULL OR domain IN (SELECT value FROM json_each(?2))) "
    "ORDER BY domain, selector LIMIT ?3 OFFSET ?4"
)
COUNT_DKIM = (
    "SELECT count(*) FROM dkim_keys WHERE (?1 IS NULL OR domain = ?1) "
    "AND (?2 IS NULL OR domain IN (SELECT value FROM json_each(?2)))"
)
GET_DKIM = f"SELECT {DKIM_COLUMNS} FROM dkim_keys WHERE domain = ? AND selector = ?"
DKIM_OF_DOMAIN = f"SELECT {DKIM_COLUMNS} FROM dkim_keys WHERE domain = ? ORDER BY selector"
TLS_COLUMNS = (
    "id, hostname, issuer, cert_path, key_path, expires_at, created_at, names, fingerprint, "
    "not_before, updated_at"
)
LIST_TLS = f"SELECT {TLS_COLUMNS}, count(*) OVER () FROM tls_certs ORDER BY id LIMIT ? OFFSET ?"
COUNT_TLS = "SELECT count(*) FROM tls_certs"
TLS_BY_ISSUER = f"SELECT {TLS_COLUMNS} FROM tls_certs WHERE issuer = ? ORDER BY id"


async def dkim_page(
    db: aiosqlite.Connection,
    limit: int,
    offset: int,
    domain: str | None = None,
    allowed: tuple[str, ...] | None = None,
) -> tuple[list[Row], int]:
    restrict = None if allowed is None else msgspec.json.encode(allowed).decode()
    rows = list(await db.execute_fetchall(LIST_DKIM, (domain, restrict, limit, offset)))
    if rows:
        return [tuple(r)[:-1] for r in rows], int(rows[0][-1])
    count = list(await db.execute_fetchall(COUNT_DKIM, (domain, restrict)))
    return [], int(count[0][0])


async def tls_page(db: aiosqlite.Connection, limit: int, offset: int) -> tuple[list[Row], int]:
    rows = list(await db.execute_fetchall(LIST_TLS, (limit, offset)))
    if rows:
        return [tuple(r)[:-1] for r in rows], int(rows[0][-1])
    count = list(await db.execute_fetchall(COUNT_TLS, ()))
    return [], int(count[0][0])


async def rows(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> list[Row]:
    return [tuple(r) for r in await db.execute_fetchall(sql, args)]


# ---- snapshots: backups, restores, reverts ------------------------------------------------

DOMAIN_ROWS = "SELECT id, name, active, outgoing_ip, created_at, updated_at FROM domains"
MAILBOX_ROWS = (
    "SELECT id, domain_id, username, address, password_hash, quota, active, created_at, "
    "updated_at FROM mailboxes"
)
ALIAS_ROWS = "SELECT id, domain_id, source, destination, created_at, updated_at FROM aliases"
TIER_ROWS = "SELECT name, data, updated_at FROM config_tiers"
DOMAIN_OVERRIDE_ROWS = "SELECT domain_id, data FROM domain_overrides"
MAILBOX_OVERRIDE_ROWS = "SELECT mailbox_id, data FROM mailbox_overrides"
WHITELIST_ROWS = "SELECT id, entry_type, value, note, created_at FROM whitelist"
DKIM_ROWS = (
    "SELECT domain, selector, algorithm, public_key, status, private_key_sealed, created_at, "
    "updated_at FROM dkim_keys"
)
TLS_ROWS = (
    "SELECT id, hostname, issuer, chain_pem, key_sealed, cert_path, key_path, names, "
    "fingerprint, not_before, expires_at, created_at, updated_at FROM tls_certs"
)
CHECKPOINT_SEQ = "SELECT coalesce((SELECT seq FROM checkpoint WHERE name = 'projector'), 0)"


def domain_row(r: Row) -> DomainRow:
    return DomainRow(
        id=r[0], name=r[1], active=bool(r[2]), outgoing_ip=r[3], created_at=r[4], updated_at=r[5]
    )


def mailbox_row(r: Row) -> MailboxRow:
    return MailboxRow(
        id=r[0],
        domain_id=r[1],
        username=r[2],
        address=r[3],
        password_hash=r[4],
        quota=r[5],
        active=bool(r[6]),
        created_at=r[7],
        updated_at=r[8],
    )


def alias_row(r: Row) -> AliasRow:
    return AliasRow(
        id=r[0], domain_id=r[1], source=r[2], destination=r[3], created_at=r[4], updated_at=r[5]
    )


def whitelist_row(r: Row) -> WhitelistRow:
    return WhitelistRow(id=r[0], entry_type=r[1], value=r[2], note=r[3], created_at=r[4])


def domain_overrides_row(r: Row) -> DomainOverridesRow:
    overrides = msgspec.json.decode(str(r[1]).encode(), type=DomainOverrides)
    return DomainOverridesRow(domain_id=r[0], overrides=overrides)


def mailbox_overrides_row(r: Row) -> MailboxOverridesRow:
    overrides = msgspec.json.decode(str(r[1]).encode(), type=MailboxOverrides)
    return MailboxOverridesRow(mailbox_id=r[0], overrides=overrides)


def tiers(rows: list[Row]) -> Tiers:
    """The three tiers from their rows (a tier without a row is at its defaults)."""
    found = {str(r[0]): (str(r[1]), str(r[2])) for r in rows}
    values: dict[str, Any] = {}
    for name, kind in TIER_TYPES.items():
        data = found.get(name)
        values[name] = kind() if data is None else msgspec.json.decode(data[0].encode(), type=kind)
    return Tiers(
        global_=values["global"],
        domain_defaults=values["domain_defaults"],
        mailbox_defaults=values["mailbox_defaults"],
        updated_at={name: at for name, (_, at) in found.items() if name in TIER_TYPES},
    )


def _dkim_row(r: Row) -> DkimRow:
    return DkimRow(
        domain=r[0],
        selector=r[1],
        algorithm=r[2],
        public_key=r[3],
        status=r[4],
        private_key_sealed=r[5],
        created_at=r[6],
        updated_at=r[7],
    )


def _tls_row(r: Row) -> TlsRow:
    return TlsRow(
        id=r[0],
        hostname=r[1],
        issuer=r[2],
        chain_pem=r[3],
        key_sealed=r[4],
        cert_path=r[5],
        key_path=r[6],
        names=list(msgspec.json.decode(str(r[7]).encode(), type=list[str])),
        fingerprint=r[8],
        not_before=r[9],
        expires_at=r[10],
        created_at=r[11],
        updated_at=r[12],
    )


SNAPSHOT_SQL = {
    "domains": (DOMAIN_ROWS, "id"),
    "mailboxes": (MAILBOX_ROWS, "id"),
    "aliases": (ALIAS_ROWS, "id"),
    "config": (TIER_ROWS, "name"),
    "domain_overrides": (DOMAIN_OVERRIDE_ROWS, "1"),
    "mailbox_overrides": (MAILBOX_OVERRIDE_ROWS, "1"),
    "tls_certs": (TLS_ROWS, "id"),
    "dkim_keys": (DKIM_ROWS, "domain, selector"),
    "whitelist": (WHITELIST_ROWS, "id"),
}


def snapshot_from(rows: dict[str, list[Row]]) -> Snapshot:
    """A snapshot from the rows of each table (SNAPSHOT_SQL's statements, in their order)."""
    return Snapshot(
        domains=[domain_row(r) for r in rows["domains"]],
        mailboxes=[mailbox_row(r) for r in rows["mailboxes"]],
        aliases=[alias_row(r) for r in rows["aliases"]],
        config=tiers(rows["config"]),
        domain_overrides=[domain_overrides_row(r) for r in rows["domain_overrides"]],
        mailbox_overrides=[mailbox_overrides_row(r) for r in rows["mailbox_overrides"]],
        tls_certs=[_tls_row(r) for r in rows["tls_certs"]],
        dkim_keys=[_dkim_row(r) for r in rows["dkim_keys"]],
        whitelist=[whitelist_row(r) for r in rows["whitelist"]],
    )


def read_snapshot(db: sqlite3.Connection) -> tuple[Snapshot, int]:
    """Every resource table and the checkpoint they reflect, read in ONE transaction (a
    consistent snapshot even while the projector writes). Keys stay sealed tokens."""
    db.execute("BEGIN")
    try:
        checkpoint = int(db.execute(CHECKPOINT_SEQ).fetchone()[0])
        rows = {
            name: [tuple(r) for r in db.execute(f"{sql} ORDER BY {order}")]
            for name, (sql, order) in SNAPSHOT_SQL.items()
        }
    finally:
        db.execute("COMMIT")
    return snapshot_from(rows), checkpoint


def read_snapshot_at(path: Path) -> tuple[Snapshot, int]:
    """read_snapshot on its own read-only connection to the database file at `path`."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        return read_snapshot(db)
    finally:
        db.close()
