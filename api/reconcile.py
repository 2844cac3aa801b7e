"""Seed sections 12-13: apply configuration now, per-agent reconcile status, daemon status."""

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, QueryParameter

from api.common import LimitParam, PageParam, principal, runtime
from api.errors import ERROR_SPECS, ApiError
from api.schemas import Message, PageMeta
from workers.reconcile import queue
from workers.reconcile.agent import CONTROL_SUBJECT
from workers.reconcile.layout import Layout
from workers.reconcile.queue import QueuedMessage, QueueError

Req = Request[Any, Any, Any]
DryRun = Annotated[bool, QueryParameter(description="show the validated diff, apply nothing")]
AGENTS = "SELECT host, data, at, seq FROM agents ORDER BY host"
# Lag: events an agent has not applied yet, not counting the agents' own reports.
BEHIND = "SELECT count(*) FROM events WHERE seq > ? AND type != 'agent.reconciled'"


class ReconcileResult(msgspec.Struct, frozen=True, omit_defaults=True):
    message: str
    log: list[str]
    diff: dict[str, str] = {}


class AgentStatus(msgspec.Struct, frozen=True):
    host: str
    mode: str
    applied_seq: int
    lag: int
    ok: bool
    step: str
    last_error: str
    drift: list[str]
    changed: dict[str, str]
    duration_ms: int
    reported_at: str


class AgentStatusList(msgspec.Struct, frozen=True):
    data: list[AgentStatus]
    log_seq: int


class ServiceStatus(msgspec.Struct, frozen=True):
    name: str
    status: str
    message: str


class ReconcileController(Controller):
    tags = ["system"]

    @post(
        "/api/v1/system/reconcile",
        status_code=200,
        responses=ERROR_SPECS,
        summary="Re-render and apply the mail-stack configuration now (?dry_run=true: diff)",
    )
    async def reconcile(self, request: Req, dry_run: DryRun = False) -> Response[Any]:
        _not_domain_scoped(request)
        rt = runtime(request)
        if not dry_run and rt.event_log is not None and rt.event_log.connected:
            # every agent (on any host) listens: re-render now
            await rt.event_log.nc.publish(f"{rt.settings.prefix}{CONTROL_SUBJECT}", b"")
        if rt.agent is None:
            return Response(ReconcileResult(message="reconcile requested from the agents", log=[]))
        outcome = await rt.agent.reconcile(dry_run=dry_run)
        if not outcome.ok:
            body = {
                "error": f"reconcile failed at {outcome.step}",
                "detail": outcome.error,
                "code": "INTERNAL_ERROR",
                "log": outcome.log,
            }
            return Response(body, status_code=500)
        if dry_run:
            message = f"dry run: {len(outcome.changed)} file(s) would change (validated)"
            return Response(ReconcileResult(message=message, log=outcome.log, diff=outcome.diff))
        return Response(ReconcileResult(message="mail config applied", log=outcome.log))

    @get(
        "/api/v1/system/reconcile/status",
        responses=ERROR_SPECS,
        summary="Every reconcile agent: applied sequence, lag, last result, drift",
    )
    async def status(self, request: Req) -> AgentStatusList:
        _not_domain_scoped(request)
        rt = runtime(request)
        head = rt.projector.applied
        rows = await rt.reader.execute_fetchall(AGENTS)
        data = []
        for host, raw, at, _seq in rows:
            report = msgspec.json.decode(str(raw).encode())
            behind = await rt.reader.execute_fetchall(BEHIND, (report["applied_seq"],))
            data.append(
                AgentStatus(
                    host=host,
                    mode=report["mode"],
                    applied_seq=report["applied_seq"],
                    lag=int(next(iter(behind))[0]),
                    ok=report["ok"],
                    step=report["step"],
                    last_error=report.get("error", ""),
                    drift=list(report.get("drift", [])),
                    changed=report.get("changed", {}),
                    duration_ms=report.get("duration_ms", 0),
                    reported_at=at,
                )
            )
        return AgentStatusList(data=data, log_seq=head)

    @get("/api/v1/postfix/status", responses=ERROR_SPECS, summary="Postfix daemon status")
    async def postfix_status(self, request: Req) -> ServiceStatus:
        return _service(request, "postfix")

    @get("/api/v1/dovecot/status", responses=ERROR_SPECS, summary="Dovecot daemon status")
    async def dovecot_status(self, request: Req) -> ServiceStatus:
        return _service(request, "dovecot")


