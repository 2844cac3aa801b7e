"""Pages for the dashboard, configuration tiers and anti-spam, DKIM, TLS, the mail queue,
tokens, security settings, backup and the audit log. Each runs the JSON API's handlers."""

import asyncio
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import UploadFile

from api.admin import SecurityController, TokenController
from api.audit import AuditController
from api.auth import authorize
from api.common import runtime
from api.config import ConfigController, WhitelistController
from api.events import EventsController
from api.keys import (
    DkimController,
    DkimGenerateIn,
    DkimRotateIn,
    DkimSelectorIn,
    IssueIn,
    TlsController,
)
from api.reconcile import DeleteIn, QueueController, ReconcileController
from api.resources import AliasController, DomainController, MailboxController
from api.schemas import (
    AntispamIn,
    DomainDefaultsIn,
    GlobalConfigIn,
    MailboxDefaultsIn,
    SecurityIn,
    TokenIn,
    WhitelistIn,
)
from api.ui import forms
from api.ui.resources import _errors, domain_choices, newest_first
from api.ui.web import (
    FormError,
    PageQ,
    PathSeq,
    PathStr,
    QueryStr,
    Req,
    UiError,
    asgi_call,
    attempt,
    call,
    days_left,
    done,
    form_error,
    form_state,
    posted,
    render,
    route_exists,
    session_credential,
    text,
    who,
)

AUDIT_LIMIT = 30
EXPIRY_WARNING_DAYS = 30
TIERS: dict[str, tuple[str, str, type[Any], str]] = {
    # name: (GET handler, PUT handler, input struct, title)
    "global": ("get_global", "put_global", GlobalConfigIn, "Global"),
    "domain_defaults": (
        "get_domain_defaults",
        "put_domain_defaults",
        DomainDefaultsIn,
        "Domain defaults",
    ),
    "mailbox_defaults": (
        "get_mailbox_defaults",
        "put_mailbox_defaults",
        MailboxDefaultsIn,
        "Mailbox defaults",
    ),
}
TIER_FIELDS = {
    name: forms.fields_of(kind, textareas=("vacation_message",))
    for name, (_g, _p, kind, _t) in TIERS.items()
}
ANTISPAM_FIELDS = forms.fields_of(AntispamIn)
WHITELIST_TYPES = ("ip", "cidr", "domain", "email")


