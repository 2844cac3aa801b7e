"""The web UI's plumbing: the session cookie, CSRF tokens, rate limits, rendering, and the
bridge that runs the JSON API's own handlers for a page.

The UI has no rules of its own. A page or form calls the very handler function the JSON API
route uses (`call(Controller, "method", request, ...)`), after `api.auth.authorize()` has been
asked about that route's method and path with the cookie's principal: a `read` principal gets
the same 403 from a form as from the API, a domain-scoped one the same 404s and 403s.
"""

import asyncio
import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect, Stream

from api.access import ip_in
from api.auth import Principal, authenticate, authorize, client_ip, peer_ip
from api.common import runtime
from api.errors import ERROR_TABLE, ApiError
from api.system import version
from commands.log import Unavailable
from core.errors import DomainError, ValidationFailed

Req = Request[Any, Any, Any]
PathStr = Annotated[str, PathParameter(max_length=300)]
PathSeq = Annotated[int, PathParameter(ge=0)]
QueryStr = Annotated[str, QueryParameter(max_length=2000)]
PageQ = Annotated[int, QueryParameter(ge=1, le=10**9)]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates" / "ui"
STATIC = ROOT / "static" / "ui"

SESSION_COOKIE = "mailpanel_session"
LOGIN_COOKIE = "mailpanel_login"  # pre-session CSRF secret of the login form
FLASH_COOKIE = "mailpanel_flash"
COOKIE_PATH = "/ui"

HTML = "text/html"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ---- the session cookie ------------------------------------------------------------------


class Credential(msgspec.Struct, frozen=True, array_like=True):
    """What the cookie holds: the login JWT ("jwt") or a managed token / the API key ("key")."""

    kind: str
    secret: str

    def headers(self) -> dict[str, str]:
        if self.kind == "jwt":
            return {"authorization": f"Bearer {self.secret}"}
        return {"x-api-key": self.secret}


def encode_credential(cred: Credential) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cred)).decode().rstrip("=")


def decode_credential(raw: str) -> Credential | None:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        cred = msgspec.json.decode(base64.urlsafe_b64decode(padded), type=Credential)
    except (ValueError, msgspec.DecodeError):
        return None
    return cred if cred.kind in ("jwt", "key") and cred.secret else None


def _mac(request: Req, purpose: str, value: str) -> str:
    key = runtime(request).settings.jwt_secret.encode()
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Req) -> str:
    """Per session: an HMAC of the session cookie under the server's JWT secret, so a page
    of another site can neither read nor compute it."""
    raw = request.scope.get("state", {}).get("ui_session", "")
    return _mac(request, "csrf", raw) if raw else ""


def login_csrf(request: Req, pre: str) -> str:
    return _mac(request, "login", pre)


def is_https(request: Req) -> bool:
    """TLS to us, or to a trusted proxy that says so."""
    if request.url.scheme == "https":
        return True
    access = runtime(request).access
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return (
        proto == "https"
        and bool(access.proxy_nets)
        and ip_in(peer_ip(request.scope), access.proxy_nets)
    )


