"""Authentication and access control, applied before any handler runs.

Order per request: per-IP rate limit (so failed attempts count too), IP allow-list, then the
credentials: a managed token (by SHA-256 of its secret), the static API_KEY as the fallback,
or an HS256 JWT from /auth/login. X-API-Key wins when both are sent. Then the token's scope.
Only /health, /auth/login and /auth/verify (and the OpenAPI docs) need no credentials.
"""

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import jwt
import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.access import ip_in
from api.errors import ApiError, ErrorBody
from core.ids import sequence

log = logging.getLogger("mailpanel.auth")

_next_request_id = sequence(secrets.token_hex(8) + "-")

JWT_ALG = "HS256"
JWT_ISSUER = "mailpanel"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ADMIN_PATHS = ("/api/v1/admin/", "/api/v1/security/")
READ_METHODS = ("GET", "HEAD")
_encode = msgspec.json.Encoder().encode


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: recorded as the actor of every event they cause.

    domains None: every domain; otherwise only these domain names are visible."""

    name: str
    id: str
    kind: str  # "api_key" | "token" | "jwt"
    scope: str = "admin"
    domains: tuple[str, ...] | None = None

    def sees(self, domain_name: str) -> bool:
        return self.domains is None or domain_name in self.domains


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", "unauthorized", detail)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", "forbidden", detail)


def issue_jwt(settings: Any, username: str, now: datetime | None = None) -> tuple[str, datetime]:
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=settings.jwt_ttl_s)
    claims = {
        "sub": username,
        "iss": JWT_ISSUER,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=JWT_ALG), expires


def verify_jwt(settings: Any, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[JWT_ALG],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token has expired") from None
    except jwt.PyJWTError:
        raise unauthorized("token is not valid") from None
    if claims.get("sub") != settings.admin_user:
        raise unauthorized("token subject is not a known user")
    return claims


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def peer_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def client_ip(scope: Scope) -> str:
    """The caller's address as decided by the middleware (trusted proxies honoured)."""
    return str(scope.get("state", {}).get("client_ip") or peer_ip(scope))


class AuthMiddleware(ASGIMiddleware):
    """Rate limits, allow-lists, credentials and scopes; adds X-RateLimit-* and X-Request-ID
    to every answer, refusals included."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else _next_request_id()
        rt = scope["app"].state.runtime
        access = rt.access
        ip = access.client_ip(peer_ip(scope), headers.get("x-forwarded-for"))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = ip
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id.encode())]

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        path: str = scope["path"]
        try:
            if path == "/auth/login":
                if access.login_nets and not ip_in(ip, access.login_nets):
                    rt.stats.count("ip_restricted", ip)
                    raise ApiError(
                        403,
                        "IP_RESTRICTED",
                        "IP restricted",
                        f"{ip} is not in the admin-login allow-list",
                    )
                decision = await rt.limiter.hit("login", ip, access.security.rate_limit_login)
                extra.extend(decision.headers())
                if not decision.allowed:
                    rt.stats.count("rate_limited", ip)
                    raise ApiError(
                        429,
                        "RATE_LIMITED",
                        "too many login attempts",
                        f"at most {decision.limit} per minute from one address",
                    )
            elif path.startswith("/api/") or path == "/auth/verify":
                decision = await rt.limiter.hit("api", ip, access.security.rate_limit_api)
                extra.extend(decision.headers())
                if not decision.allowed:
                    rt.stats.count("rate_limited", ip)
                    raise ApiError(
                        429,
                        "RATE_LIMITED",
                        "rate limit exceeded",
                        f"at most {decision.limit} API calls per minute from one address",
                    )
                if path.startswith("/api/"):
                    principal = authenticate(rt, headers, ip)
                    authorize(principal, cast(Any, scope)["method"], path)
                    scope["user"] = principal
        except ApiError as exc:
            await _send_error(send_with_headers, exc)
            return
        await next_app(scope, receive, send_with_headers)


def authenticate(rt: Any, headers: dict[str, str], ip: str) -> Principal:
    access, settings = rt.access, rt.settings
    api_key = headers.get("x-api-key")
    if api_key is not None:
        if access.api_key_nets and not ip_in(ip, access.api_key_nets):
            rt.stats.count("ip_restricted", ip)
            raise ApiError(
                403, "IP_RESTRICTED", "IP restricted", f"{ip} is not in the API-key allow-list"
            )
        token = access.tokens.get(hashlib.sha256(api_key.encode()).hexdigest())
        if token is not None:
            if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
                rt.stats.count("refused_tokens", ip)
                log.warning("auth: expired token %r (id %d) from %s", token.name, token.id, ip)
                raise unauthorized("token has expired")
            rt.usage.touch(token.id)
            return Principal(
                name=token.name,
                id=f"token:{token.id}",
                kind="token",
                scope=token.scope,
                domains=token.domains or None,
            )
        if settings.api_key and hmac.compare_digest(api_key.encode(), settings.api_key.encode()):
            return Principal(name="api-key", id="static", kind="api_key")
        rt.stats.count("refused_keys", ip)
        log.warning("auth: refused X-API-Key from %s", ip)
        raise unauthorized("X-API-Key is not valid (revoked, rotated or unknown)")
    token_str = bearer(headers)
    if token_str is None:
        if "authorization" in headers:
            raise unauthorized("Authorization header must be 'Bearer <token>'")
        raise unauthorized("send X-API-Key or Authorization: Bearer <jwt>")
    try:
        claims = verify_jwt(settings, token_str)
    except ApiError:
        rt.stats.count("refused_tokens", ip)
        log.warning("auth: refused bearer token from %s", ip)
        raise
    return Principal(name=str(claims["sub"]), id=f"user:{claims['sub']}", kind="jwt")


def authorize(principal: Principal, method: str, path: str) -> None:
    """read: GET only; write: all but token and security administration; admin: all.
    Administration also needs a token that is not limited to some domains."""
    if principal.scope == "read" and method not in READ_METHODS:
        raise forbidden("this token has the read scope: GET only")
    if path.startswith(ADMIN_PATHS) and (principal.scope != "admin" or principal.domains):
        raise forbidden("token and security administration needs an unrestricted admin token")


async def _send_error(send: Any, exc: ApiError) -> None:
    body = _encode(ErrorBody(error=exc.error, detail=exc.detail, code=exc.code))
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
