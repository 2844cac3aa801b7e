"""Read-side SQL for the API. One statement per list page: the window COUNT gives the total."""

from typing import Any

import aiosqlite

DOMAIN_COLS = "id, name, active, outgoing_ip, created_at"
MAILBOX_COLS = "id, domain_id, username, quota, active, created_at"
ALIAS_COLS = "id, domain_id, source, destination, created_at"

LIST_DOMAINS = f"SELECT {DOMAIN_COLS}, count(*) OVER () FROM domains ORDER BY id LIMIT ? OFFSET ?"
COUNT_DOMAINS = "SELECT count(*) FROM domains"
GET_DOMAIN = f"SELECT {DOMAIN_COLS}, version FROM domains WHERE id = ?"

LIST_MAILBOXES = (
    f"SELECT {MAILBOX_COLS}, count(*) OVER () FROM mailboxes ORDER BY id LIMIT ? OFFSET ?"
)
LIST_MAILBOXES_IN = (
    f"SELECT {MAILBOX_COLS}, count(*) OVER () FROM mailboxes WHERE domain_id = ? "
    "ORDER BY id LIMIT ? OFFSET ?"
)
COUNT_MAILBOXES = "SELECT count(*) FROM mailboxes"
COUNT_MAILBOXES_IN = "SELECT count(*) FROM mailboxes WHERE domain_id = ?"
GET_MAILBOX = f"SELECT {MAILBOX_COLS}, version FROM mailboxes WHERE id = ?"

LIST_ALIASES = f"SELECT {ALIAS_COLS}, count(*) OVER () FROM aliases ORDER BY id LIMIT ? OFFSET ?"
LIST_ALIASES_IN = (
    f"SELECT {ALIAS_COLS}, count(*) OVER () FROM aliases WHERE domain_id = ? "
    "ORDER BY id LIMIT ? OFFSET ?"
)
COUNT_ALIASES = "SELECT count(*) FROM aliases"
COUNT_ALIASES_IN = "SELECT count(*) FROM aliases WHERE domain_id = ?"
GET_ALIAS = f"SELECT {ALIAS_COLS}, version FROM aliases WHERE id = ?"

Row = tuple[Any, ...]

_LISTS = {
    "domains": (LIST_DOMAINS, LIST_DOMAINS, COUNT_DOMAINS, COUNT_DOMAINS),
    "mailboxes": (LIST_MAILBOXES, LIST_MAILBOXES_IN, COUNT_MAILBOXES, COUNT_MAILBOXES_IN),
    "aliases": (LIST_ALIASES, LIST_ALIASES_IN, COUNT_ALIASES, COUNT_ALIASES_IN),
}
_GETS = {"domains": GET_DOMAIN, "mailboxes": GET_MAILBOX, "aliases": GET_ALIAS}


async def page(
    db: aiosqlite.Connection, table: str, limit: int, offset: int, domain_id: int | None = None
) -> tuple[list[Row], int]:
    """Rows of one page (last column dropped) and the total count."""
    all_sql, in_sql, count_sql, count_in_sql = _LISTS[table]
    if domain_id is None:
        rows = list(await db.execute_fetchall(all_sql, (limit, offset)))
    else:
        rows = list(await db.execute_fetchall(in_sql, (domain_id, limit, offset)))
    if rows:
        return [tuple(r)[:-1] for r in rows], int(rows[0][-1])
    # Past the last page the window has no row to carry the total.
    count = await db.execute_fetchall(
        count_sql if domain_id is None else count_in_sql, () if domain_id is None else (domain_id,)
    )
    return [], int(next(iter(count))[0])


async def one(db: aiosqlite.Connection, table: str, row_id: int) -> Row | None:
    """One row (with its version as the last column), or None."""
    rows = await db.execute_fetchall(_GETS[table], (row_id,))
    for row in rows:
        return tuple(row)
    return None
