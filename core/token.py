"""Managed API tokens: named, scoped, optionally limited to domains, rotatable, revocable."""

import re
from datetime import datetime

import msgspec

from core.errors import Conflict, NotFound, ValidationFailed
from core.events import Event, TokenCreated, TokenRevoked, TokenRotated

SCOPES = ("read", "write", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TokenState(msgspec.Struct, frozen=True, kw_only=True):
    """id None: no live token has this name."""

    id: int | None = None
    name: str = ""


class CreateToken(msgspec.Struct, frozen=True, kw_only=True):
    """domains are existing domain names (checked by the command layer); `now` is the
    command's clock, so the decider stays pure."""

    name: str
    scope: str
    domains: tuple[str, ...] = ()
    expires_at: datetime | None = None
    secret_sha256: str
    hint: str = ""
    now: datetime


class RotateToken(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    secret_sha256: str
    hint: str = ""


class RevokeToken(msgspec.Struct, frozen=True, kw_only=True):
    id: int


Command = CreateToken | RotateToken | RevokeToken


def decide(cmd: Command, state: TokenState) -> list[Event]:
    match cmd:
        case CreateToken():
            if not _NAME.match(cmd.name):
                raise ValidationFailed(
                    "name", "name must be 1-64 letters, digits, spaces, '.', '_' or '-'"
                )
            if cmd.scope not in SCOPES:
                raise ValidationFailed("scope", "scope must be one of read, write, admin")
            if cmd.expires_at is not None and cmd.expires_at <= cmd.now:
                raise ValidationFailed("expires_at", "expires_at must be in the future")
            _check_hash(cmd.secret_sha256)
            if state.id is not None:
                raise Conflict("token already exists", f"a token named {cmd.name!r} exists")
            return [
                TokenCreated(
                    name=cmd.name,
                    scope=cmd.scope,
                    domains=tuple(sorted(set(cmd.domains))),
                    expires_at=cmd.expires_at,
                    secret_sha256=cmd.secret_sha256,
                    hint=cmd.hint,
                )
            ]
        case RotateToken(id=token_id):
            current = _existing(state, token_id)
            _check_hash(cmd.secret_sha256)
            return [
                TokenRotated(
                    id=token_id, name=current.name, secret_sha256=cmd.secret_sha256, hint=cmd.hint
                )
            ]
        case RevokeToken(id=token_id):
            current = _existing(state, token_id)
            return [TokenRevoked(id=token_id, name=current.name)]
    raise AssertionError(cmd)


def evolve(state: TokenState, event: Event, seq: int) -> TokenState:
    match event:
        case TokenCreated():
            return TokenState(id=seq, name=event.name)
        case TokenRevoked():
            return TokenState()
    return state


def _check_hash(value: str) -> None:
    if not _SHA256.match(value):
        raise ValidationFailed("secret", "a token secret is stored only as its SHA-256 (hex)")


def _existing(state: TokenState, token_id: int) -> TokenState:
    if state.id is None or state.id != token_id:
        raise NotFound("token not found", f"no live token with id {token_id}")
    return state