def cookie(request: Req, key: str, value: str, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path=COOKIE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def expired(request: Req, key: str) -> Cookie:
    return Cookie(
        key=key,
        value="",
        path=COOKIE_PATH,
        max_age=0,
        expires=0,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def flash_cookie(request: Req, message: str, kind: str = "ok") -> Cookie:
    value = base64.urlsafe_b64encode(msgspec.json.encode([kind, message[:500]])).decode()
    return cookie(request, FLASH_COOKIE, value.rstrip("="), max_age=60)


def read_flash(request: Req) -> tuple[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        kind, message = msgspec.json.decode(
            base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), type=tuple[str, str]
        )
    except (ValueError, msgspec.DecodeError):
        return None
    return (kind if kind in ("ok", "error") else "ok"), message


# ---- errors as pages ---------------------------------------------------------------------


class UiError(Exception):
    """A refusal the UI shows as a page (403 CSRF, 404, 429, ...)."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail


class FormError(Exception):
    """A form's input refused: shown next to `field` ("" = the form as a whole)."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def form_error(exc: Exception, fields: tuple[str, ...] = ()) -> FormError:
    """The field an error of the API's code concerns, and its words."""
    if isinstance(exc, FormError):
        return exc
    if isinstance(exc, ValidationFailed):
        text = exc.error if exc.detail == f"field: {exc.field}" else f"{exc.error} ({exc.detail})"
        return FormError(exc.field, text, 400)
    if isinstance(exc, DomainError):
        status = next((s for cls, s, _c in ERROR_TABLE if isinstance(exc, cls)), 500)
        return FormError(_field_in(f"{exc.error} {exc.detail}", fields), _words(exc), status)
    if isinstance(exc, ApiError):
        field = _field_in(f"{exc.error} {exc.detail}", fields)
        text = exc.error if not exc.detail else f"{exc.error}: {exc.detail}"
        return FormError(field, text, exc.status)
    if isinstance(exc, msgspec.ValidationError):
        message = str(exc)
        field = message.rpartition("`$.")[2].rstrip("`").split(".")[0].split("[")[0]
        return FormError(field if "`$." in message else "", message.split(" - at ")[0], 400)
    if isinstance(exc, Unavailable):
        return FormError("", f"the event log is not reachable right now: {exc}", 503)
    raise exc


def _words(exc: DomainError) -> str:
    return exc.error if not exc.detail else f"{exc.error}: {exc.detail}"


def _field_in(text: str, fields: tuple[str, ...]) -> str:
    """An API-layer error names its field in its words ("field: x", "invalid x")."""
    if "field: " in text:
        name = text.split("field: ", 1)[1].split()[0].strip(".,;:")
        if name in fields:
            return name
    for name in fields:
        if f"invalid {name}" in text or text.startswith(f"{name} "):
            return name
    return ""


# ---- the bridge to the API's handlers ----------------------------------------------------


def who(request: Req) -> Principal:
    p: Principal = request.scope["user"]
    return p


def api_route(controller: type, name: str) -> tuple[str, str]:
    """The method and path of a JSON API handler, as the auth middleware would see them."""
    handler = getattr(controller, name)
    declared = vars(controller).get("path", "")
    base = (declared if isinstance(declared, str) else "").rstrip("/")
    path = base + "/" + sorted(handler.paths)[0].lstrip("/")
    method = sorted(m for m in handler.http_methods if m not in ("HEAD", "OPTIONS"))[0]
    return method, path


async def call(controller: type, name: str, request: Req, **kwargs: Any) -> Any:
    """Run an API handler for the UI, with the same authorization as its route. The handler
    gets the UI's request: its principal, client address and request id go into the events.
    A Response's content is returned (a Stream is returned as it is)."""
    result = await call_raw(controller, name, request, **kwargs)
    if isinstance(result, Response) and not isinstance(result, Stream):
        return result.content
    return result


async def call_raw(controller: type, name: str, request: Req, **kwargs: Any) -> Any:
    method, path = api_route(controller, name)
    authorize(who(request), method, path)
    return await getattr(controller, name).fn(controller, request, **kwargs)


async def attempt(controller: type, name: str, request: Req, **kwargs: Any) -> tuple[Any, str]:
    """call(), but a refusal becomes words to show in the page instead of an error page."""
    try:
        return await call(controller, name, request, **kwargs), ""
    except (ApiError, DomainError, Unavailable) as exc:
        return None, form_error(exc).message


def route_exists(request: Req, method: str, needle: str) -> str | None:
    """The path of an API route whose path contains `needle` (for routes other engineers
    add later: the UI shows their buttons when they exist)."""
    for route in request.app.routes:
        methods: set[str] = getattr(route, "methods", set())
        if needle in route.path and method in methods and route.path.startswith("/api/"):
            return str(route.path)
    return None


async def asgi_call(
    request: Req,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    credential: Credential | None = None,
    query: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """One in-process request to this app's JSON API, from the same client address, through
    the same middleware (credentials, scopes, rate limits and allow-lists all apply)."""
    headers: dict[str, str] = {"content-type": content_type, "content-length": str(len(body))}
    if credential is not None:
        headers.update(credential.headers())
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        headers["x-forwarded-for"] = forwarded
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        headers["x-request-id"] = str(request_id)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": request.scope.get("scheme", "http"),
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": request.scope.get("client"),
        "server": request.scope.get("server"),
        "state": {},
    }
    sent = False
    finished = asyncio.Event()
    status = 500
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # a streamed answer listens for the client going away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for k, v in message.get("headers", []):
                out_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    await request.app(scope, receive, send)  # type: ignore[arg-type]
    return status, out_headers, b"".join(chunks)


# ---- authentication of a UI request -------------------------------------------------------


def session_credential(request: Req) -> Credential | None:
    raw = request.cookies.get(SESSION_COOKIE, "")
    return decode_credential(raw) if raw else None


async def rate_limit(request: Req, kind: str) -> None:
    rt = runtime(request)
    ip = client_ip(request.scope)
    limit = (
        rt.access.security.rate_limit_login
        if kind == "login"
        else rt.access.security.rate_limit_api
    )
    decision = await rt.limiter.hit(kind, ip, limit)
    if not decision.allowed:
        rt.stats.count("rate_limited", ip)
        raise UiError(
            429,
            "Too many requests",
            f"At most {decision.limit} per minute from one address; try again in "
            f"{max(1, decision.reset_s)} s.",
        )


async def guard(request: Req) -> Response[Any] | None:
    """before_request of every signed-in page: the API's rate limit, then the cookie's
    credential through api.auth.authenticate() (token store, expiry, IP allow-lists)."""
    opt = request.route_handler.opt
    if opt.get("public"):
        return None
    await rate_limit(request, "api")
    cred = session_credential(request)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = "/ui/login?next=" + quote(target, safe="/")
    if cred is None:
        return Redirect(login, status_code=303)
    try:
        principal = authenticate(runtime(request), cred.headers(), client_ip(request.scope))
    except ApiError as exc:
        if exc.status != 401:
            raise UiError(exc.status, exc.error, exc.detail) from None
        response: Response[Any] = Redirect(login, status_code=303)
        response.set_cookie(expired(request, SESSION_COOKIE))
        response.set_cookie(flash_cookie(request, f"Please sign in again: {exc.detail}", "error"))
        return response
    request.scope["user"] = principal
    request.scope.setdefault("state", {})["ui_session"] = request.cookies.get(SESSION_COOKIE, "")
    return None


async def posted(request: Req, controller: type | None = None, name: str = "") -> dict[str, Any]:
    """The form of a POST, after its CSRF token is checked and, when it stands for an API
    route, after api.auth.authorize() allowed that route's method and path (a read token
    gets 403 here, as from the API)."""
    form = await request.form()
    given = form.get("csrf")
    expected = csrf_token(request)
    if not isinstance(given, str) or not expected or not hmac.compare_digest(given, expected):
        raise UiError(
            403,
            "This form has expired",
            "The form's security token does not match your session (CSRF check). Reload the "
            "page and submit it again.",
        )
    if controller is not None:
        method, path = api_route(controller, name)
        authorize(who(request), method, path)
    return dict(form.multi_items())


def text(form: dict[str, Any], name: str, limit: int = 8192) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        return ""
    return value[:limit]


# ---- rendering ---------------------------------------------------------------------------


def human_bytes(n: Any) -> str:
    if n is None or n == "":
        return ""
    value = float(n)
    if value == 0:
        return "0 (unlimited)"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def days_left(at: str | None) -> int | None:
    if not at:
        return None
    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((when - datetime.now(UTC)).total_seconds() // 86400)


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)


env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["bytes"] = human_bytes
env.filters["show"] = _show
env.filters["days_left"] = days_left
env.globals["quote"] = lambda s: quote(str(s), safe="")


def base_context(request: Req) -> dict[str, Any]:
    principal: Principal | None = request.scope.get("user")
    scope = principal.scope if principal else ""
    return {
        "who": principal,
        "can_write": principal is not None and scope in ("write", "admin"),
        "is_admin": principal is not None and scope == "admin" and principal.domains is None,
        "unrestricted": principal is not None and principal.domains is None,
        "csrf_token": csrf_token(request),
        "flash": read_flash(request),
        "path": request.url.path,
        "version": version(),
        "forms": {},
    }


def render(
    request: Req,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **ctx: Any,
) -> Response[str]:
    context = base_context(request)
    context.update(ctx)
    body = env.get_template(template).render(**context)
    response: Response[str] = Response(
        body, status_code=status, media_type=HTML, headers={**SECURITY_HEADERS, **(headers or {})}
    )
    if context["flash"] is not None:
        response.set_cookie(expired(request, FLASH_COOKIE))
    return response


def done(request: Req, to: str, message: str, kind: str = "ok") -> Response[Any]:
    """Post/redirect/get: back to a page, with a one-time message."""
    response: Response[Any] = Redirect(to, status_code=303)
    response.set_cookie(flash_cookie(request, message, kind))
    return response


def new_login_secret() -> str:
    return secrets.token_urlsafe(24)


# ---- form state and paging ---------------------------------------------------------------


def form_state(
    values: dict[str, Any], err: FormError | None = None, fields: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """What a template needs to show a form again: the user's input and the error, next to
    its field when the form has that field, above the form otherwise."""
    errors: dict[str, str] = {}
    general = ""
    if err is not None:
        known = fields if fields is not None else tuple(values)
        if err.field and err.field in known:
            errors[err.field] = err.message
        else:
            general = err.message
    return {
        "values": {k: ("" if v is None else v) for k, v in values.items()},
        "errors": errors,
        "error": general,
    }


def pager(page: int, limit: int, total: int) -> dict[str, int]:
    pages = max(1, -(-total // limit))
    return {"page": page, "pages": pages, "total": total, "limit": limit}
