"""Configuration tiers, per-domain and per-mailbox overrides, the effective views (with
provenance on ?explain=true), anti-spam settings and the whitelist (seed sections 5-7, 10)."""

from typing import Annotated, Any

import aiosqlite
import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import JSONBody, QueryParameter

from api.backup import AsOfParam, reading
from api.common import LimitParam, PageParam, PathId, context, parse_id, principal, runtime
from api.errors import ERROR_SPECS, ApiError
from api.resources import _guard
from api.schemas import (
    Antispam,
    AntispamIn,
    DomainDefaultsIn,
    DomainDefaultsOut,
    DomainOverridesIn,
    EffectiveDomain,
    EffectiveMailbox,
    GlobalConfigIn,
    GlobalConfigOut,
    MailboxDefaultsIn,
    MailboxDefaultsOut,
    MailboxOverridesIn,
    Message,
    PageMeta,
    Provenance,
    WhitelistEntry,
    WhitelistIn,
    WhitelistList,
)
from core.config import (
    ANTISPAM_FIELDS,
    TIER_TYPES,
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
)
from projections import queries

Req = Request[Any, Any, Any]
Explain = Annotated[bool, QueryParameter(description="add each field's tier and event")]
RECONCILING = "; reconciling…"

TIER_OUT: dict[str, type[Any]] = {
    "global": GlobalConfigOut,
    "domain_defaults": DomainDefaultsOut,
    "mailbox_defaults": MailboxDefaultsOut,
}


def _core(value: Any, kind: type[Any]) -> Any:
    """The core struct of an input/output subclass (drops updated_at)."""
    return kind(**{f: getattr(value, f) for f in kind.__struct_fields__})


async def _tier(request: Req, name: str) -> Any:
    kind, out = TIER_TYPES[name], TIER_OUT[name]
    row = await queries.first(runtime(request).reader, queries.GET_TIER, (name,))
    current = kind() if row is None else msgspec.json.decode(str(row[0]).encode(), type=kind)
    return out(**msgspec.structs.asdict(current), updated_at=None if row is None else row[1])


def _admin_only(request: Req) -> None:
    """System-wide tiers belong to unrestricted tokens; a domain admin sees its own views."""
    if principal(request).domains is not None:
        raise ApiError(403, "FORBIDDEN", "forbidden", "a domain-scoped token cannot change this")


async def _effective(
    request: Req,
    what: str,
    row_id: int,
    explain: bool,
    kind: type[Any],
    db: aiosqlite.Connection | None = None,
) -> Any:
    """The resolved settings, from the live read model or `db` (a time-travel replay)."""
    db = db or runtime(request).reader
    row = await queries.first(db, queries.EFFECTIVE[what], (row_id,))
    if row is None:
        raise ApiError(404, "NOT_FOUND", f"{what} not found", f"no {what} with id {row_id}")
    view = msgspec.json.decode(str(row[0]).encode(), type=kind)
    if explain:
        sources: dict[str, list[Any]] = msgspec.json.decode(str(row[1]).encode())
        seqs = sorted({int(s[1]) for s in sources.values() if s[1]})
        seen = await queries.events_at(db, seqs)
        view.explain = {
            field: Provenance(
                tier=tier if seq else "default",
                seq=seq,
                at=seen.get(seq, (None, None))[0],
                actor=seen.get(seq, (None, None))[1],
            )
            for field, (tier, seq) in sources.items()
        }
    return view


async def _overrides(request: Req, what: str, row_id: int, kind: type[Any]) -> Any:
    row = await queries.first(runtime(request).reader, queries.OVERRIDES[what], (row_id,))
    return kind() if row is None else msgspec.json.decode(str(row[0]).encode(), type=kind)


CAP_FIELDS = ("max_mailboxes", "max_aliases", "quota_total_bytes")


async def _keep_caps(request: Req, domain_id: int, wanted: DomainOverrides) -> DomainOverrides:
    """A domain admin (domain-scoped token) may tune its domain but not lift the caps the
    operator set on it: cap fields keep their current override; changing one is a 403."""
    current: DomainOverrides = await _overrides(request, "domain", domain_id, DomainOverrides)
    for field in CAP_FIELDS:
        value = getattr(wanted, field)
        if value is not None and value != getattr(current, field):
            raise ApiError(
                403, "FORBIDDEN", "forbidden", f"a domain-scoped token cannot change {field}"
            )
    return msgspec.structs.replace(wanted, **{f: getattr(current, f) for f in CAP_FIELDS})


