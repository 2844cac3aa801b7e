"""Controllers for domains, mailboxes and aliases (seed sections 2 to 4, plus PATCH)."""

from typing import Any

import aiosqlite
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import JSONBody

from api.backup import AsOfParam, reading
from api.common import (
    DomainFilter,
    LimitParam,
    PageParam,
    PathId,
    context,
    parse_id,
    principal,
    runtime,
    with_etag,
)
from api.errors import ERROR_SPECS, ApiError
from api.schemas import (
    Alias,
    AliasIn,
    AliasList,
    AliasPatch,
    Domain,
    DomainIn,
    DomainList,
    DomainPatch,
    Mailbox,
    MailboxIn,
    MailboxList,
    MailboxPatch,
    Message,
    PageMeta,
    PasswordIn,
)
from commands import normalize
from commands.service import Result
from core.events import AliasCreated, DomainCreated, MailboxCreated
from projections import queries
from projections.appliers import rfc3339

Req = Request[Any, Any, Any]


def _domain(r: tuple[Any, ...]) -> Domain:
    return Domain(id=r[0], name=r[1], active=bool(r[2]), outgoing_ip=r[3], created_at=r[4])


def _mailbox(r: tuple[Any, ...]) -> Mailbox:
    return Mailbox(
        id=r[0], domain_id=r[1], username=r[2], quota=r[3] or 0, active=bool(r[4]), created_at=r[5]
    )


def _alias(r: tuple[Any, ...]) -> Alias:
    return Alias(id=r[0], domain_id=r[1], source=r[2], destination=r[3], created_at=r[4])


def _created(result: Result) -> Response[Any]:
    """201 with the object as its creating event made it (also for an idempotent replay)."""
    e, at = result.event, rfc3339(result.at)
    body: Domain | Mailbox | Alias
    match e:
        case DomainCreated():
            body = Domain(
                id=result.seq,
                name=e.name,
                active=e.active,
                outgoing_ip=e.outgoing_ip,
                created_at=at,
            )
        case MailboxCreated():
            body = Mailbox(
                id=result.seq,
                domain_id=e.domain_id,
                username=e.username,
                quota=e.quota or 0,
                active=e.active,
                created_at=at,
            )
        case AliasCreated():
            body = Alias(
                id=result.seq,
                domain_id=e.domain_id,
                source=e.source,
                destination=e.destination,
                created_at=at,
            )
        case _:
            raise ApiError(
                409,
                "CONFLICT",
                "Idempotency-Key already used",
                "that key was used for a different request",
            )
    return with_etag(body, result.seq, 201)


async def _fetch(
    request: Req, table: str, row_id: int, what: str, db: aiosqlite.Connection | None = None
) -> tuple[Any, ...]:
    """The row, or 404; also 404 when a domain-scoped token may not see its domain. `db`: the
    read model to answer from (a time-travel replay), the live one by default."""
    db = db or runtime(request).reader
    row = await queries.one(db, table, row_id)
    if row is not None and not await _visible(
        request,
        row[1] if table == "domains" else None,
        None if table == "domains" else row[1],
        db,
    ):
        row = None
    if row is None:
        raise ApiError(404, "NOT_FOUND", f"{what} not found", f"no {what} with id {row_id}")
    return row


async def _guard(
    request: Req, table: str, raw_id: str, what: str, db: aiosqlite.Connection | None = None
) -> int:
    """The parsed id; for a domain-scoped token, 404 unless the row is in one of its domains."""
    row_id = parse_id(raw_id, what)
    if principal(request).domains is not None:
        await _fetch(request, table, row_id, what, db)
    return row_id


async def _visible(
    request: Req, name: str | None, domain_id: int | None, db: aiosqlite.Connection | None = None
) -> bool:
    who = principal(request)
    if who.domains is None:
        return True
    if name is None and domain_id is not None:
        name = await queries.domain_name(db or runtime(request).reader, domain_id)
    return name is not None and who.sees(name)


def _page_meta(page: int, limit: int, total: int) -> PageMeta:
    return PageMeta(page=page, limit=limit, total=total)


