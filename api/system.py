"""/health, /api/v1/system/about, /auth/login and /auth/verify."""

import asyncio
import logging
import platform
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody

from api.auth import bearer, client_ip, issue_jwt, unauthorized, verify_jwt
from api.common import runtime
from api.schemas import About, Check, Health, LoginIn, Token, Verified, VerifyIn
from commands.passwords import verify_password
from core.settings import Settings
from projections.appliers import rfc3339

log = logging.getLogger("mailpanel.auth")

BUILD = "001"
# A real hash to verify against when the username is wrong, so timing does not tell.
_DUMMY_HASH = (
    "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$EcdPZrMuJ9tTcuiEw0Uc2g"
    "$addWOuXEutMHikR56ukPwzOECm7LlEf2cd9bvG51I6c"
)

Req = Request[Any, Any, Any]


def version() -> str:
    try:
        return metadata.version("mailpanel")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr).strip()


@cache
def mail_versions() -> tuple[str, str]:
    """Postfix and Dovecot versions, or "not installed" when the binary is not on PATH."""
    postfix = "not installed"
    if shutil.which("postconf") or Path("/usr/sbin/postconf").exists():
        postfix = (
            _run([shutil.which("postconf") or "/usr/sbin/postconf", "-d", "-h", "mail_version"])
            or "unknown"
        )
    dovecot = "not installed"
    if shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists():
        dovecot = (
            _run([shutil.which("dovecot") or "/usr/sbin/dovecot", "--version"]) or "unknown"
        ).split()[0]
    return postfix, dovecot


@cache
def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.0f}T"  # pragma: no cover


def _daemon(binary: str, process_names: tuple[str, ...]) -> Check:
    """Whether a mail daemon is installed and running. Until a reconcile agent manages the
    stack on this host these are informational, not critical."""
    if mail_versions()[0 if binary == "postfix" else 1] == "not installed":
        return Check(status="not_installed", message=f"{binary} is not installed on this host")
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in process_names:
            return Check(status="ok")
    return Check(status="stopped", message=f"no {binary} process is running")


def _maildir(settings: Settings) -> Check:
    path = settings.mail_root if settings.mail_root.exists() else settings.data_dir
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return Check(status="error", message=str(exc))
    status = "ok" if free >= 1024**3 else "warn"
    return Check(
        status=status,
        free_space=_human(free),
        message="" if status == "ok" else "less than 1G free",
    )


class SystemController(Controller):
    tags = ["system"]

    @get("/health", summary="Deep health probe (unauthenticated)")
    async def health(self, request: Req) -> Response[Health]:
        rt = runtime(request)
        checks: dict[str, Check] = {}
        try:
            await rt.reader.execute_fetchall("SELECT 1")
            checks["database"] = Check(status="ok")
        except Exception as exc:
            checks["database"] = Check(status="error", message=str(exc))
        if rt.event_log is not None and rt.event_log.connected:
            checks["nats"] = Check(status="ok")
        else:
            checks["nats"] = Check(status="error", message="not connected to NATS")
        if rt.projector.failed is not None:
            checks["projector"] = Check(status="error", message=str(rt.projector.failed))
        else:
            checks["projector"] = Check(status="ok", message=f"applied {rt.projector.applied}")
        critical = ["database", "nats", "projector"]
        stack = rt.agent.stack if rt.agent is not None else None
        if stack is not None:  # this process runs the mail stack: its daemons are critical
            states = await asyncio.to_thread(stack.status)
            for name in ("postfix", "dovecot"):
                running = states[name].running
                checks[name] = Check(
                    status="ok" if running else "error",
                    message="" if running else f"{name} is not running",
                )
                critical.append(name)
        else:
            checks["postfix"], checks["dovecot"] = await asyncio.to_thread(
                lambda: (_daemon("postfix", ("master",)), _daemon("dovecot", ("dovecot",)))
            )
        checks["maildir"] = _maildir(rt.settings)
        ok = all(checks[name].status == "ok" for name in critical)
        body = Health(status="ok" if ok else "error", version=version(), build=BUILD, checks=checks)
        return Response(body, status_code=200 if ok else 503)

    @get("/api/v1/system/about", summary="Build and host software versions")
    async def about(self) -> About:
        postfix, dovecot = await asyncio.to_thread(mail_versions)
        return About(
            app="mailpanel",
            version=version(),
            build=BUILD,
            copyright="© 2026 mailpanel authors",
            website="https://github.com/mailpanel",
            hostname=socket.getfqdn(),
            os=os_name(),
            postfix=postfix,
            dovecot=dovecot,
        )


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/login", summary="Exchange the admin user and password for a 24 h JWT", status_code=200)
    async def login(self, request: Req, data: JSONBody[LoginIn]) -> Token:
        settings = runtime(request).settings
        user_ok = data.username == settings.admin_user
        stored = settings.admin_password_hash if user_ok else _DUMMY_HASH
        valid = await asyncio.to_thread(verify_password, stored, data.password)
        if not (user_ok and valid and settings.admin_password_hash):
            ip = client_ip(request.scope)
            runtime(request).stats.count("failed_logins", ip)
            log.warning("auth: failed login for user %r from %s", data.username[:64], ip)
            raise unauthorized("wrong username or password")
        token, expires = issue_jwt(settings, data.username)
        return Token(token=token, token_type="Bearer", expires_at=rfc3339(expires))

    @get("/verify", summary="Check a JWT sent as Authorization: Bearer")
    async def verify_get(self, request: Req) -> Verified:
        return self._verify(request, bearer(dict(request.headers)))

    @post(
        "/verify", summary='Check a JWT sent as {"token"} or Authorization: Bearer', status_code=200
    )
    async def verify_post(self, request: Req, data: JSONBody[VerifyIn | None] = None) -> Verified:
        token = (data.token if data is not None else None) or bearer(dict(request.headers))
        return self._verify(request, token)

    @staticmethod
    def _verify(request: Req, token: str | None) -> Verified:
        if not token:
            raise unauthorized("no token: send Authorization: Bearer <jwt>")
        claims = verify_jwt(runtime(request).settings, token)
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return Verified(valid=True, username=str(claims["sub"]), expires_at=rfc3339(expires))