def _service(request: Req, name: str) -> ServiceStatus:
    agent = runtime(request).agent
    if agent is None or agent.stack is None:
        mode = "no agent" if agent is None else f"mail stack mode {agent.mode!r}"
        return ServiceStatus(
            name=name, status="unknown", message=f"{name} is not managed by this process ({mode})"
        )
    state = agent.stack.status()[name]
    if not state.installed:
        return ServiceStatus(name=name, status="unknown", message=f"{name} is not installed")
    if state.running:
        return ServiceStatus(name=name, status="running", message="")
    return ServiceStatus(name=name, status="stopped", message=f"{name} is not running")


class QueueList(msgspec.Struct, frozen=True):
    data: list[QueuedMessage]
    meta: PageMeta


class DeleteIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    message_id: Annotated[str, msgspec.Meta(max_length=64)]


def _layout(request: Req) -> Layout:
    agent = runtime(request).agent
    if agent is None or agent.stack is None:
        raise ApiError(
            503,
            "DEPENDENCY_UNAVAILABLE",
            "no mail stack here",
            "this process does not run a mail stack (MAILPANEL_MAILSTACK=sandbox)",
        )
    return agent.layout


async def _queue_call(fn: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except QueueError as exc:
        raise ApiError(500, "INTERNAL_ERROR", "postfix queue command failed", str(exc)) from None


class QueueController(Controller):
    tags = ["queue"]

    @get("/api/v1/postfix/queue", responses=ERROR_SPECS, summary="Messages in the Postfix queue")
    async def list_queue(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50
    ) -> QueueList:
        _not_domain_scoped(request)  # the queue shows every domain's senders and recipients
        messages = await _queue_call(queue.list_queue, _layout(request))
        start = (page - 1) * limit
        return QueueList(
            data=messages[start : start + limit],
            meta=PageMeta(page=page, limit=limit, total=len(messages)),
        )

    @post(
        "/api/v1/postfix/flush",
        status_code=200,
        responses=ERROR_SPECS,
        summary="Try every deferred message again now (postqueue -f)",
    )
    async def flush(self, request: Req) -> Message:
        _not_domain_scoped(request)
        await _queue_call(queue.flush, _layout(request))
        return Message("queue flushed")

    @post(
        "/api/v1/postfix/queue/delete",
        status_code=200,
        responses=ERROR_SPECS,
        summary="Delete one message by queue id (postsuper -d)",
    )
    async def delete_message(self, request: Req, data: JSONBody[DeleteIn]) -> Message:
        _not_domain_scoped(request)
        if not queue.QUEUE_ID.match(data.message_id) or data.message_id.upper() == "ALL":
            raise ApiError(
                400,
                "VALIDATION_FAILED",
                "message_id is not a Postfix queue id",
                "5 to 32 letters and digits",
            )
        if not await _queue_call(queue.delete, _layout(request), data.message_id):
            raise ApiError(
                404, "NOT_FOUND", "message not in the queue", f"no queued message {data.message_id}"
            )
        return Message("message deleted")

    @get(
        "/api/v1/stats/mail",
        responses=ERROR_SPECS,
        summary="Sent (authenticated submissions) and received (local deliveries), 1 h / 24 h",
    )
    async def stats(self, request: Req) -> queue.MailStats:
        agent = runtime(request).agent
        if agent is None or agent.stack is None:
            return queue.MailStats()
        return await asyncio.to_thread(queue.mail_stats, agent.layout.postfix_log)


def _not_domain_scoped(request: Req) -> None:
    if principal(request).domains is not None:
        raise ApiError(403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot do this")
