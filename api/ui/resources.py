"""Pages for domains, mailboxes and aliases: lists, forms, overrides, effective views with
provenance, the DNS sheet, and each object's history. Every read and write runs the JSON API's
handler for it (api.resources, api.config, api.keys, api.audit)."""

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Controller, Response, get, post

from api.audit import AuditController
from api.auth import authorize
from api.common import runtime
from api.config import OverridesController
from api.keys import DnsController
from api.resources import AliasController, DomainController, MailboxController
from api.schemas import (
    AliasIn,
    AliasPatch,
    DomainIn,
    DomainOverridesIn,
    DomainPatch,
    MailboxIn,
    MailboxOverridesIn,
    MailboxPatch,
    PasswordIn,
)
from api.ui import forms
from api.ui.web import (
    FormError,
    PageQ,
    PathStr,
    QueryStr,
    Req,
    api_route,
    call,
    done,
    form_error,
    form_state,
    human_bytes,
    pager,
    posted,
    render,
    text,
    who,
)
from core.errors import DomainError

LIMIT = 25
HISTORY_LIMIT = 25
SEARCH = (
    "SELECT id, name, active, outgoing_ip, created_at, count(*) OVER () FROM domains "
    "WHERE instr(name, ?1) > 0 AND (?2 IS NULL OR name IN (SELECT value FROM json_each(?2))) "
    "ORDER BY id LIMIT ?3 OFFSET ?4"
)
COUNTS = {
    "mailboxes": "SELECT domain_id, count(*) FROM mailboxes WHERE domain_id IN "
    "(SELECT value FROM json_each(?)) GROUP BY domain_id",
    "aliases": "SELECT domain_id, count(*) FROM aliases WHERE domain_id IN "
    "(SELECT value FROM json_each(?)) GROUP BY domain_id",
}
DOMAIN_OVERRIDE_FIELDS = forms.fields_of(DomainOverridesIn)
MAILBOX_OVERRIDE_FIELDS = forms.fields_of(MailboxOverridesIn, textareas=("vacation_message",))
FORM_ERRORS = (DomainError, FormError, msgspec.ValidationError)


def _errors() -> tuple[type[Exception], ...]:
    from api.errors import ApiError
    from commands.log import Unavailable

    return (*FORM_ERRORS, ApiError, Unavailable)


async def newest_first(
    fetch: Callable[[int, int], Awaitable[Any]], page: int, limit: int
) -> tuple[list[Any], dict[str, int]]:
    """A page of an oldest-first API list shown newest first: page 1 holds the newest
    `limit` items (at most three calls of the API's own paging)."""
    total = int((await fetch(1, 1)).meta.total)
    end = max(0, total - (page - 1) * limit)
    start = max(0, end - limit)
    items: list[Any] = []
    if end > start:
        first, last = start // limit + 1, (end - 1) // limit + 1
        for n in range(first, last + 1):
            items += (await fetch(n, limit)).data
        offset = (first - 1) * limit
        items = items[start - offset : end - offset]
    return list(reversed(items)), pager(page, limit, total)


async def history(request: Req, kind: str, object_id: int, page: int) -> dict[str, Any]:
    name = {"domain": "domain_history", "mailbox": "mailbox_history", "alias": "alias_history"}

    async def fetch(n: int, size: int) -> Any:
        return await call(
            AuditController,
            name[kind],
            request,
            **{f"{kind}_id": str(object_id), "page": n, "limit": size},
        )

    items, paging = await newest_first(fetch, page, HISTORY_LIMIT)
    return {"events": items, "paging": paging}


# ---- shared loaders ----------------------------------------------------------------------


async def load_domain(request: Req, domain_id: int) -> Any:
    return await call(DomainController, "get_domain", request, domain_id=str(domain_id))


async def load_mailbox(request: Req, mailbox_id: int) -> Any:
    return await call(MailboxController, "get_mailbox", request, mailbox_id=str(mailbox_id))


