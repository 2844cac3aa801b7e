"""The one error table: every failure becomes the flat {"error","detail","code"} body."""

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec

from commands.log import Unavailable
from core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    LimitExceeded,
    NotFound,
    ValidationFailed,
)

log = logging.getLogger("mailpanel.api")


class ErrorBody(msgspec.Struct, frozen=True):
    error: str
    detail: str
    code: str


class ApiError(Exception):
    """An error raised by the HTTP layer itself (auth, ids, pagination)."""

    def __init__(self, status: int, code: str, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.code = code
        self.error = error
        self.detail = detail


# error type -> (HTTP status, code); the first matching class in order wins.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (ValidationFailed, 400, "VALIDATION_FAILED"),
    (NotFound, 404, "NOT_FOUND"),
    (Conflict, 409, "CONFLICT"),
    (LimitExceeded, 409, "LIMIT_EXCEEDED"),
    (Forbidden, 403, "FORBIDDEN"),
    (DomainError, 500, "INTERNAL_ERROR"),
    (Unavailable, 503, "DEPENDENCY_UNAVAILABLE"),
    (ValidationException, 400, "VALIDATION_FAILED"),
    (NotAuthorizedException, 401, "UNAUTHORIZED"),
    (PermissionDeniedException, 403, "FORBIDDEN"),
    (NotFoundException, 404, "NOT_FOUND"),
    (MethodNotAllowedException, 405, "METHOD_NOT_ALLOWED"),
    (ClientException, 400, "VALIDATION_FAILED"),  # after its subclasses above; keeps e.g. 413
)


def error_response(
    status: int, code: str, error: str, detail: str = "", headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(error=error, detail=detail, code=code), status_code=status, headers=headers
    )


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts: list[str] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        key, message = item.get("key", ""), str(item.get("message", ""))
        if key == "data" and message == "'data'":
            parts.append("request body is required")
        elif key and key != "data":
            parts.append(f"{key}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts) or str(exc.detail)


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.error, exc.detail)
    status, code = next(
        ((s, c) for cls, s, c in ERROR_TABLE if isinstance(exc, cls)), (500, "INTERNAL_ERROR")
    )
    headers = None
    if isinstance(exc, DomainError):
        if status == 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.error)
        return error_response(status, code, exc.error, exc.detail)
    if isinstance(exc, Unavailable):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(status, code, "dependency unavailable", str(exc))
    if isinstance(exc, ValidationException):
        return error_response(status, code, "validation failed", _validation_detail(exc))
    if isinstance(exc, ClientException) and exc.status_code != status and exc.status_code < 500:
        status = exc.status_code  # 413, 415, …: the framework's status, our flat shape
    if isinstance(exc, HTTPException) and status != 500:
        if isinstance(exc, MethodNotAllowedException):
            headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        detail = str(exc.detail)
        error = {
            401: "unauthorized",
            403: "forbidden",
            404: "not found",
            405: "method not allowed",
        }.get(status, "bad request")
        return error_response(status, code, error, detail, headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500,
        "INTERNAL_ERROR",
        "internal error",
        "the server failed to handle the request; see its log",
    )


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description)


# The error responses every API route documents in OpenAPI.
ERROR_SPECS: dict[int, ResponseSpec] = {
    400: _spec("VALIDATION_FAILED: a field, the JSON body or a path id is not acceptable"),
    401: _spec("UNAUTHORIZED: X-API-Key or Bearer token missing or wrong"),
    404: _spec("NOT_FOUND"),
    409: _spec(
        "CONFLICT: already exists, or a concurrent change won; LIMIT_EXCEEDED: a "
        "domain cap (max_mailboxes, max_aliases, quota_total_bytes)"
    ),
    500: _spec("INTERNAL_ERROR"),
    503: _spec("DEPENDENCY_UNAVAILABLE: NATS or the read model is not available"),
}
