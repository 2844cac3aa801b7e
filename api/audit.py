"""The audit trail: every event with who, when, from where, on which resource, and the
before/after of what it changed; per-object history (deleted objects included); a live
server-sent-events feed. Reads the projector's events index; secrets are never shown."""

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent

from api.auth import Principal
from api.common import LimitParam, PageParam, PathId, parse_id, principal, runtime
from api.errors import ERROR_SPECS, ApiError
from api.resources import _fetch
from api.schemas import PageMeta
from core.audit import Change, fold
from core.events import decode
from core.subjects import dkim_subject, domain_subject, encode_key

Req = Request[Any, Any, Any]
STREAM_POLL_S = 0.25
STREAM_BATCH = 200

COLUMNS = "seq, at, type, actor, actor_id, source_ip, request_id, resource, outcome, subject, data"


class AuditItem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    at: str
    type: str
    actor: str
    source_ip: str
    request_id: str
    resource: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    outcome: str = ""  # "rejected: <why>" when the event was left without effect
    reverts: int = 0  # the sequence this event reverts (POST /events/:seq/revert); 0: none


class AuditList(msgspec.Struct, frozen=True):
    data: list[AuditItem]
    meta: PageMeta


def _time(raw: str | None, what: str) -> str | None:
    """An RFC 3339 bound in the index's own format (UTC, seconds, Z)."""
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "VALIDATION_FAILED", f"invalid {what}", f"{raw!r} is not an RFC 3339 time"
        ) from None
    if at.tzinfo is None:
        raise ApiError(400, "VALIDATION_FAILED", f"invalid {what}", "give a time zone (Z)")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scope(who: Principal, prefix: str) -> tuple[str, list[Any]]:
    """A domain-scoped reader sees the events of its domains' subjects only."""
    if who.domains is None:
        return "", []
    parts, args = [], []
    for name in who.domains:
        parts.append("subject IN (?, ?) OR subject GLOB ?")
        args += [
            domain_subject(name, prefix),
            dkim_subject(name, prefix),
            f"{prefix}.addr.*{encode_key('@' + name)}",
        ]
    return "(" + " OR ".join(parts or ["0"]) + ")", args


async def _changes(request: Req, rows: list[tuple[Any, ...]]) -> dict[int, Change]:
    """Before/after for each row: each touched resource's events folded up to the newest."""
    db = runtime(request).reader
    newest: dict[str, int] = {}
    for row in rows:
        newest[row[7]] = max(newest.get(row[7], 0), int(row[0]))
    out: dict[int, Change] = {}
    for resource, upto in newest.items():
        history = await db.execute_fetchall(
            "SELECT seq, data, outcome FROM events WHERE resource = ? AND seq <= ? ORDER BY seq",
            (resource, upto),
        )
        events = []
        for seq, data, outcome in history:
            if outcome:  # left without effect: changed nothing
                continue
            events.append((int(seq), _event(data)))
        for change in fold(resource, events):
            out[change.seq] = change
    return out


class _RevertsMeta(msgspec.Struct):
    reverts: int = 0


class _RevertsOf(msgspec.Struct):
    meta: _RevertsMeta


# Only meta.reverts of a stored envelope: the event itself need not be decoded again.
_reverts = msgspec.json.Decoder(_RevertsOf)


def _event(data: str) -> Any:
    """The event of an index row (the row holds the stored envelope)."""
    return decode(data.encode()).event


async def _items(request: Req, rows: list[tuple[Any, ...]]) -> list[AuditItem]:
    changes = await _changes(request, rows)
    items = []
    for seq, at, kind, actor, _actor_id, ip, request_id, resource, outcome, _s, data in rows:
        change = changes.get(int(seq))
        reverts = _reverts.decode(str(data).encode()).meta.reverts
        items.append(
            AuditItem(
                seq=int(seq),
                at=at,
                type=kind,
                actor=actor,
                source_ip=ip,
                request_id=request_id,
                resource=resource,
                action=change.action if change else ("rejected" if outcome else "event"),
                before=change.before if change else None,
                after=change.after if change else None,
                outcome=outcome,
                reverts=reverts,
            )
        )
    return items


async def _page(
    request: Req, where: list[str], args: list[Any], page: int, limit: int
) -> AuditList:
    scope, scope_args = _scope(principal(request), runtime(request).settings.prefix)
    if scope:
        where = [*where, scope]
        args = [*args, *scope_args]
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    db = runtime(request).reader
    rows = [
        tuple(r)
        for r in await db.execute_fetchall(
            f"SELECT {COLUMNS} FROM events{clause} ORDER BY seq LIMIT ? OFFSET ?",
            (*args, limit, (page - 1) * limit),
        )
    ]
    counted = await db.execute_fetchall(f"SELECT count(*) FROM events{clause}", tuple(args))
    total = next(iter(counted))[0]
    return AuditList(
        data=await _items(request, rows), meta=PageMeta(page=page, limit=limit, total=int(total))
    )