class DomainController(Controller):
    path = "/api/v1/domains"
    tags = ["domains"]

    @get("/", summary="List domains", responses=ERROR_SPECS)
    async def list_domains(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50, as_of: AsOfParam = None
    ) -> DomainList:
        async with reading(request, as_of) as db:
            rows, total = await queries.page(
                db, "domains", limit, (page - 1) * limit, allowed=principal(request).domains
            )
        return DomainList(data=[_domain(r) for r in rows], meta=_page_meta(page, limit, total))

    @get("/{domain_id:str}", summary="Get a domain", responses=ERROR_SPECS)
    async def get_domain(
        self, request: Req, domain_id: PathId, as_of: AsOfParam = None
    ) -> Response[Domain]:
        async with reading(request, as_of) as db:
            row = await _fetch(request, "domains", parse_id(domain_id, "domain"), "domain", db)
        return with_etag(_domain(row), row[-1])

    @post("/", summary="Create a domain", responses=ERROR_SPECS, status_code=201)
    async def create_domain(self, request: Req, data: JSONBody[DomainIn]) -> Response[Domain]:
        if principal(request).domains is not None:
            raise ApiError(
                403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot add domains"
            )
        result = await runtime(request).commands.create_domain(
            await context(request), data.name, data.outgoing_ip
        )
        return _created(result)

    @patch("/{domain_id:str}", summary="Set active and/or outgoing_ip", responses=ERROR_SPECS)
    async def patch_domain(
        self, request: Req, domain_id: PathId, data: JSONBody[DomainPatch]
    ) -> Response[Domain]:
        row_id = await _guard(request, "domains", domain_id, "domain")
        if data.outgoing_ip is not None and principal(request).domains is not None:
            raise ApiError(
                403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot change the outgoing IP"
            )
        await runtime(request).commands.update_domain(
            await context(request), row_id, data.active, data.outgoing_ip
        )
        row = await _fetch(request, "domains", row_id, "domain")
        return with_etag(_domain(row), row[-1])

    @delete(
        "/{domain_id:str}",
        summary="Delete a domain, its mailboxes and aliases",
        responses=ERROR_SPECS,
        status_code=200,
    )
    async def delete_domain(self, request: Req, domain_id: PathId) -> Message:
        row_id = await _guard(request, "domains", domain_id, "domain")
        await runtime(request).commands.delete_domain(await context(request), row_id)
        return Message("domain deleted")


class MailboxController(Controller):
    path = "/api/v1/mailboxes"
    tags = ["mailboxes"]

    @get("/", summary="List mailboxes", responses=ERROR_SPECS)
    async def list_mailboxes(
        self,
        request: Req,
        page: PageParam = 1,
        limit: LimitParam = 50,
        domain_id: DomainFilter = None,
        as_of: AsOfParam = None,
    ) -> MailboxList:
        async with reading(request, as_of) as db:
            rows, total = await queries.page(
                db,
                "mailboxes",
                limit,
                (page - 1) * limit,
                domain_id,
                allowed=principal(request).domains,
            )
        return MailboxList(data=[_mailbox(r) for r in rows], meta=_page_meta(page, limit, total))

    @get("/{mailbox_id:str}", summary="Get a mailbox", responses=ERROR_SPECS)
    async def get_mailbox(
        self, request: Req, mailbox_id: PathId, as_of: AsOfParam = None
    ) -> Response[Mailbox]:
        async with reading(request, as_of) as db:
            row = await _fetch(request, "mailboxes", parse_id(mailbox_id, "mailbox"), "mailbox", db)
        return with_etag(_mailbox(row), row[-1])

    @post("/", summary="Create a mailbox", responses=ERROR_SPECS, status_code=201)
    async def create_mailbox(self, request: Req, data: JSONBody[MailboxIn]) -> Response[Mailbox]:
        if not await _visible(request, None, data.domain_id):
            raise ApiError(404, "NOT_FOUND", "domain not found", "no such domain")
        result = await runtime(request).commands.create_mailbox(
            await context(request), data.domain_id, data.username, data.password, data.quota
        )
        row = await queries.one(runtime(request).reader, "mailboxes", result.seq)
        if row is not None:  # the effective quota (the default when none was given)
            return with_etag(_mailbox(row), row[-1], 201)
        return _created(result)

    @patch("/{mailbox_id:str}/password", summary="Set a new password", responses=ERROR_SPECS)
    async def set_password(
        self, request: Req, mailbox_id: PathId, data: JSONBody[PasswordIn]
    ) -> Message:
        row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox")
        await runtime(request).commands.change_password(
            await context(request), row_id, data.password
        )
        return Message("password updated")

    @patch("/{mailbox_id:str}", summary="Set active and/or quota", responses=ERROR_SPECS)
    async def patch_mailbox(
        self, request: Req, mailbox_id: PathId, data: JSONBody[MailboxPatch]
    ) -> Response[Mailbox]:
        row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox")
        await runtime(request).commands.update_mailbox(
            await context(request), row_id, data.active, data.quota
        )
        row = await _fetch(request, "mailboxes", row_id, "mailbox")
        return with_etag(_mailbox(row), row[-1])

    @delete("/{mailbox_id:str}", summary="Delete a mailbox", responses=ERROR_SPECS, status_code=200)
    async def delete_mailbox(self, request: Req, mailbox_id: PathId) -> Message:
        row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox")
        await runtime(request).commands.delete_mailbox(await context(request), row_id)
        return Message("mailbox deleted")


