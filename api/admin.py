"""Token and security administration (unrestricted admin scope only; see api/auth.py)."""

import json
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, delete, get, post, put
from litestar.params import JSONBody

from api.common import LimitParam, PageParam, PathId, context, parse_id, runtime
from api.errors import ERROR_SPECS, ApiError
from api.schemas import (
    AuthCounts,
    ManagedToken,
    ManagedTokenList,
    Message,
    PageMeta,
    SecurityIn,
    SecurityOut,
    SecurityStats,
    TokenIn,
    TokenSecret,
)
from core.security import SecuritySettings
from projections import queries
from projections.appliers import rfc3339

Req = Request[Any, Any, Any]


async def _token(request: Req, row: tuple[Any, ...]) -> ManagedToken:
    used = await runtime(request).usage.last_used(int(row[0]))
    return ManagedToken(
        id=row[0],
        name=row[1],
        scope=row[2],
        domains=json.loads(row[3]),
        hint=row[4],
        created_at=row[5],
        expires_at=row[6],
        last_used_at=None if used is None else rfc3339(datetime.fromtimestamp(used, UTC)),
    )


def _with_secret(t: ManagedToken, secret: str) -> TokenSecret:
    return TokenSecret(
        id=t.id,
        name=t.name,
        scope=t.scope,
        domains=t.domains,
        hint=t.hint,
        created_at=t.created_at,
        expires_at=t.expires_at,
        last_used_at=t.last_used_at,
        token=secret,
    )


async def _fetch(request: Req, token_id: int) -> tuple[Any, ...]:
    row = await queries.one(runtime(request).reader, "tokens", token_id)
    if row is None:
        raise ApiError(404, "NOT_FOUND", "token not found", f"no live token with id {token_id}")
    return row


class TokenController(Controller):
    path = "/api/v1/admin/tokens"
    tags = ["tokens"]

    @get("/", summary="List live managed tokens (never their secrets)", responses=ERROR_SPECS)
    async def list_tokens(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50
    ) -> ManagedTokenList:
        rows, total = await queries.page(
            runtime(request).reader, "tokens", limit, (page - 1) * limit
        )
        data = [await _token(request, r) for r in rows]
        return ManagedTokenList(data=data, meta=PageMeta(page=page, limit=limit, total=total))

    @get("/{token_id:str}", summary="Get a managed token", responses=ERROR_SPECS)
    async def get_token(self, request: Req, token_id: PathId) -> ManagedToken:
        return await _token(request, await _fetch(request, parse_id(token_id, "token")))

    @post(
        "/",
        summary="Create a token; the secret is in this answer only",
        status_code=201,
        responses=ERROR_SPECS,
    )
    async def create_token(self, request: Req, data: JSONBody[TokenIn]) -> TokenSecret:
        if data.domains is not None and not data.domains:
            raise ApiError(
                400,
                "VALIDATION_FAILED",
                "domains must not be empty",
                "omit domains for a token that reaches every domain",
            )
        result, secret = await runtime(request).commands.create_token(
            await context(request),
            data.name,
            data.scope,
            tuple(data.domains or ()),
            data.expires_at,
        )
        _once(result.replayed)
        row = await _fetch(request, result.seq)
        return _with_secret(await _token(request, row), secret)

    @post(
        "/{token_id:str}/rotate",
        summary="New secret; the old one stops working at once",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def rotate_token(self, request: Req, token_id: PathId) -> TokenSecret:
        row_id = parse_id(token_id, "token")
        result, secret = await runtime(request).commands.rotate_token(
            await context(request), row_id
        )
        _once(result.replayed)
        return _with_secret(await _token(request, await _fetch(request, row_id)), secret)

    @delete("/{token_id:str}", summary="Revoke a token", status_code=200, responses=ERROR_SPECS)
    async def revoke_token(self, request: Req, token_id: PathId) -> Message:
        await runtime(request).commands.revoke_token(
            await context(request), parse_id(token_id, "token")
        )
        return Message("token revoked")


def _once(replayed: bool) -> None:
    """A secret is shown once: a retried create or rotate cannot show it again."""
    if replayed:
        raise ApiError(
            409,
            "CONFLICT",
            "the secret was already shown",
            "a token's secret is shown only once; rotate the token for a new one",
        )


def _security_out(s: SecuritySettings) -> SecurityOut:
    return SecurityOut(
        rate_limit_login=s.rate_limit_login,
        rate_limit_api=s.rate_limit_api,
        login_allowlist=list(s.login_allowlist),
        api_key_allowlist=list(s.api_key_allowlist),
        trusted_proxies=list(s.trusted_proxies),
    )


def _counts(c: Any) -> AuthCounts:
    return AuthCounts(**{k: int(c.get(k, 0)) for k in AuthCounts.__struct_fields__})


class SecurityController(Controller):
    path = "/api/v1/security"
    tags = ["security"]

    @get(
        "/settings",
        summary="Rate limits, allow-lists and trusted proxies in force",
        responses=ERROR_SPECS,
    )
    async def get_settings(self, request: Req) -> SecurityOut:
        return _security_out(runtime(request).access.security)

    @put("/settings", summary="Replace the security settings", responses=ERROR_SPECS)
    async def put_settings(self, request: Req, data: JSONBody[SecurityIn]) -> SecurityOut:
        rt = runtime(request)
        wanted = SecuritySettings(
            rate_limit_login=data.rate_limit_login,
            rate_limit_api=data.rate_limit_api,
            login_allowlist=tuple(data.login_allowlist),
            api_key_allowlist=tuple(data.api_key_allowlist),
            trusted_proxies=tuple(data.trusted_proxies),
        )
        await rt.commands.set_security(await context(request), wanted, rt.access.defaults)
        return _security_out(rt.access.security)

    @get(
        "/stats",
        summary="Refused calls since this process started (per IP too)",
        responses=ERROR_SPECS,
    )
    async def stats(self, request: Req) -> SecurityStats:
        stats = runtime(request).stats
        return SecurityStats(
            since=rfc3339(stats.since),
            totals=_counts(stats.totals),
            by_ip={ip: _counts(c) for ip, c in stats.by_ip.items()},
        )
