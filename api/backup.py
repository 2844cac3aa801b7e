"""Audit and recovery: snapshot backup and restore, time travel (`?as_of=`), revert.

- `GET /api/v1/backup` (unrestricted admin): the data plane as one JSON attachment, read in
  one SQLite transaction; password hashes and sealed keys only.
- `POST /api/v1/backup/restore` (unrestricted admin): validated in full first, then ONE
  `system.restored` event makes every resource table the backup's, ids included.
- `?as_of=<seq | RFC 3339>` on the domain, mailbox and alias GETs and the effective views:
  the read model as it was then, replayed from the events index (projections/asof.py).
- `POST /api/v1/events/:seq/revert` (write scope): the compensating event, or 409 with why.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import aiosqlite
import msgspec
from litestar import Controller, Litestar, Request, get, post
from litestar.datastructures import UploadFile
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream

from api.auth import client_ip
from api.common import MAX_ID, context, principal, runtime
from api.errors import ERROR_SPECS, ApiError, ErrorBody
from commands import state
from core import backup as backup_doc
from core import revert as revert_agg
from core.errors import ValidationFailed
from core.events import SystemRestored, decode, event_tag
from projections import asof
from projections.queries import read_snapshot_at
from workers.reconcile.agent import CONTROL_SUBJECT

log = logging.getLogger("mailpanel.api")

Req = Request[Any, Any, Any]
MAX_BACKUP_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024

AsOfParam = Annotated[
    str | None,
    QueryParameter(
        max_length=64,
        description="the state as it was at this stream sequence or RFC 3339 time",
    ),
]

ADMIN_SPECS: dict[int, ResponseSpec] = {
    **ERROR_SPECS,
    403: ResponseSpec(
        data_container=ErrorBody,
        description="FORBIDDEN: not an unrestricted admin (scope admin, no domains)",
    ),
}


class RestoreOut(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    domains: int
    mailboxes: int
    aliases: int


class RevertOut(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    seq: int  # the compensating event (the current version when nothing needed doing)
    reverts: int
    type: str  # the compensating event's type ("" when nothing needed doing)


# ---- time travel -------------------------------------------------------------------------


def time_travel(app: Litestar) -> asof.AsOf:
    """The process's replay cache, made on first use (closed by `close_time_travel`)."""
    cache: asof.AsOf | None = getattr(app.state, "asof", None)
    if cache is None:
        settings = app.state.runtime.settings
        cache = asof.AsOf(settings.read_db, settings.data_dir / "asof")
        app.state.asof = cache
    return cache


async def close_time_travel(app: Litestar) -> None:
    cache: asof.AsOf | None = getattr(app.state, "asof", None)
    if cache is not None:
        await cache.close()
        app.state.asof = None


async def as_of_seq(request: Req, raw: str) -> int:
    """The sequence `as_of` names (400 when it is neither a sequence nor an RFC 3339 time)."""
    try:
        point = asof.parse(raw)
    except ValueError as exc:
        raise ApiError(400, "VALIDATION_FAILED", "invalid as_of", str(exc)) from None
    if isinstance(point, int):
        return point
    return await asof.resolve_time(runtime(request).reader, point)


@asynccontextmanager
async def reading(request: Req, as_of: str | None) -> AsyncIterator[aiosqlite.Connection]:
    """The reader to answer from: the live read model, or (`as_of`) a replay of it up to
    then; a point at or past the checkpoint is the live state."""
    rt = runtime(request)
    seq = None if as_of is None else await as_of_seq(request, as_of)
    if seq is None or seq >= rt.projector.applied:
        yield rt.reader
    else:
        async with time_travel(request.app).at(seq) as db:
            yield db


# ---- backup and restore ------------------------------------------------------------------


def _unrestricted_admin(request: Req, what: str) -> None:
    caller = principal(request)
    if caller.scope != "admin" or caller.domains is not None:
        raise ApiError(403, "FORBIDDEN", "forbidden", f"{what} needs an unrestricted admin token")


async def _body(request: Req) -> bytes:
    """The backup document: the JSON body, or the `file` field of a multipart form."""
    if "multipart/form-data" in request.headers.get("content-type", ""):
        form = await request.form()
        value = form.get("file")
        if isinstance(value, UploadFile):
            raw = await value.read()
        elif isinstance(value, str):
            raw = value.encode()
        else:
            raise ValidationFailed("file", "send the backup as the multipart field `file`")
    else:
        raw = await request.body()
    if not raw.strip():
        raise ValidationFailed("body", "request body is required: a backup document")
    if len(raw) > MAX_BACKUP_BYTES:
        raise ValidationFailed("body", "the backup document is too large")
    return raw


def _chunks(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]


