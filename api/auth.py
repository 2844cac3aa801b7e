"""Authentication: the static X-API-Key (wins when both are sent) or an HS256 JWT from
/auth/login. Only /health, /auth/login and /auth/verify (and the docs) are open."""

import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError
from core.settings import Settings

JWT_ALG = "HS256"
JWT_ISSUER = "mailpanel"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the actor recorded in every event they cause."""

    name: str
    id: str
    kind: str  # "api_key" | "jwt"
    scope: str = "admin"


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", "unauthorized", detail)


def issue_jwt(
    settings: Settings, username: str, now: datetime | None = None
) -> tuple[str, datetime]:
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


def verify_jwt(settings: Settings, token: str) -> dict[str, Any]:
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


def authenticate(settings: Settings, headers: dict[str, str]) -> Principal:
    api_key = headers.get("x-api-key")
    if api_key is not None:
        if settings.api_key and hmac.compare_digest(api_key.encode(), settings.api_key.encode()):
            return Principal(name="api-key", id="static", kind="api_key")
        raise unauthorized("X-API-Key is not valid")
    token = bearer(headers)
    if token is None:
        if "authorization" in headers:
            raise unauthorized("Authorization header must be 'Bearer <token>'")
        raise unauthorized("send X-API-Key or Authorization: Bearer <jwt>")
    claims = verify_jwt(settings, token)
    return Principal(name=str(claims["sub"]), id=f"user:{claims['sub']}", kind="jwt")


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class AuthMiddleware(ASGIMiddleware):
    """Sets scope["user"] for /api/ routes and a request id for every route."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["path"].startswith("/api/"):
            settings: Settings = scope["app"].state.settings
            scope["user"] = authenticate(settings, headers)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await next_app(scope, receive, send_with_id)