Text = Annotated[str | None, QueryParameter(max_length=300)]


class AuditController(Controller):
    tags = ["audit"]

    @get("/api/v1/events", summary="The audit trail, filtered and paged", responses=ERROR_SPECS)
    async def list_events(
        self,
        request: Req,
        page: PageParam = 1,
        limit: LimitParam = 50,
        resource: Text = None,
        actor: Text = None,
        type: Text = None,
        since: Text = None,
        until: Text = None,
        after_seq: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> AuditList:
        where: list[str] = []
        args: list[Any] = []
        if resource:
            where.append("resource = ?")
            args.append(resource)
        if actor:
            where.append("actor = ?")
            args.append(actor)
        if type:  # an exact tag, or a family with a trailing dot ("mailbox.")
            where.append("type GLOB ?" if type.endswith(".") else "type = ?")
            args.append(type + "*" if type.endswith(".") else type)
        if (low := _time(since, "since")) is not None:
            where.append("at >= ?")
            args.append(low)
        if (high := _time(until, "until")) is not None:
            where.append("at <= ?")
            args.append(high)
        if after_seq is not None:
            where.append("seq > ?")
            args.append(after_seq)
        return await _page(request, where, args, page, limit)

    @get("/api/v1/events/{seq:int}", summary="One event", responses=ERROR_SPECS)
    async def get_event(self, request: Req, seq: int) -> AuditItem:
        page = await _page(request, ["seq = ?"], [seq], 1, 1)
        if not page.data:
            raise ApiError(404, "NOT_FOUND", "event not found", f"no event at sequence {seq}")
        return page.data[0]

    @get(
        "/api/v1/domains/{domain_id:str}/history",
        summary="A domain's changes",
        responses=ERROR_SPECS,
    )
    async def domain_history(
        self, request: Req, domain_id: PathId, page: PageParam = 1, limit: LimitParam = 50
    ) -> AuditList:
        return await self._history(request, "domain", domain_id, page, limit)

    @get(
        "/api/v1/mailboxes/{mailbox_id:str}/history",
        summary="A mailbox's changes",
        responses=ERROR_SPECS,
    )
    async def mailbox_history(
        self, request: Req, mailbox_id: PathId, page: PageParam = 1, limit: LimitParam = 50
    ) -> AuditList:
        return await self._history(request, "mailbox", mailbox_id, page, limit)

    @get(
        "/api/v1/aliases/{alias_id:str}/history",
        summary="An alias's changes",
        responses=ERROR_SPECS,
    )
    async def alias_history(
        self, request: Req, alias_id: PathId, page: PageParam = 1, limit: LimitParam = 50
    ) -> AuditList:
        return await self._history(request, "alias", alias_id, page, limit)

    @staticmethod
    async def _history(request: Req, kind: str, raw_id: str, page: int, limit: int) -> AuditList:
        """Also for a deleted object: its events stay in the index."""
        row_id = parse_id(raw_id, kind)
        result = await _page(request, ["resource = ?"], [f"{kind}:{row_id}"], page, limit)
        if result.meta.total == 0:
            tables = {"domain": "domains", "mailbox": "mailboxes", "alias": "aliases"}
            await _fetch(request, tables[kind], row_id, kind)  # 404 with the usual words
        return result

    @get(
        "/api/v1/events/stream",
        summary="New events as server-sent events (Last-Event-ID)",
        responses=ERROR_SPECS,
    )
    async def stream(
        self, request: Req, after_seq: Annotated[int | None, QueryParameter(ge=0)] = None
    ) -> ServerSentEvent:
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else (after_seq if after_seq is not None else None)
        if start is None:  # from now on
            rows = await runtime(request).reader.execute_fetchall("SELECT max(seq) FROM events")
            start = int(next(iter(rows))[0] or 0)
        return ServerSentEvent(_feed(request, start))


async def _feed(request: Req, after: int) -> AsyncGenerator[Any, None]:
    from litestar.response.sse import ServerSentEventMessage

    while True:
        page = await _page(request, ["seq > ?"], [after], 1, STREAM_BATCH)
        for item in page.data:
            after = item.seq
            yield ServerSentEventMessage(
                data=msgspec.json.encode(item).decode(), event=item.type, id=str(item.seq)
            )
        if not page.data:  # Litestar ends the stream when the client goes away
            await asyncio.sleep(STREAM_POLL_S)
