"""Seed sections 12-13: apply configuration now, per-agent reconcile status, daemon status."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import QueryParameter

from api.common import principal, runtime
from api.errors import ERROR_SPECS, ApiError
from workers.reconcile.agent import CONTROL_SUBJECT

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
        if principal(request).domains is not None:
            raise ApiError(403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot do this")
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
