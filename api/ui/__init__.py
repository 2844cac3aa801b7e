"""The web UI: server-rendered pages under /ui/ (Jinja2 templates in templates/ui/, a little
CSS and JS of our own in static/ui/), on the same app as the JSON API and running its code.

Sign-in gives the same credential the API takes (the /auth/login JWT, or a managed token) in an
HttpOnly, SameSite=Strict cookie; every request is rate-limited, authenticated and authorized
by api.auth with it, and every form carries a CSRF token tied to that cookie.
"""

import hmac
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from api.auth import authenticate, client_ip
from api.common import runtime
from api.errors import ERROR_TABLE, ApiError
from api.ui.resources import ResourcePages
from api.ui.system import SystemPages
from api.ui.web import (
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    STATIC,
    Credential,
    PathStr,
    QueryStr,
    Req,
    UiError,
    asgi_call,
    cookie,
    encode_credential,
    expired,
    flash_cookie,
    form_state,
    guard,
    login_csrf,
    new_login_secret,
    posted,
    rate_limit,
    render,
    session_credential,
    text,
)
from commands.log import Unavailable
from core.errors import DomainError

log = logging.getLogger("mailpanel.ui")

STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\.(css|js|svg)$")
STATIC_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
TITLES = {
    400: "Bad request",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


def safe_next(raw: str) -> str:
    """Only a page of this UI: never another host (no open redirect)."""
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not raw.startswith("/ui") or raw.startswith("//"):
        return "/ui/"
    if "\\" in raw or any(ord(c) < 32 for c in raw):
        return "/ui/"
    return raw


def login_page(
    request: Req,
    next_: str,
    state: dict[str, Any] | None = None,
    mode: str = "password",
    status: int = 200,
) -> Response[str]:
    pre = request.cookies.get(LOGIN_COOKIE) or new_login_secret()
    response = render(
        request,
        "login.html",
        status=status,
        nav="login",
        next=safe_next(next_),
        login_csrf=login_csrf(request, pre),
        state=state or form_state({"username": "", "password": "", "token": ""}),
        mode=mode,
    )
    response.set_cookie(cookie(request, LOGIN_COOKIE, pre, max_age=3600))
    return response


class SessionPages(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/login", opt={"public": True})
    async def login_form(self, request: Req, next: QueryStr = "/ui/") -> Response[Any]:
        cred = session_credential(request)
        if cred is not None:
            try:
                authenticate(runtime(request), cred.headers(), client_ip(request.scope))
                return Redirect(safe_next(next), status_code=303)
            except ApiError:
                pass
        return login_page(request, next)

    @post("/login", opt={"public": True})
    async def login(self, request: Req) -> Response[Any]:
        form = await request.form()
        next_ = text(dict(form.multi_items()), "next", 2000) or "/ui/"
        mode = "token" if form.get("mode") == "token" else "password"
        username = text(dict(form.multi_items()), "username", 256)
        values = {"username": username, "password": "", "token": ""}
        pre = request.cookies.get(LOGIN_COOKIE, "")
        given = form.get("csrf")
        if (
            not pre
            or not isinstance(given, str)
            or not hmac.compare_digest(given, login_csrf(request, pre))
        ):
            state = form_state(values)
            state["error"] = "The sign-in form expired (or cookies are off). Please try again."
            return login_page(request, next_, state, mode, status=403)
        if mode == "token":
            token = text(dict(form.multi_items()), "token", 1024).strip()
            await rate_limit(request, "login")
            try:
                authenticate(runtime(request), {"x-api-key": token}, client_ip(request.scope))
            except ApiError as exc:
                state = form_state(values)
                if exc.status == 401:
                    state["errors"]["token"] = exc.detail or exc.error
                else:
                    state["error"] = f"{exc.error}: {exc.detail}"
                return login_page(request, next_, state, mode, status=exc.status)
            cred, max_age = Credential(kind="key", secret=token), None
        else:
            password = text(dict(form.multi_items()), "password", 1024)
            body = msgspec.json.encode({"username": username, "password": password})
            status, headers, raw = await asgi_call(request, "POST", "/auth/login", body)
            answer = msgspec.json.decode(raw) if raw.startswith(b"{") else {}
            if status != 200:
                state = form_state(values)
                if status == 401:
                    state["errors"]["password"] = "Wrong user name or password."
                else:
                    state["error"] = f"{answer.get('error', 'refused')}: {answer.get('detail', '')}"
                extra = {"Retry-After": headers["retry-after"]} if "retry-after" in headers else {}
                response = login_page(request, next_, state, mode, status=status)
                response.headers.update(extra)
                return response
            cred = Credential(kind="jwt", secret=str(answer["token"]))
            max_age = runtime(request).settings.jwt_ttl_s
        response = Redirect(safe_next(next_), status_code=303)
        response.set_cookie(cookie(request, SESSION_COOKIE, encode_credential(cred), max_age))
        response.set_cookie(expired(request, LOGIN_COOKIE))
        return response

    @post("/logout")
    async def logout(self, request: Req) -> Response[Any]:
        await posted(request)
        response: Response[Any] = Redirect("/ui/login", status_code=303)
        response.set_cookie(expired(request, SESSION_COOKIE))
        response.set_cookie(flash_cookie(request, "Signed out."))
        return response

    @get("/static/{name:str}", opt={"public": True})
    async def static(self, name: PathStr) -> Response[bytes]:
        path = STATIC / name
        if not STATIC_NAME.match(name) or not path.is_file():
            raise UiError(404, "Not found", name)
        return Response(
            path.read_bytes(),
            media_type=STATIC_TYPES[name.rsplit(".", 1)[1]],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    @get("/{rest:path}")
    async def not_found(self, rest: PathStr) -> Response[str]:
        raise UiError(404, "Not found", f"There is no page at /ui{rest}.")


@get("/", include_in_schema=False, opt={"public": True})
async def root() -> Redirect:
    return Redirect("/ui/", status_code=302)


def ui_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors as pages (the JSON API keeps its flat JSON errors)."""
    headers: dict[str, str] = {}
    if isinstance(exc, UiError):
        status, title, detail = exc.status, exc.title, exc.detail
    elif isinstance(exc, ApiError):
        status, title, detail = exc.status, exc.error, exc.detail
    elif isinstance(exc, DomainError):
        status = next((s for cls, s, _c in ERROR_TABLE if isinstance(exc, cls)), 500)
        title, detail = exc.error, exc.detail
    elif isinstance(exc, Unavailable):
        status, title, detail = 503, "The event log is not reachable", str(exc)
    elif isinstance(exc, HTTPException):
        status, title, detail = exc.status_code, TITLES.get(exc.status_code, "Error"), exc.detail
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, title = 500, TITLES[500]
        detail = "The server failed to handle the request; see its log."
    if status == 401:
        return Redirect("/ui/login", status_code=303)
    if status == 429:
        headers["Retry-After"] = "60"
    try:
        return render(
            request,
            "error.html",
            status=status,
            headers=headers,
            title=title,
            detail=detail,
            code=status,
        )
    except Exception:  # the error page itself failed: plain text, never a trace
        log.exception("error page failed")
        return Response(
            f"{status} {title}",
            status_code=status,
            media_type="text/plain",
            headers=SECURITY_HEADERS,
        )


ui_router = Router(
    path="/",
    route_handlers=[SessionPages, ResourcePages, SystemPages, root],
    before_request=guard,
    exception_handlers={Exception: ui_exception},
    include_in_schema=False,
)

__all__ = ["ui_router"]