def _lines(raw: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", raw) if v]


# ---- dashboard ---------------------------------------------------------------------------


async def live_status(request: Req) -> dict[str, Any]:
    postfix, _ = await attempt(ReconcileController, "postfix_status", request)
    dovecot, _ = await attempt(ReconcileController, "dovecot_status", request)
    agents, agents_error = await attempt(ReconcileController, "status", request)
    queue, queue_error = await attempt(QueueController, "list_queue", request, page=1, limit=1)
    stats, _ = await attempt(QueueController, "stats", request)
    return {
        "services": [s for s in (postfix, dovecot) if s is not None],
        "agents": agents,
        "agents_error": agents_error,
        "queue_size": None if queue is None else queue.meta.total,
        "queue_error": queue_error,
        "stats": stats,
        "checked_at": datetime.now(UTC).strftime("%H:%M:%S UTC"),
    }


async def dashboard_page(
    request: Req, forms_: dict[str, Any] | None = None, result: Any = None, status: int = 200
) -> Response[str]:
    certs, certs_error = await attempt(TlsController, "list_certs", request, page=1, limit=500)
    expiring = []
    for cert in certs.data if certs else []:
        left = days_left(cert.expires_at)
        if left is not None and left <= EXPIRY_WARNING_DAYS:
            expiring.append({"cert": cert, "days": left})
    totals = {}
    for label, controller, handler in (
        ("domains", DomainController, "list_domains"),
        ("mailboxes", MailboxController, "list_mailboxes"),
        ("aliases", AliasController, "list_aliases"),
    ):
        listed = await call(controller, handler, request, page=1, limit=1)
        totals[label] = listed.meta.total

    async def fetch(n: int, size: int) -> Any:
        return await call(AuditController, "list_events", request, page=n, limit=size)

    recent, _paging = await newest_first(fetch, 1, 8)
    return render(
        request,
        "dashboard.html",
        status=status,
        nav="dashboard",
        live=await live_status(request),
        expiring=expiring,
        certs_error=certs_error,
        totals=totals,
        recent=recent,
        result=result,
        forms=forms_ or {},
    )


# ---- configuration -----------------------------------------------------------------------


async def config_page(
    request: Req, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    given = forms_ or {}
    tiers = []
    for name, (getter, _putter, _kind, title) in TIERS.items():
        current = await call(ConfigController, getter, request)
        state = given.get(name) or form_state(forms.values_of(current))
        tiers.append(
            {
                "name": name,
                "title": title,
                "fields": TIER_FIELDS[name],
                "state": state,
                "updated_at": current.updated_at,
            }
        )
    antispam = await call(ConfigController, "get_antispam", request)
    whitelist, whitelist_error = await attempt(
        WhitelistController, "list_entries", request, page=1, limit=500
    )
    return render(
        request,
        "config.html",
        status=status,
        nav="config",
        tiers=tiers,
        antispam_fields=ANTISPAM_FIELDS,
        antispam=given.get("antispam") or form_state(forms.values_of(antispam)),
        whitelist=whitelist,
        whitelist_error=whitelist_error,
        whitelist_types=WHITELIST_TYPES,
        forms=given,
    )


# ---- DKIM, TLS, queue --------------------------------------------------------------------


async def dkim_page(
    request: Req, domain: str = "", forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    keys = await call(
        DkimController, "list_keys", request, page=1, limit=500, domain=domain or None
    )
    return render(
        request,
        "dkim.html",
        status=status,
        nav="dkim",
        keys=keys.data,
        domain=domain,
        choices=await domain_choices(request),
        forms=forms_ or {},
    )


async def tls_page(
    request: Req, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    certs = await call(TlsController, "list_certs", request, page=1, limit=500)
    rows = [{"cert": c, "days": days_left(c.expires_at)} for c in certs.data]
    return render(
        request,
        "tls.html",
        status=status,
        nav="tls",
        certs=rows,
        warning_days=EXPIRY_WARNING_DAYS,
        forms=forms_ or {},
    )


async def queue_page(
    request: Req, page: int = 1, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    queue, queue_error = await attempt(QueueController, "list_queue", request, page=page, limit=100)
    return render(
        request,
        "queue.html",
        status=status,
        nav="queue",
        queue=queue,
        queue_error=queue_error,
        forms=forms_ or {},
    )


# ---- tokens, security --------------------------------------------------------------------


async def tokens_page(
    request: Req, forms_: dict[str, Any] | None = None, secret: Any = None, status: int = 200
) -> Response[str]:
    tokens = await call(TokenController, "list_tokens", request, page=1, limit=500)
    return render(
        request,
        "tokens.html",
        status=status,
        nav="tokens",
        tokens=tokens.data,
        secret=secret,
        forms=forms_ or {},
    )


async def security_page(
    request: Req, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    current = await call(SecurityController, "get_settings", request)
    stats = await call(SecurityController, "stats", request)
    values = {
        "rate_limit_login": str(current.rate_limit_login),
        "rate_limit_api": str(current.rate_limit_api),
        "login_allowlist": "\n".join(current.login_allowlist),
        "api_key_allowlist": "\n".join(current.api_key_allowlist),
        "trusted_proxies": "\n".join(current.trusted_proxies),
    }
    return render(
        request,
        "security.html",
        status=status,
        nav="security",
        state=(forms_ or {}).get("security") or form_state(values),
        stats=stats,
    )


# ---- audit -------------------------------------------------------------------------------

AUDIT_FILTERS = ("resource", "actor", "type", "since", "until")


def _utc(raw: str) -> str | None:
    """A datetime-local input (no zone) is UTC; an RFC 3339 time passes as it is."""
    raw = raw.strip()
    if not raw:
        return None
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?", raw):
        return raw + ("Z" if raw.count(":") == 2 else ":00Z")
    return raw


def revert_path(request: Req) -> str | None:
    """The revert route, when the API has one (another engineer's work)."""
    return route_exists(request, "POST", "revert")


async def audit_page(
    request: Req,
    filters: dict[str, str],
    page: int,
    forms_: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    error = ""
    items: list[Any] = []
    paging = {"page": 1, "pages": 1, "total": 0, "limit": AUDIT_LIMIT}
    args = {
        "resource": filters.get("resource") or None,
        "actor": filters.get("actor") or None,
        "type": filters.get("type") or None,
        "since": _utc(filters.get("since", "")),
        "until": _utc(filters.get("until", "")),
    }

    async def fetch(n: int, size: int) -> Any:
        return await call(AuditController, "list_events", request, page=n, limit=size, **args)

    try:
        items, paging = await newest_first(fetch, page, AUDIT_LIMIT)
    except _errors() as exc:
        err = form_error(exc, AUDIT_FILTERS)
        forms_ = {**(forms_ or {}), "filters": form_state(filters, err)}
        status = err.status
        error = err.message
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(
        request,
        "audit.html",
        status=status,
        nav="audit",
        events=items,
        paging=paging,
        filters=filters,
        query=query,
        error=error,
        revert=revert_path(request) is not None,
        forms=forms_ or {"filters": form_state(filters)},
    )


# ---- backup ------------------------------------------------------------------------------

MAX_RESTORE_BYTES = 64 * 1024 * 1024
STASH_TTL_S = 3600


def backup_routes(request: Req) -> tuple[str | None, str | None]:
    """The API's backup download and restore routes, when this server has them."""
    download = restore = None
    for route in request.app.routes:
        methods: set[str] = getattr(route, "methods", set())
        if route.path == "/api/v1/backup" and "GET" in methods:
            download = route.path
        if route.path == "/api/v1/backup/restore" and "POST" in methods:
            restore = route.path
    return download, restore


def _need_admin(request: Req) -> None:
    principal = who(request)
    if principal.scope != "admin" or principal.domains is not None:
        raise UiError(403, "Not allowed", "backup and restore need an unrestricted admin")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def preview_counts(raw: bytes) -> dict[str, int]:
    """What the document holds, read by the API's own backup parser (which checks it in
    full, as the restore will)."""
    from core import backup as backup_doc

    parsed = backup_doc.parse(raw)
    counts: dict[str, int] = backup_doc.counts(backup_doc.snapshot_of(parsed))
    return counts


async def current_counts(request: Req) -> dict[str, int]:
    from core import backup as backup_doc
    from projections.queries import read_snapshot_at

    snapshot, _seq = await asyncio.to_thread(read_snapshot_at, runtime(request).settings.read_db)
    counts: dict[str, int] = backup_doc.counts(snapshot)
    return counts


def _stash_dir(request: Req) -> Path:
    path = runtime(request).settings.data_dir / "ui-restore"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def stash(request: Req, raw: bytes) -> str:
    """Keep an uploaded document between preview and restore (owner-only, an hour)."""
    folder = _stash_dir(request)
    now = time.time()
    for old in folder.glob("*.json"):
        if now - old.stat().st_mtime > STASH_TTL_S:
            old.unlink(missing_ok=True)
    upload_id = secrets.token_hex(16)
    target = folder / f"{upload_id}.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    return upload_id


def unstash(request: Req, upload_id: str) -> bytes | None:
    if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
        return None
    target = _stash_dir(request) / f"{upload_id}.json"
    try:
        if time.time() - target.stat().st_mtime > STASH_TTL_S:
            return None
        raw = target.read_bytes()
    except OSError:
        return None
    target.unlink(missing_ok=True)
    return raw


async def backup_page(
    request: Req,
    forms_: dict[str, Any] | None = None,
    preview: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    download, restore = backup_routes(request)
    principal = who(request)
    return render(
        request,
        "backup.html",
        status=status,
        nav="backup",
        download=download,
        restore=restore,
        preview=preview,
        allowed=principal.scope == "admin" and principal.domains is None,
        forms=forms_ or {},
    )


# ---- the controller ------------------------------------------------------------------------


class SystemPages(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/")
    async def dashboard(self, request: Req) -> Response[str]:
        return await dashboard_page(request)

    @get("/live")
    async def live(self, request: Req) -> Response[str]:
        """The live part of the dashboard, for its small script to poll (no JS: reload)."""
        return render(request, "_live.html", live=await live_status(request))

    @post("/reconcile")
    async def reconcile(self, request: Req) -> Response[Any]:
        form = await posted(request, ReconcileController, "reconcile")
        dry_run = text(form, "dry_run") == "true"
        try:
            result = await call(ReconcileController, "reconcile", request, dry_run=dry_run)
        except _errors() as exc:
            err = form_error(exc, ())
            return await dashboard_page(
                request, {"reconcile": form_state({}, err)}, status=err.status
            )
        if isinstance(result, dict):  # the agent's failure: step, error and log
            return await dashboard_page(request, result=result, status=500)
        if dry_run:
            return await dashboard_page(request, result=msgspec.structs.asdict(result))
        return done(request, "/ui/", result.message)

    # configuration tiers, anti-spam, whitelist
    @get("/config")
    async def config(self, request: Req) -> Response[str]:
        return await config_page(request)

    @post("/config/antispam")
    async def save_antispam(self, request: Req) -> Response[Any]:
        form = await posted(request, ConfigController, "put_antispam")
        try:
            data = forms.build(AntispamIn, form, ANTISPAM_FIELDS)
            await call(ConfigController, "put_antispam", request, data=data)
        except _errors() as exc:
            err = form_error(exc, tuple(f.name for f in ANTISPAM_FIELDS))
            state = form_state(forms.raw_values(form, ANTISPAM_FIELDS), err)
            return await config_page(request, {"antispam": state}, status=err.status)
        return done(request, "/ui/config#antispam", "Anti-spam settings saved.")

    @post("/config/{tier:str}")
    async def save_tier(self, request: Req, tier: PathStr) -> Response[Any]:
        if tier not in TIERS:
            raise UiError(404, "No such configuration tier", tier)
        _getter, putter, kind, title = TIERS[tier]
        form = await posted(request, ConfigController, putter)
        fields = TIER_FIELDS[tier]
        try:
            data = forms.build(kind, form, fields)
            await call(ConfigController, putter, request, data=data)
        except _errors() as exc:
            err = form_error(exc, tuple(f.name for f in fields))
            state = form_state(forms.raw_values(form, fields), err)
            return await config_page(request, {tier: state}, status=err.status)
        return done(request, f"/ui/config#{tier}", f"{title} saved; the mail hosts apply it.")

    @post("/whitelist")
    async def whitelist_add(self, request: Req) -> Response[Any]:
        form = await posted(request, WhitelistController, "add_entry")
        values = {k: text(form, k, 600) for k in ("entry_type", "value", "note")}
        try:
            data = forms.convert(WhitelistIn, values)
            await call(WhitelistController, "add_entry", request, data=data)
        except _errors() as exc:
            err = form_error(exc, tuple(values))
            return await config_page(
                request, {"whitelist": form_state(values, err)}, status=err.status
            )
        return done(request, "/ui/config#whitelist", f"{values['value']} whitelisted.")

    @post("/whitelist/{entry_id:str}/delete")
    async def whitelist_delete(self, request: Req, entry_id: PathStr) -> Response[Any]:
        await posted(request, WhitelistController, "remove_entry")
        try:
            await call(WhitelistController, "remove_entry", request, entry_id=entry_id)
        except _errors() as exc:
            err = form_error(exc, ())
            return await config_page(request, {"whitelist": form_state({}, err)}, status=err.status)
        return done(request, "/ui/config#whitelist", "Whitelist entry removed.")

    # DKIM
    @get("/dkim")
    async def dkim(self, request: Req, domain: QueryStr = "") -> Response[str]:
        return await dkim_page(request, domain[:255])

    @post("/dkim/{step:str}")
    async def dkim_step(self, request: Req, step: PathStr) -> Response[Any]:
        handlers = {
            "generate": ("generate", DkimGenerateIn),
            "rotate": ("rotate", DkimRotateIn),
            "activate": ("activate", DkimSelectorIn),
            "retire": ("retire", DkimSelectorIn),
            "delete": ("delete_key", None),
        }
        if step not in handlers:
            raise UiError(404, "No such DKIM action", step)
        name, kind = handlers[step]
        form = await posted(request, DkimController, name)
        values = {k: text(form, k, 255) for k in ("domain", "selector", "algorithm")}
        try:
            if kind is None:
                await call(
                    DkimController,
                    name,
                    request,
                    domain=values["domain"],
                    selector=values["selector"] or "default",
                )
            else:
                data = {k: v for k, v in values.items() if v and k in kind.__struct_fields__}
                key = await call(DkimController, name, request, data=forms.convert(kind, data))
                values["selector"] = key.selector
        except _errors() as exc:
            err = form_error(exc, ("domain", "selector", "algorithm"))
            return await dkim_page(
                request, forms_={step: form_state(values, err)}, status=err.status
            )
        words = {
            "generate": "generated",
            "rotate": "created (pending)",
            "activate": "activated",
            "retire": "retired",
            "delete": "deleted",
        }[step]
        return done(
            request, "/ui/dkim", f"DKIM key {values['selector']} of {values['domain']} {words}."
        )

    # TLS
    @get("/tls")
    async def tls(self, request: Req) -> Response[str]:
        return await tls_page(request)

    @post("/tls/upload")
    async def tls_upload(self, request: Req) -> Response[Any]:
        form = await posted(request, TlsController, "upload")
        values = {"hostname": text(form, "hostname", 255)}
        try:
            result = await call(TlsController, "upload", request)
        except _errors() as exc:
            err = form_error(exc, ("hostname", "cert_pem", "key_pem"))
            return await tls_page(
                request,
                {"upload": form_state(values, err, ("hostname", "cert_pem", "key_pem"))},
                status=err.status,
            )
        return done(request, "/ui/tls", f"{result.message}; expires {result.expires_at}.")

    @post("/tls/issue")
    async def tls_issue(self, request: Req) -> Response[Any]:
        form = await posted(request, TlsController, "issue")
        values = {"domain": text(form, "domain", 255), "email": text(form, "email", 320)}
        try:
            result = await call(
                TlsController, "issue", request, data=forms.convert(IssueIn, values)
            )
        except _errors() as exc:
            err = form_error(exc, ("domain", "email"))
            return await tls_page(request, {"issue": form_state(values, err)}, status=err.status)
        return done(request, "/ui/tls", result.message)

    @post("/tls/renew")
    async def tls_renew(self, request: Req) -> Response[Any]:
        await posted(request, TlsController, "renew")
        try:
            result = await call(TlsController, "renew", request)
        except _errors() as exc:
            err = form_error(exc, ())
            return await tls_page(request, {"renew": form_state({}, err)}, status=err.status)
        return done(request, "/ui/tls", result.message)

    @post("/tls/{cert_id:str}/delete")
    async def tls_delete(self, request: Req, cert_id: PathStr) -> Response[Any]:
        await posted(request, TlsController, "remove_cert")
        try:
            await call(TlsController, "remove_cert", request, cert_id=cert_id)
        except _errors() as exc:
            err = form_error(exc, ())
            return await tls_page(request, {"renew": form_state({}, err)}, status=err.status)
        return done(request, "/ui/tls", "Certificate record removed (the files stay).")

    # queue
    @get("/queue")
    async def queue(self, request: Req, page: PageQ = 1) -> Response[str]:
        return await queue_page(request, max(1, page))

    @post("/queue/flush")
    async def queue_flush(self, request: Req) -> Response[Any]:
        await posted(request, QueueController, "flush")
        try:
            result = await call(QueueController, "flush", request)
        except _errors() as exc:
            err = form_error(exc, ())
            return await queue_page(
                request, forms_={"flush": form_state({}, err)}, status=err.status
            )
        return done(request, "/ui/queue", result.message)

    @post("/queue/delete")
    async def queue_delete(self, request: Req) -> Response[Any]:
        form = await posted(request, QueueController, "delete_message")
        values = {"message_id": text(form, "message_id", 64)}
        try:
            result = await call(
                QueueController, "delete_message", request, data=forms.convert(DeleteIn, values)
            )
        except _errors() as exc:
            err = form_error(exc, ("message_id",))
            return await queue_page(
                request, forms_={"delete": form_state(values, err)}, status=err.status
            )
        return done(request, "/ui/queue", f"{result.message}: {values['message_id']}.")

    # tokens
    @get("/tokens")
    async def tokens(self, request: Req) -> Response[str]:
        return await tokens_page(request)

    @post("/tokens")
    async def token_create(self, request: Req) -> Response[Any]:
        form = await posted(request, TokenController, "create_token")
        values = {k: text(form, k, 4000) for k in ("name", "scope", "domains", "expires_at")}
        try:
            data = forms.convert(
                TokenIn,
                {
                    "name": values["name"].strip(),
                    "scope": values["scope"],
                    "domains": _lines(values["domains"]) or None,
                    "expires_at": _utc(values["expires_at"]),
                },
            )
            secret = await call(TokenController, "create_token", request, data=data)
        except _errors() as exc:
            err = form_error(exc, tuple(values))
            return await tokens_page(
                request, {"create": form_state(values, err)}, status=err.status
            )
        return await tokens_page(request, secret=secret, status=201)

    @post("/tokens/{token_id:str}/rotate")
    async def token_rotate(self, request: Req, token_id: PathStr) -> Response[Any]:
        await posted(request, TokenController, "rotate_token")
        try:
            secret = await call(TokenController, "rotate_token", request, token_id=token_id)
        except _errors() as exc:
            err = form_error(exc, ())
            return await tokens_page(request, {"list": form_state({}, err)}, status=err.status)
        return await tokens_page(request, secret=secret)

    @post("/tokens/{token_id:str}/revoke")
    async def token_revoke(self, request: Req, token_id: PathStr) -> Response[Any]:
        await posted(request, TokenController, "revoke_token")
        try:
            await call(TokenController, "revoke_token", request, token_id=token_id)
        except _errors() as exc:
            err = form_error(exc, ())
            return await tokens_page(request, {"list": form_state({}, err)}, status=err.status)
        return done(request, "/ui/tokens", "Token revoked; it stops working at once.")

    # security
    @get("/security")
    async def security_settings(self, request: Req) -> Response[str]:
        return await security_page(request)

    @post("/security")
    async def security_save(self, request: Req) -> Response[Any]:
        form = await posted(request, SecurityController, "put_settings")
        names = (
            "rate_limit_login",
            "rate_limit_api",
            "login_allowlist",
            "api_key_allowlist",
            "trusted_proxies",
        )
        values = {k: text(form, k, 20000) for k in names}
        try:
            numbers = {}
            for k in ("rate_limit_login", "rate_limit_api"):
                numbers[k] = forms.number(
                    forms.Field(name=k, label=forms.label(k), kind="int"), values[k]
                )
            data = forms.convert(
                SecurityIn,
                {
                    **numbers,
                    **{k: _lines(values[k]) for k in names[2:]},
                },
            )
            await call(SecurityController, "put_settings", request, data=data)
        except _errors() as exc:
            err = form_error(exc, names)
            return await security_page(
                request, {"security": form_state(values, err)}, status=err.status
            )
        return done(request, "/ui/security", "Security settings saved.")

    # backup
    @get("/backup")
    async def backup(self, request: Req) -> Response[str]:
        return await backup_page(request)

    @get("/backup/export")
    async def backup_export(self, request: Req) -> Any:
        """The event log as NDJSON (the API's own export, streamed): `mailpanel import`
        restores it into an empty deployment."""
        return await call(EventsController, "export_log", request)

    @get("/backup/download")
    async def backup_download(self, request: Req) -> Response[bytes]:
        """The API's backup document (GET /api/v1/backup), through the API itself."""
        if backup_routes(request)[0] is None:
            raise UiError(404, "No backup route", "this server has no GET /api/v1/backup")
        status, headers, body = await asgi_call(
            request, "GET", "/api/v1/backup", credential=session_credential(request)
        )
        if status != 200:
            answer = _json(body)
            raise UiError(
                status, str(answer.get("error", "backup failed")), str(answer.get("detail", ""))
            )
        return Response(
            body,
            media_type=headers.get("content-type", "application/json"),
            headers={
                "Content-Disposition": headers.get(
                    "content-disposition", 'attachment; filename="mailpanel-backup.json"'
                ),
                "Cache-Control": "no-store",
            },
        )

    @post("/backup/preview")
    async def backup_preview(self, request: Req) -> Response[str]:
        """Step 1 of a restore: the uploaded document checked by the API's own parser and
        its counts shown against today's; nothing changes yet."""
        form = await posted(request)
        _need_admin(request)
        upload = form.get("file")
        raw = await upload.read() if isinstance(upload, UploadFile) else b""
        try:
            if not raw.strip():
                raise FormError("file", "Choose a backup file (JSON) to restore.")
            if len(raw) > MAX_RESTORE_BYTES:
                raise FormError("file", "The file is too large for a backup document.")
            counts = preview_counts(raw)
        except _errors() as exc:
            err = form_error(exc, ("file",))
            if err.field in ("body", ""):
                err = FormError("file", err.message, err.status)
            return await backup_page(
                request, {"restore": form_state({}, err, ("file",))}, status=err.status
            )
        upload_id = stash(request, raw)
        return await backup_page(
            request,
            preview={"id": upload_id, "counts": counts, "now": await current_counts(request)},
        )

    @post("/backup/restore")
    async def backup_restore(self, request: Req) -> Response[Any]:
        """Step 2: the previewed document goes to POST /api/v1/backup/restore."""
        form = await posted(request)
        _need_admin(request)
        raw = unstash(request, text(form, "upload", 100))
        if raw is None:
            err = FormError("file", "That upload has expired; choose the file again.", 400)
            return await backup_page(
                request, {"restore": form_state({}, err, ("file",))}, status=400
            )
        status, _headers, body = await asgi_call(
            request,
            "POST",
            "/api/v1/backup/restore",
            raw,
            credential=session_credential(request),
        )
        answer = _json(body)
        if status != 200:
            words = f"{answer.get('error', 'restore failed')}: {answer.get('detail', '')}"
            err = FormError("file", words.rstrip(": "), status)
            return await backup_page(
                request, {"restore": form_state({}, err, ("file",))}, status=status
            )
        return done(
            request,
            "/ui/backup",
            f"Backup restored: {answer.get('domains', 0)} domain(s), "
            f"{answer.get('mailboxes', 0)} mailbox(es), {answer.get('aliases', 0)} alias(es).",
        )

    # audit
    @get("/audit")
    async def audit(
        self,
        request: Req,
        page: PageQ = 1,
        resource: QueryStr = "",
        actor: QueryStr = "",
        type: QueryStr = "",
        since: QueryStr = "",
        until: QueryStr = "",
    ) -> Response[str]:
        filters = {
            "resource": resource[:300],
            "actor": actor[:300],
            "type": type[:300],
            "since": since[:40],
            "until": until[:40],
        }
        return await audit_page(request, filters, max(1, page))

    @get("/audit/{seq:int}")
    async def audit_event(self, request: Req, seq: PathSeq) -> Response[str]:
        event = await call(AuditController, "get_event", request, seq=seq)
        return render(
            request, "event.html", nav="audit", event=event, revert=revert_path(request) is not None
        )

    @post("/audit/{seq:int}/revert")
    async def audit_revert(self, request: Req, seq: PathSeq) -> Response[Any]:
        await posted(request)
        path = revert_path(request)
        if path is None:
            raise UiError(404, "Revert is not available", "this server has no revert route yet")
        target = re.sub(r"\{[^}]+\}", str(seq), path)
        authorize(who(request), "POST", target)
        status, _headers, body = await asgi_call(
            request, "POST", target, b"{}", credential=session_credential(request)
        )
        try:
            answer = msgspec.json.decode(body) if body else {}
        except msgspec.DecodeError:
            answer = {}
        if status >= 400:
            if status in (401, 403):
                raise UiError(
                    status, str(answer.get("error", "refused")), str(answer.get("detail", ""))
                )
            words = f"{answer.get('error', 'revert failed')}: {answer.get('detail', '')}"
            return done(request, f"/ui/audit/{seq}", words.rstrip(": "), "error")
        message = answer.get("message") if isinstance(answer, dict) else None
        return done(request, f"/ui/audit/{seq}", str(message or f"Event {seq} reverted."))