class AliasController(Controller):
    path = "/api/v1/aliases"
    tags = ["aliases"]

    @get("/", summary="List aliases", responses=ERROR_SPECS)
    async def list_aliases(
        self,
        request: Req,
        page: PageParam = 1,
        limit: LimitParam = 50,
        domain_id: DomainFilter = None,
        as_of: AsOfParam = None,
    ) -> AliasList:
        async with reading(request, as_of) as db:
            rows, total = await queries.page(
                db,
                "aliases",
                limit,
                (page - 1) * limit,
                domain_id,
                allowed=principal(request).domains,
            )
        return AliasList(data=[_alias(r) for r in rows], meta=_page_meta(page, limit, total))

    @get("/{alias_id:str}", summary="Get an alias", responses=ERROR_SPECS)
    async def get_alias(
        self, request: Req, alias_id: PathId, as_of: AsOfParam = None
    ) -> Response[Alias]:
        async with reading(request, as_of) as db:
            row = await _fetch(request, "aliases", parse_id(alias_id, "alias"), "alias", db)
        return with_etag(_alias(row), row[-1])

    @post("/", summary="Create an alias", responses=ERROR_SPECS, status_code=201)
    async def create_alias(self, request: Req, data: JSONBody[AliasIn]) -> Response[Alias]:
        who = principal(request)
        source_domain = normalize.alias_source(data.source).rpartition("@")[2]
        if who.domains is not None and not who.sees(source_domain):
            raise ApiError(
                400,
                "VALIDATION_FAILED",
                f"source domain {source_domain} is not managed by this server",
            )
        result = await runtime(request).commands.create_alias(
            await context(request), data.source, data.destination
        )
        return _created(result)

    @patch("/{alias_id:str}", summary="Set the destination", responses=ERROR_SPECS)
    async def patch_alias(
        self, request: Req, alias_id: PathId, data: JSONBody[AliasPatch]
    ) -> Response[Alias]:
        row_id = await _guard(request, "aliases", alias_id, "alias")
        await runtime(request).commands.update_alias(
            await context(request), row_id, data.destination
        )
        row = await _fetch(request, "aliases", row_id, "alias")
        return with_etag(_alias(row), row[-1])

    @delete("/{alias_id:str}", summary="Delete an alias", responses=ERROR_SPECS, status_code=200)
    async def delete_alias(self, request: Req, alias_id: PathId) -> Message:
        row_id = await _guard(request, "aliases", alias_id, "alias")
        await runtime(request).commands.delete_alias(await context(request), row_id)
        return Message("alias deleted")