async def domain_choices(request: Req) -> list[Any]:
    """Every domain the principal sees, for the selects of the create forms."""
    out: list[Any] = []
    page = 1
    while True:
        chunk = await call(DomainController, "list_domains", request, page=page, limit=500)
        out += chunk.data
        if len(out) >= chunk.meta.total or not chunk.data:
            return out
        page += 1


async def _counts(request: Req, ids: list[int]) -> dict[str, dict[int, int]]:
    db = runtime(request).reader
    arg = msgspec.json.encode(ids).decode()
    return {
        what: {int(r[0]): int(r[1]) for r in await db.execute_fetchall(sql, (arg,))}
        for what, sql in COUNTS.items()
    }


# ---- page renderers (also used to show a form again with its errors) ---------------------


async def domains_page(
    request: Req,
    q: str = "",
    page: int = 1,
    forms_: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    q = q.strip().lower()[:255]
    if q:
        method, path = api_route(DomainController, "list_domains")
        authorize(who(request), method, path)
        allowed = who(request).domains
        rows = list(
            await runtime(request).reader.execute_fetchall(
                SEARCH,
                (
                    q,
                    None if allowed is None else msgspec.json.encode(allowed).decode(),
                    LIMIT,
                    (page - 1) * LIMIT,
                ),
            )
        )
        total = int(rows[0][-1]) if rows else 0
        domains = [
            {
                "id": r[0],
                "name": r[1],
                "active": bool(r[2]),
                "outgoing_ip": r[3],
                "created_at": r[4],
            }
            for r in rows
        ]
    else:
        listed = await call(DomainController, "list_domains", request, page=page, limit=LIMIT)
        total = listed.meta.total
        domains = [msgspec.structs.asdict(d) for d in listed.data]
    counts = await _counts(request, [int(d["id"]) for d in domains])
    return render(
        request,
        "domains.html",
        status=status,
        nav="domains",
        domains=domains,
        counts=counts,
        q=q,
        paging=pager(page, LIMIT, total),
        forms=forms_ or {},
    )


async def domain_page(
    request: Req, domain_id: int, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    domain = await load_domain(request, domain_id)
    effective = await call(
        OverridesController, "get_domain_effective", request, domain_id=str(domain_id)
    )
    boxes = await call(
        MailboxController, "list_mailboxes", request, page=1, limit=1, domain_id=domain_id
    )
    aliases = await call(
        AliasController, "list_aliases", request, page=1, limit=1, domain_id=domain_id
    )
    return render(
        request,
        "domain.html",
        status=status,
        nav="domains",
        tab="overview",
        kind="domain",
        domain=domain,
        effective=effective,
        mailbox_count=boxes.meta.total,
        alias_count=aliases.meta.total,
        forms=forms_ or {},
    )


async def save_overrides(request: Req, kind: str, row_id: int) -> Response[Any]:
    """The overrides form of a domain or a mailbox, through the API's own PUT handler."""
    handler = f"put_{kind}_overrides"
    fields = DOMAIN_OVERRIDE_FIELDS if kind == "domain" else MAILBOX_OVERRIDE_FIELDS
    body = DomainOverridesIn if kind == "domain" else MailboxOverridesIn
    form = await posted(request, OverridesController, handler)
    try:
        data = forms.build(body, form, fields)
        await call(OverridesController, handler, request, **{f"{kind}_id": str(row_id)}, data=data)
    except _errors() as exc:
        err = form_error(exc, tuple(f.name for f in fields))
        state = form_state(forms.raw_values(form, fields), err)
        return await overrides_page(request, kind, row_id, {"overrides": state}, status=err.status)
    plural = "domains" if kind == "domain" else "mailboxes"
    return done(
        request, f"/ui/{plural}/{row_id}/effective", "Overrides saved; the mail hosts apply them."
    )


async def overrides_page(
    request: Req,
    kind: str,
    object_id: int,
    forms_: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    if kind == "domain":
        subject = await load_domain(request, object_id)
        current = await call(
            OverridesController, "get_domain_overrides", request, domain_id=str(object_id)
        )
        effective = await call(
            OverridesController,
            "get_domain_effective",
            request,
            domain_id=str(object_id),
            explain=True,
        )
        fields = DOMAIN_OVERRIDE_FIELDS
    else:
        subject = await load_mailbox(request, object_id)
        current = await call(
            OverridesController, "get_mailbox_overrides", request, mailbox_id=str(object_id)
        )
        effective = await call(
            OverridesController,
            "get_mailbox_effective",
            request,
            mailbox_id=str(object_id),
            explain=True,
        )
        fields = MAILBOX_OVERRIDE_FIELDS
    state = (forms_ or {}).get("overrides") or form_state(forms.values_of(current))
    inherited, in_force = inheritance(fields, effective)
    return render(
        request,
        "overrides.html",
        status=status,
        nav="domains",
        tab="overrides",
        kind=kind,
        subject=subject,
        domain=subject if kind == "domain" else await load_domain(request, subject.domain_id),
        fields=fields,
        state=state,
        inherited=inherited,
        in_force=in_force,
    )


async def effective_page(request: Req, kind: str, object_id: int) -> Response[str]:
    if kind == "domain":
        subject = await load_domain(request, object_id)
        view = await call(
            OverridesController,
            "get_domain_effective",
            request,
            domain_id=str(object_id),
            explain=True,
        )
        domain = subject
    else:
        subject = await load_mailbox(request, object_id)
        view = await call(
            OverridesController,
            "get_mailbox_effective",
            request,
            mailbox_id=str(object_id),
            explain=True,
        )
        domain = await load_domain(request, subject.domain_id)
    values = {k: v for k, v in msgspec.structs.asdict(view).items() if k != "explain"}
    return render(
        request,
        "effective.html",
        nav="domains",
        tab="effective",
        kind=kind,
        subject=subject,
        domain=domain,
        values=values,
        explain=view.explain,
    )


async def mailboxes_page(
    request: Req,
    domain_id: int | None,
    page: int = 1,
    forms_: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    domain = await load_domain(request, domain_id) if domain_id else None
    listed = await call(
        MailboxController, "list_mailboxes", request, page=page, limit=LIMIT, domain_id=domain_id
    )
    choices = [domain] if domain else await domain_choices(request)
    names = {d.id: d.name for d in choices}
    return render(
        request,
        "mailboxes.html",
        status=status,
        nav="domains" if domain else "mailboxes",
        tab="mailboxes",
        kind="domain" if domain else "",
        domain=domain,
        mailboxes=listed.data,
        names=names,
        choices=choices,
        paging=pager(page, LIMIT, listed.meta.total),
        forms=forms_ or {},
    )


async def mailbox_page(
    request: Req, mailbox_id: int, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    mailbox = await load_mailbox(request, mailbox_id)
    domain = await load_domain(request, mailbox.domain_id)
    return render(
        request,
        "mailbox.html",
        status=status,
        nav="domains",
        tab="overview",
        kind="mailbox",
        subject=mailbox,
        mailbox=mailbox,
        domain=domain,
        forms=forms_ or {},
    )


async def aliases_page(
    request: Req,
    domain_id: int | None,
    page: int = 1,
    forms_: dict[str, Any] | None = None,
    status: int = 200,
) -> Response[str]:
    domain = await load_domain(request, domain_id) if domain_id else None
    listed = await call(
        AliasController, "list_aliases", request, page=page, limit=LIMIT, domain_id=domain_id
    )
    choices = [domain] if domain else await domain_choices(request)
    return render(
        request,
        "aliases.html",
        status=status,
        nav="domains" if domain else "aliases",
        tab="aliases",
        kind="domain" if domain else "",
        domain=domain,
        aliases=listed.data,
        names={d.id: d.name for d in choices},
        choices=choices,
        paging=pager(page, LIMIT, listed.meta.total),
        forms=forms_ or {},
    )


async def alias_page(
    request: Req, alias_id: int, forms_: dict[str, Any] | None = None, status: int = 200
) -> Response[str]:
    alias = await call(AliasController, "get_alias", request, alias_id=str(alias_id))
    domain = await load_domain(request, alias.domain_id)
    return render(
        request,
        "alias.html",
        status=status,
        nav="aliases",
        tab="overview",
        kind="alias",
        subject=alias,
        alias=alias,
        domain=domain,
        forms=forms_ or {},
    )


def inheritance(fields: list[forms.Field], effective: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Per override field: the value it would inherit (when this tier does not set it) and
    what is in force now, with the tier that supplies it (the API's explain view)."""
    values = msgspec.structs.asdict(effective)
    explain = effective.explain or {}
    inherited: dict[str, str] = {}
    in_force: dict[str, str] = {}
    for field in fields:
        if field.name not in values:
            continue
        value = values[field.name]
        shown = human_bytes(value) if field.sized else forms.shown(value)
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        tier = explain[field.name].tier if field.name in explain else ""
        in_force[field.name] = f"{shown} ({tier or 'built-in'})"
        if not tier.endswith("override"):
            inherited[field.name] = shown
    return inherited, in_force


def _id(raw: str) -> int:
    from api.common import parse_id

    return parse_id(raw, "object")


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and len(raw) < 19 and int(raw) > 0 else None


# ---- the controller ------------------------------------------------------------------------


class ResourcePages(Controller):
    path = "/ui"
    include_in_schema = False

    # domains
    @get("/domains")
    async def domains(self, request: Req, q: QueryStr = "", page: PageQ = 1) -> Response[str]:
        return await domains_page(request, q, max(1, page))

    @post("/domains")
    async def create_domain(self, request: Req) -> Response[Any]:
        form = await posted(request, DomainController, "create_domain")
        values = {"name": text(form, "name", 300), "outgoing_ip": text(form, "outgoing_ip", 80)}
        try:
            data = forms.convert(DomainIn, values)
            created = await call(DomainController, "create_domain", request, data=data)
        except _errors() as exc:
            err = form_error(exc, ("name", "outgoing_ip"))
            return await domains_page(
                request, forms_={"create": form_state(values, err)}, status=err.status
            )
        return done(request, f"/ui/domains/{created.id}", f"Domain {created.name} created.")

    @get("/domains/{domain_id:str}")
    async def domain(self, request: Req, domain_id: PathStr) -> Response[str]:
        return await domain_page(request, _id(domain_id))

    @post("/domains/{domain_id:str}/active")
    async def domain_active(self, request: Req, domain_id: PathStr) -> Response[Any]:
        row_id = _id(domain_id)
        form = await posted(request, DomainController, "patch_domain")
        active = text(form, "active") == "true"
        try:
            await call(
                DomainController,
                "patch_domain",
                request,
                domain_id=str(row_id),
                data=DomainPatch(active=active),
            )
        except _errors() as exc:
            err = form_error(exc, ())
            return await domain_page(
                request, row_id, {"active": form_state({}, err)}, status=err.status
            )
        word = "activated" if active else "deactivated"
        return done(request, f"/ui/domains/{row_id}", f"Domain {word}.")

    @post("/domains/{domain_id:str}/outgoing-ip")
    async def domain_outgoing_ip(self, request: Req, domain_id: PathStr) -> Response[Any]:
        row_id = _id(domain_id)
        form = await posted(request, DomainController, "patch_domain")
        values = {"outgoing_ip": text(form, "outgoing_ip", 80)}
        try:
            data = forms.convert(DomainPatch, values)
            await call(DomainController, "patch_domain", request, domain_id=str(row_id), data=data)
        except _errors() as exc:
            err = form_error(exc, ("outgoing_ip",))
            return await domain_page(
                request, row_id, {"outgoing_ip": form_state(values, err)}, status=err.status
            )
        return done(request, f"/ui/domains/{row_id}", "Outgoing IP saved.")

    @post("/domains/{domain_id:str}/delete")
    async def domain_delete(self, request: Req, domain_id: PathStr) -> Response[Any]:
        row_id = _id(domain_id)
        form = await posted(request, DomainController, "delete_domain")
        values = {"confirm": text(form, "confirm", 300)}
        try:
            domain = await load_domain(request, row_id)
            if values["confirm"].strip().lower() != domain.name:
                raise FormError(
                    "confirm", f"Type the domain name ({domain.name}) to confirm the deletion."
                )
            await call(DomainController, "delete_domain", request, domain_id=str(row_id))
        except _errors() as exc:
            err = form_error(exc, ("confirm",))
            return await domain_page(
                request, row_id, {"delete": form_state(values, err)}, status=err.status
            )
        return done(
            request, "/ui/domains", f"Domain {domain.name} deleted, with its mailboxes and aliases."
        )

    @get("/domains/{domain_id:str}/overrides")
    async def domain_overrides(self, request: Req, domain_id: PathStr) -> Response[str]:
        return await overrides_page(request, "domain", _id(domain_id))

    @post("/domains/{domain_id:str}/overrides")
    async def save_domain_overrides(self, request: Req, domain_id: PathStr) -> Response[Any]:
        return await save_overrides(request, "domain", _id(domain_id))

    @get("/domains/{domain_id:str}/effective")
    async def domain_effective(self, request: Req, domain_id: PathStr) -> Response[str]:
        return await effective_page(request, "domain", _id(domain_id))

    @get("/domains/{domain_id:str}/dns")
    async def domain_dns(self, request: Req, domain_id: PathStr) -> Response[str]:
        return await self._dns(request, _id(domain_id), None)

    @post("/domains/{domain_id:str}/dns/verify")
    async def domain_dns_verify(self, request: Req, domain_id: PathStr) -> Response[str]:
        row_id = _id(domain_id)
        await posted(request, DnsController, "verify")
        report = await call(DnsController, "verify", request, domain_id=str(row_id))
        return await self._dns(request, row_id, report)

    @staticmethod
    async def _dns(request: Req, row_id: int, report: Any) -> Response[str]:
        domain = await load_domain(request, row_id)
        sheet = await call(DnsController, "records", request, domain_id=str(row_id))
        zone = await call(DnsController, "records", request, domain_id=str(row_id), format="zone")
        checks = {(c.type, c.name, c.expected): c for c in report.checks} if report else {}
        return render(
            request,
            "dns.html",
            nav="domains",
            tab="dns",
            kind="domain",
            domain=domain,
            sheet=sheet,
            zone=zone,
            report=report,
            checks=checks,
        )

    @get("/domains/{domain_id:str}/history")
    async def domain_history(
        self, request: Req, domain_id: PathStr, page: PageQ = 1
    ) -> Response[str]:
        row_id = _id(domain_id)
        domain = await load_domain(request, row_id)
        data = await history(request, "domain", row_id, max(1, page))
        return render(
            request,
            "history.html",
            nav="domains",
            tab="history",
            kind="domain",
            subject=domain,
            domain=domain,
            **data,
        )

    # mailboxes
    @get("/mailboxes")
    async def mailboxes(
        self, request: Req, domain_id: QueryStr = "", page: PageQ = 1
    ) -> Response[str]:
        return await mailboxes_page(request, _opt_int(domain_id), max(1, page))

    @post("/mailboxes")
    async def create_mailbox(self, request: Req) -> Response[Any]:
        form = await posted(request, MailboxController, "create_mailbox")
        values = {
            "domain_id": text(form, "domain_id", 20),
            "username": text(form, "username", 400),
            "password": text(form, "password", 1100),
            "quota": text(form, "quota", 40),
        }
        scoped = _opt_int(text(form, "scoped", 20))
        fields = ("domain_id", "username", "password", "quota")
        try:
            domain_id = _opt_int(values["domain_id"])
            if domain_id is None:
                raise FormError("domain_id", "Choose a domain.")
            quota = None
            if values["quota"].strip():
                quota = forms.number(
                    forms.Field(name="quota", label="Quota", kind="int", sized=True),
                    values["quota"],
                )
            data = forms.convert(
                MailboxIn,
                {
                    "domain_id": domain_id,
                    "username": values["username"],
                    "password": values["password"],
                    "quota": quota,
                },
            )
            created = await call(MailboxController, "create_mailbox", request, data=data)
        except _errors() as exc:
            err = form_error(exc, fields)
            values["password"] = ""  # never sent back
            return await mailboxes_page(
                request,
                scoped,
                forms_={"create": form_state(values, err, fields)},
                status=err.status,
            )
        back = f"/ui/mailboxes?domain_id={scoped}" if scoped else "/ui/mailboxes"
        return done(request, back, f"Mailbox {created.username} created.")

    @get("/mailboxes/{mailbox_id:str}")
    async def mailbox(self, request: Req, mailbox_id: PathStr) -> Response[str]:
        return await mailbox_page(request, _id(mailbox_id))

    @post("/mailboxes/{mailbox_id:str}/update")
    async def mailbox_update(self, request: Req, mailbox_id: PathStr) -> Response[Any]:
        row_id = _id(mailbox_id)
        form = await posted(request, MailboxController, "patch_mailbox")
        values = {"quota": text(form, "quota", 40), "active": text(form, "active", 10)}
        try:
            quota = None
            if values["quota"].strip():
                quota = forms.number(
                    forms.Field(name="quota", label="Quota", kind="int", sized=True),
                    values["quota"],
                )
            data = forms.convert(
                MailboxPatch, {"active": values["active"] in ("true", "on"), "quota": quota}
            )
            await call(
                MailboxController, "patch_mailbox", request, mailbox_id=str(row_id), data=data
            )
        except _errors() as exc:
            err = form_error(exc, ("quota", "active"))
            return await mailbox_page(
                request, row_id, {"update": form_state(values, err)}, status=err.status
            )
        return done(request, f"/ui/mailboxes/{row_id}", "Mailbox saved.")

    @post("/mailboxes/{mailbox_id:str}/password")
    async def mailbox_password(self, request: Req, mailbox_id: PathStr) -> Response[Any]:
        row_id = _id(mailbox_id)
        form = await posted(request, MailboxController, "set_password")
        password, again = text(form, "password", 1100), text(form, "password_again", 1100)
        try:
            if password != again:
                raise FormError("password_again", "The two passwords differ.")
            data = forms.convert(PasswordIn, {"password": password})
            await call(
                MailboxController, "set_password", request, mailbox_id=str(row_id), data=data
            )
        except _errors() as exc:
            err = form_error(exc, ("password", "password_again"))
            state = form_state({"password": "", "password_again": ""}, err)
            return await mailbox_page(request, row_id, {"password": state}, status=err.status)
        return done(request, f"/ui/mailboxes/{row_id}", "Password changed.")

    @post("/mailboxes/{mailbox_id:str}/delete")
    async def mailbox_delete(self, request: Req, mailbox_id: PathStr) -> Response[Any]:
        row_id = _id(mailbox_id)
        await posted(request, MailboxController, "delete_mailbox")
        mailbox = await load_mailbox(request, row_id)
        try:
            await call(MailboxController, "delete_mailbox", request, mailbox_id=str(row_id))
        except _errors() as exc:
            err = form_error(exc, ())
            return await mailbox_page(
                request, row_id, {"delete": form_state({}, err)}, status=err.status
            )
        return done(
            request,
            f"/ui/mailboxes?domain_id={mailbox.domain_id}",
            f"Mailbox {mailbox.username} deleted.",
        )

    @get("/mailboxes/{mailbox_id:str}/overrides")
    async def mailbox_overrides(self, request: Req, mailbox_id: PathStr) -> Response[str]:
        return await overrides_page(request, "mailbox", _id(mailbox_id))

    @post("/mailboxes/{mailbox_id:str}/overrides")
    async def save_mailbox_overrides(self, request: Req, mailbox_id: PathStr) -> Response[Any]:
        return await save_overrides(request, "mailbox", _id(mailbox_id))

    @get("/mailboxes/{mailbox_id:str}/effective")
    async def mailbox_effective(self, request: Req, mailbox_id: PathStr) -> Response[str]:
        return await effective_page(request, "mailbox", _id(mailbox_id))

    @get("/mailboxes/{mailbox_id:str}/history")
    async def mailbox_history(
        self, request: Req, mailbox_id: PathStr, page: PageQ = 1
    ) -> Response[str]:
        row_id = _id(mailbox_id)
        data = await history(request, "mailbox", row_id, max(1, page))
        try:
            mailbox = await load_mailbox(request, row_id)
            domain = await load_domain(request, mailbox.domain_id)
        except _errors():  # deleted: its history stays readable
            mailbox, domain = None, None
        return render(
            request,
            "history.html",
            nav="domains",
            tab="history",
            kind="mailbox",
            subject=mailbox,
            domain=domain,
            object_id=row_id,
            **data,
        )

    # aliases
    @get("/aliases")
    async def aliases(
        self, request: Req, domain_id: QueryStr = "", page: PageQ = 1
    ) -> Response[str]:
        return await aliases_page(request, _opt_int(domain_id), max(1, page))

    @post("/aliases")
    async def create_alias(self, request: Req) -> Response[Any]:
        form = await posted(request, AliasController, "create_alias")
        values = {"source": text(form, "source", 400), "destination": text(form, "destination")}
        scoped = _opt_int(text(form, "scoped", 20))
        try:
            data = forms.convert(AliasIn, values)
            created = await call(AliasController, "create_alias", request, data=data)
        except _errors() as exc:
            err = form_error(exc, ("source", "destination"))
            return await aliases_page(
                request, scoped, forms_={"create": form_state(values, err)}, status=err.status
            )
        back = f"/ui/aliases?domain_id={scoped}" if scoped else "/ui/aliases"
        return done(request, back, f"Alias {created.source} created.")

    @get("/aliases/{alias_id:str}")
    async def alias(self, request: Req, alias_id: PathStr) -> Response[str]:
        return await alias_page(request, _id(alias_id))

    @post("/aliases/{alias_id:str}/update")
    async def alias_update(self, request: Req, alias_id: PathStr) -> Response[Any]:
        row_id = _id(alias_id)
        form = await posted(request, AliasController, "patch_alias")
        values = {"destination": text(form, "destination")}
        try:
            data = forms.convert(AliasPatch, values)
            await call(AliasController, "patch_alias", request, alias_id=str(row_id), data=data)
        except _errors() as exc:
            err = form_error(exc, ("destination",))
            return await alias_page(
                request, row_id, {"update": form_state(values, err)}, status=err.status
            )
        return done(request, f"/ui/aliases/{row_id}", "Alias saved.")

    @post("/aliases/{alias_id:str}/delete")
    async def alias_delete(self, request: Req, alias_id: PathStr) -> Response[Any]:
        row_id = _id(alias_id)
        await posted(request, AliasController, "delete_alias")
        alias = await call(AliasController, "get_alias", request, alias_id=str(row_id))
        try:
            await call(AliasController, "delete_alias", request, alias_id=str(row_id))
        except _errors() as exc:
            err = form_error(exc, ())
            return await alias_page(
                request, row_id, {"delete": form_state({}, err)}, status=err.status
            )
        return done(
            request, f"/ui/aliases?domain_id={alias.domain_id}", f"Alias {alias.source} deleted."
        )

    @get("/aliases/{alias_id:str}/history")
    async def alias_history(
        self, request: Req, alias_id: PathStr, page: PageQ = 1
    ) -> Response[str]:
        row_id = _id(alias_id)
        data = await history(request, "alias", row_id, max(1, page))
        try:
            alias = await call(AliasController, "get_alias", request, alias_id=str(row_id))
            domain = await load_domain(request, alias.domain_id)
        except _errors():
            alias, domain = None, None
        return render(
            request,
            "history.html",
            nav="aliases",
            tab="history",
            kind="alias",
            subject=alias,
            domain=domain,
            object_id=row_id,
            **data,
        )