class ConfigController(Controller):
    path = "/api/v1/config"
    tags = ["config"]

    @get("/global", summary="System-wide caps and policy defaults", responses=ERROR_SPECS)
    async def get_global(self, request: Req) -> GlobalConfigOut:
        result: GlobalConfigOut = await _tier(request, "global")
        return result

    @put("/global", summary="Replace the global row in full", responses=ERROR_SPECS)
    async def put_global(self, request: Req, data: JSONBody[GlobalConfigIn]) -> Message:
        _admin_only(request)
        await runtime(request).commands.set_tier(
            await context(request), "global", _core(data, GlobalConfig)
        )
        return Message("global config saved" + RECONCILING)

    @get("/domain-defaults", summary="Defaults for every domain", responses=ERROR_SPECS)
    async def get_domain_defaults(self, request: Req) -> DomainDefaultsOut:
        result: DomainDefaultsOut = await _tier(request, "domain_defaults")
        return result

    @put("/domain-defaults", summary="Replace the domain defaults in full", responses=ERROR_SPECS)
    async def put_domain_defaults(self, request: Req, data: JSONBody[DomainDefaultsIn]) -> Message:
        _admin_only(request)
        await runtime(request).commands.set_tier(
            await context(request), "domain_defaults", _core(data, DomainDefaults)
        )
        return Message("domain defaults saved" + RECONCILING)

    @get("/mailbox-defaults", summary="Defaults for every mailbox", responses=ERROR_SPECS)
    async def get_mailbox_defaults(self, request: Req) -> MailboxDefaultsOut:
        result: MailboxDefaultsOut = await _tier(request, "mailbox_defaults")
        return result

    @put("/mailbox-defaults", summary="Replace the mailbox defaults in full", responses=ERROR_SPECS)
    async def put_mailbox_defaults(
        self, request: Req, data: JSONBody[MailboxDefaultsIn]
    ) -> Message:
        _admin_only(request)
        await runtime(request).commands.set_tier(
            await context(request), "mailbox_defaults", _core(data, MailboxDefaults)
        )
        return Message("mailbox defaults saved" + RECONCILING)

    @get(
        "/antispam",
        summary="The DNSBL and greylist subset of the global row",
        responses=ERROR_SPECS,
    )
    async def get_antispam(self, request: Req) -> Antispam:
        glob = await _tier(request, "global")
        return Antispam(**{f: getattr(glob, f) for f in ANTISPAM_FIELDS})

    @put(
        "/antispam",
        summary="Replace the anti-spam subset; other global fields stay",
        responses=ERROR_SPECS,
    )
    async def put_antispam(self, request: Req, data: JSONBody[AntispamIn]) -> Message:
        _admin_only(request)
        for field in ("greylist_delay_seconds", "greylist_max_age_days"):
            if getattr(data, field) < 0:
                raise ApiError(
                    400,
                    "VALIDATION_FAILED",
                    "greylist delay and max-age must be non-negative",
                    f"field: {field}",
                )
        await runtime(request).commands.set_antispam(
            await context(request), msgspec.structs.asdict(data)
        )
        return Message("anti-spam config saved" + RECONCILING)