class BackupController(Controller):
    path = "/api/v1/backup"
    tags = ["backup"]

    @get(
        "/",
        summary="The data plane as a JSON attachment (a consistent snapshot)",
        description=(
            "domains, mailboxes (password hashes), aliases, the three config tiers, domain and "
            "mailbox overrides, TLS registrations and DKIM keys (keys as sealed tokens), the "
            "whitelist; `log_sequence` is the read-model checkpoint it reflects."
        ),
        media_type="application/json",
        responses=ADMIN_SPECS,
    )
    async def backup(self, request: Req) -> Stream:
        _unrestricted_admin(request, "a backup")
        snapshot, checkpoint = await asyncio.to_thread(
            read_snapshot_at, runtime(request).settings.read_db
        )
        now = datetime.now(UTC)
        doc = backup_doc.document(snapshot, now.strftime("%Y-%m-%dT%H:%M:%SZ"), checkpoint)
        body = msgspec.json.encode(doc)
        log.info(
            "backup at sequence %d for %s from %s",
            checkpoint,
            principal(request).name,
            client_ip(request.scope),
        )
        stamp = now.strftime("%Y%m%d-%H%M%S")
        return Stream(
            iter(_chunks(body)),
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="mailpanel-backup-{stamp}.json"',
                "Cache-Control": "no-store",
                "Content-Length": str(len(body)),
            },
        )

    @post(
        "/restore",
        summary="Replace domains, mailboxes, aliases, tiers, overrides, TLS, DKIM, whitelist",
        description=(
            "Body: a backup document (application/json, or multipart/form-data with a `file` "
            "field). Validated in full before anything changes (400); a schema_version this "
            "server cannot read is a 500. One `system.restored` event then makes every "
            "resource table the backup's, with the backup's ids."
        ),
        status_code=200,
        responses=ADMIN_SPECS,
    )
    async def restore(self, request: Req) -> RestoreOut:
        _unrestricted_admin(request, "a restore")
        backup = backup_doc.parse(await _body(request))
        rt = runtime(request)
        result = await rt.commands.restore(await context(request), backup)
        log.warning(
            "backup restored at sequence %d by %s from %s",
            result.seq,
            principal(request).name,
            client_ip(request.scope),
        )
        await _reconcile_now(request)
        return RestoreOut(
            message="backup restored",
            domains=len(backup.domains),
            mailboxes=len(backup.mailboxes),
            aliases=len(backup.aliases),
        )


async def _reconcile_now(request: Req) -> None:
    """Ask every agent to re-render now: the mail stack follows the restored state."""
    rt = runtime(request)
    if rt.event_log is not None and rt.event_log.connected:
        try:
            await rt.event_log.nc.publish(f"{rt.settings.prefix}{CONTROL_SUBJECT}", b"")
        except Exception as exc:  # the agents' own level-triggered runs catch up anyway
            log.warning("could not ask the agents to reconcile: %r", exc)


# ---- revert ------------------------------------------------------------------------------


class RevertController(Controller):
    tags = ["audit"]

    @post(
        "/api/v1/events/{seq:int}/revert",
        summary="Undo one event with its compensating event",
        description=(
            "Creations are deleted, updates set back, deletions undone with the same ids "
            "(a domain with its mailboxes, aliases and overrides), tiers and overrides set "
            "back, a restore reverted to the state before it. 409 with the reason when a "
            "later event changed the same resource or the name is taken again."
        ),
        status_code=200,
        responses=ADMIN_SPECS,
    )
    async def revert(self, request: Req, seq: int) -> RevertOut:
        rt = runtime(request)
        caller = principal(request)
        found = await state.event_row(rt.reader, seq) if 0 < seq <= MAX_ID else None
        if found is None:
            raise ApiError(404, "NOT_FOUND", "event not found", f"no event at sequence {seq}")
        event = decode(found[0].encode()).event
        domain = revert_agg.domain_of(event)
        if caller.domains is not None:
            if domain is None:
                raise ApiError(
                    403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot revert this"
                )
            if not caller.sees(domain):
                raise ApiError(404, "NOT_FOUND", "event not found", f"no event at sequence {seq}")
        if event_tag(event) == "system.restored":
            _unrestricted_admin(request, "reverting a restore")
        ctx = await context(request)
        scoped = caller.domains is not None
        if isinstance(event, revert_agg.NEEDS_BEFORE) and not found[1]:
            async with time_travel(request.app).at(seq - 1) as before:
                result = await rt.commands.revert(ctx, seq, before, scoped)
        else:
            result = await rt.commands.revert(ctx, seq, rt.reader, scoped)
        if result.event is None:
            return RevertOut(
                message="nothing to revert: already as before", seq=result.seq, reverts=seq, type=""
            )
        if isinstance(result.event, SystemRestored):
            await _reconcile_now(request)
        return RevertOut(
            message=f"event {seq} reverted",
            seq=result.seq,
            reverts=seq,
            type=event_tag(result.event),
        )
