"""DKIM keys (seed section 8, plus rotation), TLS certificates (section 9) and the per-domain
DNS record sheet with its verification. Private keys never appear in an answer."""

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.params import JSONBody, QueryParameter

from api.common import LimitParam, PageParam, PathId, context, parse_id, principal, runtime
from api.errors import ERROR_SPECS, ApiError
from api.resources import _fetch
from api.schemas import Message, PageMeta
from commands import dns_verify, keys, normalize
from commands.service import Context
from core import dns
from core.errors import ValidationFailed
from core.events import DkimKeyGenerated, TlsCertRegistered
from projections import queries
from workers.reconcile.agent import layout_for
from workers.reconcile.layout import Layout, dkim_key_file, tls_files

Req = Request[Any, Any, Any]
CERTBOT_TIMEOUT_S = 300.0
RECONCILING = "; the mail hosts apply it within seconds"


# ---- bodies ----------------------------------------------------------------------------


class DkimGenerateIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: Annotated[str, msgspec.Meta(max_length=255)]
    selector: Annotated[str, msgspec.Meta(max_length=63)] = "default"
    algorithm: Annotated[str, msgspec.Meta(description="rsa (2048 bit) or ed25519")] = "rsa"


class DkimRotateIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: Annotated[str, msgspec.Meta(max_length=255)]
    selector: Annotated[str, msgspec.Meta(max_length=63)] = ""  # default s<YYYYMMDD>
    algorithm: str = "rsa"


class DkimSelectorIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: Annotated[str, msgspec.Meta(max_length=255)]
    selector: Annotated[str, msgspec.Meta(max_length=63)]


