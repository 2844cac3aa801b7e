"""The quarantine of this process's mail host: messages held by the content filter for a
spam or virus verdict with action "quarantine". List, release (deliver to the original
recipients, unscanned), delete. Unrestricted admins only: a held message may be anyone's."""

import asyncio
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post

from api.common import LimitParam, PageParam, PathId, parse_id, principal, runtime
from api.errors import ERROR_SPECS, ApiError
from api.schemas import Message, PageMeta
from workers.filter import (
    QuarantineItem,
    delete_quarantine,
    get_quarantine,
    list_quarantine,
    release_quarantine,
)

Req = Request[Any, Any, Any]


class QuarantinedMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    received_at: str
    sender: str
    recipients: list[str]
    subject: str
    score: float | None
    virus: str | None
    reason: str
    size: int


class QuarantineList(msgspec.Struct, frozen=True):
    data: list[QuarantinedMessage]
    meta: PageMeta


def _out(item: QuarantineItem) -> QuarantinedMessage:
    fields = msgspec.structs.asdict(item)
    fields.pop("path")  # a server path is nobody's business
    return QuarantinedMessage(**fields)


def _db(request: Req) -> Any:
    if principal(request).domains is not None:
        raise ApiError(403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot do this")
    agent = runtime(request).agent
    if agent is None or agent.quarantine_db is None or agent.content_filter is None:
        raise ApiError(
            503,
            "DEPENDENCY_UNAVAILABLE",
            "no content filter here",
            "this process runs no mail stack with a content filter (MAILPANEL_MAILSTACK)",
        )
    return agent


class QuarantineController(Controller):
    path = "/api/v1/quarantine"
    tags = ["quarantine"]

    @get("/", summary="Held messages, newest first", responses=ERROR_SPECS)
    async def list_held(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50
    ) -> QuarantineList:
        agent = _db(request)
        found = await asyncio.to_thread(
            list_quarantine, agent.quarantine_db, limit=limit, offset=(page - 1) * limit
        )
        return QuarantineList(
            data=[_out(i) for i in found.items],
            meta=PageMeta(page=page, limit=limit, total=found.total),
        )

    @get("/{item_id:str}", summary="One held message", responses=ERROR_SPECS)
    async def get_held(self, request: Req, item_id: PathId) -> QuarantinedMessage:
        agent = _db(request)
        item = await asyncio.to_thread(
            get_quarantine, agent.quarantine_db, parse_id(item_id, "message")
        )
        if item is None:
            raise ApiError(404, "NOT_FOUND", "message not found", f"nothing held as {item_id}")
        return _out(item)

    @post("/{item_id:str}/release", summary="Deliver it", status_code=200, responses=ERROR_SPECS)
    async def release(self, request: Req, item_id: PathId) -> Message:
        agent = _db(request)
        qid = parse_id(item_id, "message")
        try:
            reply = await release_quarantine(
                agent.quarantine_db,
                qid,
                "127.0.0.1",
                agent.layout.reinject_port,
                helo=agent.layout.hostname,
            )
        except KeyError:
            raise ApiError(
                404, "NOT_FOUND", "message not found", f"nothing held as {qid}"
            ) from None
        if not reply.ok:
            raise ApiError(500, "INTERNAL_ERROR", "release failed", reply.line())
        return Message("message released")

    @delete("/{item_id:str}", summary="Delete it", status_code=200, responses=ERROR_SPECS)
    async def remove(self, request: Req, item_id: PathId) -> Message:
        agent = _db(request)
        qid = parse_id(item_id, "message")
        if not await asyncio.to_thread(delete_quarantine, agent.quarantine_db, qid):
            raise ApiError(404, "NOT_FOUND", "message not found", f"nothing held as {qid}")
        return Message("message deleted")
