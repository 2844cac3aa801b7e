"""Read-side SQL for the API. One statement per list page: the window COUNT gives the total.

Statements are built once, at import, for each table and filter combination: all rows, one
domain's rows, and either of those restricted to a domain-scoped token's domain names.
"""

from typing import Any

import aiosqlite
import msgspec

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