class DkimKeyOut(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    selector: str
    public_key: str  # the seed's zone-style TXT text
    private_key_path: str
    algorithm: str
    status: str
    dns_name: str
    txt_value: str
    created_at: str = ""
    updated_at: str = ""


class DkimListItem(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    selector: str
    dns_record: str
    algorithm: str
    status: str
    dns_name: str
    txt_value: str
    created_at: str
    updated_at: str


class DkimList(msgspec.Struct, frozen=True):
    data: list[DkimListItem]
    meta: PageMeta


class TlsCert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: int
    hostname: str
    cert_path: str
    key_path: str
    issuer: str
    expires_at: str | None = None
    created_at: str
    names: list[str] = []
    fingerprint_sha256: str = ""
    not_before: str | None = None
    updated_at: str = ""


class TlsList(msgspec.Struct, frozen=True):
    data: list[TlsCert]
    meta: PageMeta


class UploadOut(msgspec.Struct, frozen=True):
    message: str
    expires_at: str


class IssueIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: Annotated[str, msgspec.Meta(max_length=255)]
    email: Annotated[str, msgspec.Meta(max_length=320)]


class DnsSheet(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    mail_host: str
    records: list[dns.Record]


class DnsReport(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    ok: bool  # every required record found as expected
    checks: list[dns_verify.Check]


# ---- helpers ---------------------------------------------------------------------------


def _layout(request: Req) -> Layout:
    rt = runtime(request)
    return rt.agent.layout if rt.agent is not None else layout_for(rt.settings)


def _admin_only(request: Req) -> None:
    if principal(request).domains is not None:
        raise ApiError(403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot change this")


def _domain_param(request: Req, raw: str) -> str:
    name = normalize.domain_name(raw, "domain")
    if not principal(request).sees(name):
        raise ApiError(404, "NOT_FOUND", "public key not found", f"no DKIM key for {name}")
    return name


def _dkim_out(request: Req, row: tuple[Any, ...]) -> DkimKeyOut:
    domain, selector, algorithm, public_key, status, created_at, updated_at = row
    path = _layout(request).live(dkim_key_file(domain, selector))
    return DkimKeyOut(
        domain=domain,
        selector=selector,
        public_key=keys.dkim_zone_record(selector, public_key, algorithm),
        private_key_path=str(path),
        algorithm=algorithm,
        status=status,
        dns_name=f"{selector}._domainkey.{domain}",
        txt_value=keys.dkim_txt_value(public_key, algorithm),
        created_at=created_at,
        updated_at=updated_at,
    )


async def _dkim_row(request: Req, domain: str, selector: str) -> tuple[Any, ...]:
    row = await queries.first(runtime(request).reader, queries.GET_DKIM, (domain, selector))
    if row is None:
        raise ApiError(
            404, "NOT_FOUND", "public key not found", f"no DKIM key {selector!r} for {domain}"
        )
    return row


def _selector(raw: str) -> str:
    try:
        return keys.check_selector(raw.strip()).lower()
    except ValueError as exc:
        raise ValidationFailed("selector", str(exc)) from None


def _cert_out(request: Req, row: tuple[Any, ...]) -> TlsCert:
    (cid, hostname, issuer, cert_path, key_path, expires_at, created_at, names, fp) = row[:9]
    if not cert_path:  # files the agents write from the event
        chain_rel, key_rel = tls_files(hostname)
        layout = _layout(request)
        cert_path, key_path = str(layout.live(chain_rel)), str(layout.live(key_rel))
    return TlsCert(
        id=cid,
        hostname=hostname,
        cert_path=cert_path,
        key_path=key_path,
        issuer=issuer,
        expires_at=expires_at,
        created_at=created_at,
        names=msgspec.json.decode(names.encode(), type=list[str]),
        fingerprint_sha256=fp,
        not_before=row[9],
        updated_at=row[10],
    )


def _rfc3339(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- DKIM ------------------------------------------------------------------------------


class DkimController(Controller):
    path = "/api/v1/dkim"
    tags = ["dkim"]

    @post("/generate", summary="Generate a key pair (overwrites)", responses=ERROR_SPECS)
    async def generate(self, request: Req, data: JSONBody[DkimGenerateIn]) -> Response[DkimKeyOut]:
        domain = _domain_param(request, data.domain)
        result = await runtime(request).commands.generate_dkim(
            await context(request), domain, _selector(data.selector), data.algorithm
        )
        return await self._answer(request, result.event, domain, 201)

    @post("/rotate", summary="A new pending key: publish, then activate", responses=ERROR_SPECS)
    async def rotate(self, request: Req, data: JSONBody[DkimRotateIn]) -> Response[DkimKeyOut]:
        domain = _domain_param(request, data.domain)
        selector = _selector(data.selector) if data.selector else ""
        result = await runtime(request).commands.rotate_dkim(
            await context(request), domain, selector, data.algorithm
        )
        return await self._answer(request, result.event, domain, 201)

    @staticmethod
    async def _answer(request: Req, event: Any, domain: str, status: int) -> Response[DkimKeyOut]:
        if not isinstance(event, DkimKeyGenerated):
            raise ApiError(500, "INTERNAL_ERROR", "no key was generated", "unexpected outcome")
        row = await _dkim_row(request, domain, event.selector)
        return Response(_dkim_out(request, row), status_code=status)

    @post("/activate", summary="Sign with this selector", status_code=200, responses=ERROR_SPECS)
    async def activate(self, request: Req, data: JSONBody[DkimSelectorIn]) -> DkimKeyOut:
        return await self._step(request, data, "activate")

    @post("/retire", summary="Stop publishing a former key", status_code=200, responses=ERROR_SPECS)
    async def retire(self, request: Req, data: JSONBody[DkimSelectorIn]) -> DkimKeyOut:
        return await self._step(request, data, "retire")

    @staticmethod
    async def _step(request: Req, data: DkimSelectorIn, step: str) -> DkimKeyOut:
        domain = _domain_param(request, data.domain)
        selector = _selector(data.selector)
        await runtime(request).commands.dkim_step(await context(request), domain, selector, step)
        return _dkim_out(request, await _dkim_row(request, domain, selector))

    @get("/list", summary="Every key, one per <domain, selector>", responses=ERROR_SPECS)
    async def list_keys(
        self,
        request: Req,
        page: PageParam = 1,
        limit: LimitParam = 50,
        domain: Annotated[str | None, QueryParameter(max_length=255)] = None,
    ) -> DkimList:
        name = normalize.domain_name(domain, "domain") if domain else None
        rows, total = await queries.dkim_page(
            runtime(request).reader,
            limit,
            (page - 1) * limit,
            name,
            principal(request).domains,
        )
        items = []
        for row in rows:
            out = _dkim_out(request, row)
            items.append(
                DkimListItem(
                    domain=out.domain,
                    selector=out.selector,
                    dns_record=out.public_key,
                    algorithm=out.algorithm,
                    status=out.status,
                    dns_name=out.dns_name,
                    txt_value=out.txt_value,
                    created_at=out.created_at,
                    updated_at=out.updated_at,
                )
            )
        return DkimList(data=items, meta=PageMeta(page=page, limit=limit, total=total))

    @get("/", summary="The public key of one <domain, selector>", responses=ERROR_SPECS)
    async def get_key(
        self,
        request: Req,
        domain: Annotated[str, QueryParameter(max_length=255)],
        selector: Annotated[str, QueryParameter(max_length=63)] = "default",
    ) -> DkimKeyOut:
        name = _domain_param(request, domain)
        return _dkim_out(request, await _dkim_row(request, name, _selector(selector)))

    @delete("/", summary="Delete a key pair", status_code=200, responses=ERROR_SPECS)
    async def delete_key(
        self,
        request: Req,
        domain: Annotated[str, QueryParameter(max_length=255)],
        selector: Annotated[str, QueryParameter(max_length=63)] = "default",
    ) -> Message:
        name = _domain_param(request, domain)
        await runtime(request).commands.dkim_step(
            await context(request), name, _selector(selector), "delete"
        )
        return Message("DKIM key deleted" + RECONCILING)


# ---- TLS -------------------------------------------------------------------------------


async def _form_text(form: Any, name: str, limit: int = 1 << 20) -> str:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raw = await value.read()
        value = raw.decode("utf-8", "replace")
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(name, f"{name} is required")
    if len(value) > limit:
        raise ValidationFailed(name, f"{name} is too large")
    return value


class TlsController(Controller):
    path = "/api/v1/tls"
    tags = ["tls"]

    @get("/certs", summary="Registered certificates", responses=ERROR_SPECS)
    async def list_certs(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50
    ) -> TlsList:
        _admin_only(request)
        rows, total = await queries.tls_page(runtime(request).reader, limit, (page - 1) * limit)
        return TlsList(
            data=[_cert_out(request, r) for r in rows],
            meta=PageMeta(page=page, limit=limit, total=total),
        )

    @delete(
        "/certs/{cert_id:str}",
        summary="Remove a record (files stay)",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def remove_cert(self, request: Req, cert_id: PathId) -> Message:
        _admin_only(request)
        await runtime(request).commands.remove_cert(
            await context(request), parse_id(cert_id, "certificate")
        )
        return Message("certificate record removed")

    @post(
        "/upload",
        summary="Upload a PEM chain and key (multipart/form-data)",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def upload(self, request: Req) -> UploadOut:
        _admin_only(request)
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise ValidationFailed("body", "send multipart/form-data: hostname, cert_pem, key_pem")
        form = await request.form()
        hostname = normalize.domain_name(await _form_text(form, "hostname", 255), "hostname")
        cert_pem = await _form_text(form, "cert_pem")
        key_pem = await _form_text(form, "key_pem")
        try:
            info = keys.parse_bundle(cert_pem, key_pem, hostname, datetime.now(UTC))
        except keys.CertError as exc:
            raise ValidationFailed("cert_pem", str(exc)) from None
        rt = runtime(request)
        await rt.commands.register_cert(
            await context(request), rt.commands.sealed_cert(info, "uploaded")
        )
        return UploadOut("certificate uploaded and applied", _rfc3339(info.expires_at))

    @post(
        "/issue",
        summary="Issue a Let's Encrypt certificate with certbot",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def issue(self, request: Req, data: JSONBody[IssueIn]) -> Message:
        _admin_only(request)
        domain = normalize.domain_name(data.domain, "domain")
        email = data.email.strip()
        if "@" not in email or any(c.isspace() for c in email) or email.startswith("-"):
            raise ValidationFailed("email", "email must be an address for ACME notices")
        await _certbot(
            request,
            [
                "certonly",
                "--standalone",
                "--non-interactive",
                "--agree-tos",
                "-m",
                email,
                "-d",
                domain,
            ],
        )
        await _register_letsencrypt(request, await context(request), domain)
        return Message("certificate issued")

    @post(
        "/renew",
        summary="certbot renew, then re-register renewed certificates",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def renew(self, request: Req) -> Message:
        _admin_only(request)
        await _certbot(request, ["renew", "--quiet"])
        ctx = await context(request)
        rows = await queries.rows(runtime(request).reader, queries.TLS_BY_ISSUER, ("letsencrypt",))
        for row in rows:
            await _register_letsencrypt(request, ctx, str(row[1]))
        return Message("certificates renewed")


async def _certbot(request: Req, args: list[str]) -> None:
    settings = runtime(request).settings
    binary = shutil.which(settings.certbot)
    if binary is None:
        raise ApiError(
            503,
            "DEPENDENCY_UNAVAILABLE",
            "certbot is not installed",
            f"{settings.certbot!r} was not found; install certbot (apt install certbot) or "
            "upload a certificate with POST /api/v1/tls/upload",
        )
    try:
        out = await asyncio.to_thread(
            subprocess.run,
            [binary, *args],
            capture_output=True,
            text=True,
            timeout=CERTBOT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ApiError(
            500,
            "INTERNAL_ERROR",
            "certbot did not finish",
            f"certbot ran longer than {CERTBOT_TIMEOUT_S:.0f} s",
        ) from None
    if out.returncode != 0:
        text = (out.stderr + "\n" + out.stdout).strip().splitlines()
        trimmed = " | ".join(line.strip() for line in text if line.strip())[-2000:]
        raise ApiError(
            500,
            "INTERNAL_ERROR",
            trimmed or "certbot failed",
            f"certbot exited with status {out.returncode}",
        )


async def _register_letsencrypt(request: Req, ctx: Context, domain: str) -> None:
    """certbot's files stay where certbot keeps them (it renews them in place): the record
    points at them, and the key is read once to check it matches, never stored."""
    rt = runtime(request)
    live = Path(rt.settings.letsencrypt_dir) / "live" / domain
    cert_path, key_path = live / "fullchain.pem", live / "privkey.pem"
    try:
        cert_pem, key_pem = cert_path.read_text(), key_path.read_text()
        info = keys.parse_bundle(cert_pem, key_pem, domain, datetime.now(UTC))
    except (OSError, keys.CertError) as exc:
        raise ApiError(
            500, "INTERNAL_ERROR", "certbot's certificate is not usable", str(exc)
        ) from None
    event = TlsCertRegistered(
        hostname=info.hostname,
        issuer="letsencrypt",
        chain_pem=info.chain_pem,
        cert_path=str(cert_path),
        key_path=str(key_path),
        names=info.names,
        fingerprint=info.fingerprint_sha256,
        not_before=info.not_before,
        expires_at=info.expires_at,
    )
    await rt.commands.register_cert(ctx, event)


# ---- DNS -------------------------------------------------------------------------------


async def _sheet(request: Req, raw_id: str) -> DnsSheet:
    rt = runtime(request)
    row = await _fetch(request, "domains", parse_id(raw_id, "domain"), "domain")
    domain_id, name = int(row[0]), str(row[1])
    domain = await queries.first(
        rt.reader, "SELECT outgoing_ip FROM domains WHERE id = ?", (domain_id,)
    )
    outgoing_ip = str(domain[0]) if domain and domain[0] else ""
    effective_row = await queries.first(rt.reader, queries.EFFECTIVE["domain"], (domain_id,))
    effective = msgspec.json.decode(effective_row[0].encode()) if effective_row else {}
    dkim_rows = await queries.rows(rt.reader, queries.DKIM_OF_DOMAIN, (name,))
    entries = [
        dns.DkimEntry(selector=r[1], txt_value=keys.dkim_txt_value(r[3], r[2]), status=r[4])
        for r in dkim_rows
    ]
    mail_host = _layout(request).hostname
    ips = [outgoing_ip] if outgoing_ip else list(rt.host_ips)
    return DnsSheet(
        domain=name,
        mail_host=mail_host,
        records=dns.records(name, mail_host, effective, ips, entries),
    )


class DnsController(Controller):
    path = "/api/v1/domains"
    tags = ["dns"]

    @get(
        "/{domain_id:str}/dns",
        summary="Records to publish (?format=zone: BIND fragment)",
        responses=ERROR_SPECS,
    )
    async def records(
        self,
        request: Req,
        domain_id: PathId,
        format: Annotated[str, QueryParameter(pattern="^(json|zone)$")] = "json",
    ) -> Response[Any]:
        sheet = await _sheet(request, domain_id)
        if format == "zone":
            return Response(dns.zone(sheet.records), media_type="text/plain; charset=utf-8")
        return Response(sheet)

    @post(
        "/{domain_id:str}/dns/verify",
        summary="Resolve each record and compare",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def verify(self, request: Req, domain_id: PathId) -> DnsReport:
        sheet = await _sheet(request, domain_id)
        host, port = _resolver(runtime(request).settings.dns_resolver)
        checks = await dns_verify.verify(sheet.records, nameserver=host, port=port)
        ok = all(c.status == "ok" for c in checks if c.required)
        return DnsReport(domain=sheet.domain, ok=ok, checks=checks)


def _resolver(setting: str) -> tuple[str | None, int]:
    """MAILPANEL_DNS_RESOLVER: "ip", "ip:port" or "[ipv6]:port"; empty: the system's."""
    if not setting:
        return None, 53
    if setting.startswith("["):
        host, _, port = setting[1:].partition("]:")
        return host.rstrip("]"), int(port) if port.isdigit() else 53
    if setting.count(":") == 1:
        host, _, port = setting.partition(":")
        return host, int(port) if port.isdigit() else 53
    return setting, 53