class OverridesController(Controller):
    tags = ["config"]

    @get(
        "/api/v1/domains/{domain_id:str}/overrides",
        summary="A domain's overrides",
        responses=ERROR_SPECS,
    )
    async def get_domain_overrides(self, request: Req, domain_id: PathId) -> DomainOverrides:
        row_id = await _guard(request, "domains", domain_id, "domain")
        await _effective(request, "domain", row_id, False, EffectiveDomain)  # 404 if absent
        result: DomainOverrides = await _overrides(request, "domain", row_id, DomainOverrides)
        return result

    @put(
        "/api/v1/domains/{domain_id:str}/overrides",
        summary="Set a domain's overrides; omitted or null fields inherit",
        responses=ERROR_SPECS,
    )
    async def put_domain_overrides(
        self, request: Req, domain_id: PathId, data: JSONBody[DomainOverridesIn]
    ) -> Message:
        row_id = await _guard(request, "domains", domain_id, "domain")
        wanted = _core(data, DomainOverrides)
        if principal(request).domains is not None:
            wanted = await _keep_caps(request, row_id, wanted)
        await runtime(request).commands.set_domain_overrides(await context(request), row_id, wanted)
        return Message("domain overrides saved" + RECONCILING)

    @get(
        "/api/v1/domains/{domain_id:str}/effective",
        summary="A domain's resolved settings (?explain=true: where each comes from)",
        responses=ERROR_SPECS,
    )
    async def get_domain_effective(
        self, request: Req, domain_id: PathId, explain: Explain = False, as_of: AsOfParam = None
    ) -> EffectiveDomain:
        async with reading(request, as_of) as db:
            row_id = await _guard(request, "domains", domain_id, "domain", db)
            result: EffectiveDomain = await _effective(
                request, "domain", row_id, explain, EffectiveDomain, db
            )
        return result

    @get(
        "/api/v1/mailboxes/{mailbox_id:str}/overrides",
        summary="A mailbox's overrides",
        responses=ERROR_SPECS,
    )
    async def get_mailbox_overrides(self, request: Req, mailbox_id: PathId) -> MailboxOverrides:
        row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox")
        await _effective(request, "mailbox", row_id, False, EffectiveMailbox)
        result: MailboxOverrides = await _overrides(request, "mailbox", row_id, MailboxOverrides)
        return result

    @put(
        "/api/v1/mailboxes/{mailbox_id:str}/overrides",
        summary="Set a mailbox's overrides; omitted or null fields inherit",
        responses=ERROR_SPECS,
    )
    async def put_mailbox_overrides(
        self, request: Req, mailbox_id: PathId, data: JSONBody[MailboxOverridesIn]
    ) -> Message:
        row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox")
        await runtime(request).commands.set_mailbox_overrides(
            await context(request), row_id, _core(data, MailboxOverrides)
        )
        return Message("mailbox overrides saved" + RECONCILING)

    @get(
        "/api/v1/mailboxes/{mailbox_id:str}/effective",
        summary="A mailbox's resolved settings (?explain=true: where each comes from)",
        responses=ERROR_SPECS,
    )
    async def get_mailbox_effective(
        self, request: Req, mailbox_id: PathId, explain: Explain = False, as_of: AsOfParam = None
    ) -> EffectiveMailbox:
        async with reading(request, as_of) as db:
            row_id = await _guard(request, "mailboxes", mailbox_id, "mailbox", db)
            result: EffectiveMailbox = await _effective(
                request, "mailbox", row_id, explain, EffectiveMailbox, db
            )
        return result


class WhitelistController(Controller):
    path = "/api/v1/antispam/whitelist"
    tags = ["antispam"]

    @get("/", summary="List whitelist entries", responses=ERROR_SPECS)
    async def list_entries(
        self, request: Req, page: PageParam = 1, limit: LimitParam = 50
    ) -> WhitelistList:
        _admin_only(request)
        rows, total = await queries.page(
            runtime(request).reader, "whitelist", limit, (page - 1) * limit
        )
        return WhitelistList(
            data=[WhitelistEntry(*r) for r in rows],
            meta=PageMeta(page=page, limit=limit, total=total),
        )

    @post(
        "/",
        summary="Add an entry (ip, cidr, domain, email)",
        status_code=200,
        responses=ERROR_SPECS,
    )
    async def add_entry(self, request: Req, data: JSONBody[WhitelistIn]) -> WhitelistEntry:
        _admin_only(request)
        result = await runtime(request).commands.add_whitelist(
            await context(request), data.entry_type, data.value, data.note
        )
        row = await queries.first(
            runtime(request).reader,
            "SELECT id, entry_type, value, note, created_at FROM whitelist WHERE id = ?",
            (result.seq,),
        )
        if row is None:
            raise ApiError(404, "NOT_FOUND", "whitelist entry not found", "removed meanwhile")
        return WhitelistEntry(*row)

    @delete("/{entry_id:str}", summary="Remove an entry", status_code=200, responses=ERROR_SPECS)
    async def remove_entry(self, request: Req, entry_id: PathId) -> Message:
        _admin_only(request)
        await runtime(request).commands.remove_whitelist(
            await context(request), parse_id(entry_id, "whitelist entry")
        )
        return Message("whitelist entry deleted" + RECONCILING)
