"""Small helpers shared by the controllers: ids, paging, command context, ETags."""

import hashlib
import hmac
from typing import Annotated, Any

from litestar import Request, Response
from litestar.params import PathParameter, QueryParameter

from api.auth import Principal, client_ip
from api.errors import ApiError
from api.runtime import Runtime
from commands.service import Context

MAX_ID = 2**63 - 1

PageParam = Annotated[int, QueryParameter(ge=1, le=10**9, description="page number, from 1")]
LimitParam = Annotated[int, QueryParameter(ge=1, le=500, description="rows per page, max 500")]
DomainFilter = Annotated[
    int | None, QueryParameter(ge=1, le=MAX_ID, description="only rows of this domain")
]
PathId = Annotated[str, PathParameter(description="positive integer id", pattern=r"^[0-9]+$")]


def principal(request: Request[Any, Any, Any]) -> Principal:
    p: Principal = request.scope["user"]
    return p


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def parse_id(raw: str, what: str) -> int:
    """Path ids are positive integers; anything else is a 400, not a 404."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) < 1 or int(raw) > MAX_ID:
        raise ApiError(
            400, "VALIDATION_FAILED", f"invalid {what} id", f"{raw!r} is not a positive integer id"
        )
    return int(raw)


async def context(request: Request[Any, Any, Any]) -> Context:
    principal: Principal = request.scope["user"]
    headers = request.headers
    key = headers.get("idempotency-key", "")
    if len(key) > 255:
        raise ApiError(
            400, "VALIDATION_FAILED", "invalid Idempotency-Key", "at most 255 characters"
        )
    fingerprint = ""
    if key:  # keyed by a server secret: the body may hold a password, never hash it bare
        secret = runtime(request).settings.data_key.encode()
        body = await request.body()
        message = f"{request.method} {request.url.path}\n".encode() + body
        fingerprint = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return Context(
        actor=principal.name,
        actor_id=principal.id,
        source_ip=client_ip(request.scope),
        request_id=request.scope["state"].get("request_id", ""),
        idempotency_key=key,
        fingerprint=fingerprint,
        if_match=_if_match(headers.get("if-match")),
    )


def _if_match(raw: str | None) -> int | None:
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ApiError(
            400, "VALIDATION_FAILED", "invalid If-Match", 'expected an ETag such as "42"'
        )
    return int(value)


def with_etag(content: Any, version: int, status: int = 200) -> Response[Any]:
    return Response(content, status_code=status, headers={"ETag": f'"{version}"'})
