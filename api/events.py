"""GET /api/v1/events/export: the whole event log as NDJSON (unrestricted admin only).

The same format as `mailpanel export` (workers/export.py), streamed as it is read, with
backpressure: a slow client holds the NATS consumer back instead of filling memory. The export
covers the log as it is when the request arrives; events appended meanwhile are not in it. The
log holds password and token hashes, so only an unrestricted admin may read it, and every
export is logged with who asked and from where.
"""

import logging
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

from api.auth import client_ip
from api.common import principal, runtime
from api.errors import ERROR_SPECS, ApiError, ErrorBody
from commands.log import Unavailable
from workers.export import iter_export, snapshot

log = logging.getLogger("mailpanel.api")

Req = Request[Any, Any, Any]
MEDIA_TYPE = "application/x-ndjson"

EXPORT_SPECS: dict[int, ResponseSpec] = {
    **ERROR_SPECS,
    403: ResponseSpec(
        data_container=ErrorBody,
        description="FORBIDDEN: not an unrestricted admin (scope admin, no domains)",
    ),
}


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get(
        "/export",
        summary="The whole event log as NDJSON, one message per line (a backup)",
        description=(
            'Each line: {"seq","subject","time" (RFC 3339, ns),"headers" (object or null),'
            '"data" (the stored JSON payload, verbatim)}; a payload that is not one line of '
            'JSON comes as "data":null plus "data_b64". Load it with `mailpanel import`.'
        ),
        media_type=MEDIA_TYPE,
        responses=EXPORT_SPECS,
    )
    async def export_log(self, request: Req) -> Stream:
        caller = principal(request)
        if caller.scope != "admin" or caller.domains is not None:
            raise ApiError(
                403,
                "FORBIDDEN",
                "forbidden",
                "exporting the event log needs an unrestricted admin token",
            )
        event_log = runtime(request).event_log
        if event_log is None:
            raise Unavailable("event log (NATS) is not connected")
        snap = await snapshot(event_log)  # before the 200: NATS down is a 503, not a cut body
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        log.info(
            "event log export (%d events) for %s from %s",
            snap.messages,
            caller.name,
            client_ip(request.scope),
        )
        return Stream(
            iter_export(event_log, snap),
            media_type=MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="mailpanel-log-{stamp}.ndjson"',
                "Cache-Control": "no-store",
                "X-Mailpanel-Events": str(snap.messages),
                "X-Mailpanel-Last-Sequence": str(snap.last_seq),
            },
        )
