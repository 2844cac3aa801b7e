"""Request and response bodies of the seed API. Inputs forbid unknown fields."""

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
)

NonNegative = Annotated[int, Meta(ge=0, le=2**62)]


class Message(msgspec.Struct, frozen=True):
    message: str


class PageMeta(msgspec.Struct, frozen=True):
    page: int
    limit: int
    total: int


# ---- domains -----------------------------------------------------------------------------


class DomainIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(max_length=255, description="DNS domain name, e.g. example.com")]
    outgoing_ip: Annotated[
        str, Meta(max_length=64, description='Source IP for outbound mail, "" or "auto"')
    ] = ""


class DomainPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    active: bool | None = None
    outgoing_ip: Annotated[str, Meta(max_length=64)] | None = None


class Domain(msgspec.Struct, frozen=True):
    id: int
    name: str
    active: bool
    outgoing_ip: str
    created_at: str


class DomainList(msgspec.Struct, frozen=True):
    data: list[Domain]
    meta: PageMeta


# ---- mailboxes ---------------------------------------------------------------------------


class MailboxIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain_id: Annotated[int, Meta(ge=1)]
    username: Annotated[str, Meta(max_length=320)]
    password: Annotated[str, Meta(max_length=1024)]
    quota: NonNegative | None = None


class MailboxPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    active: bool | None = None
    quota: NonNegative | None = None


class PasswordIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    password: Annotated[str, Meta(max_length=1024)]


class Mailbox(msgspec.Struct, frozen=True):
    id: int
    domain_id: int
    username: str
    quota: int
    active: bool
    created_at: str


class MailboxList(msgspec.Struct, frozen=True):
    data: list[Mailbox]
    meta: PageMeta


# ---- aliases -----------------------------------------------------------------------------


class AliasIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source: Annotated[str, Meta(max_length=320, description="local@domain, or @domain")]
    destination: Annotated[str, Meta(max_length=8192, description="comma-separated addresses")]


class AliasPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    destination: Annotated[str, Meta(max_length=8192)]


class Alias(msgspec.Struct, frozen=True):
    id: int
    domain_id: int
    source: str
    destination: str
    created_at: str


class AliasList(msgspec.Struct, frozen=True):
    data: list[Alias]
    meta: PageMeta


# ---- auth and system ---------------------------------------------------------------------


class LoginIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: Annotated[str, Meta(max_length=256)]
    password: Annotated[str, Meta(max_length=1024)]


class Token(msgspec.Struct, frozen=True):
    token: str
    token_type: str
    expires_at: str


class VerifyIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token: str | None = None


class Verified(msgspec.Struct, frozen=True):
    valid: bool
    username: str
    expires_at: str


class Check(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    message: str = ""
    free_space: str = ""


class Health(msgspec.Struct, frozen=True):
    status: str
    version: str
    build: str
    checks: dict[str, Check]


class About(msgspec.Struct, frozen=True):
    app: str
    version: str
    build: str
    copyright: str
    website: str
    hostname: str
    os: str
    postfix: str
    dovecot: str


# ---- tokens and security -----------------------------------------------------------------


class TokenIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    scope: Annotated[str, Meta(description="read, write or admin")]
    domains: list[Annotated[str, Meta(max_length=255)]] | None = None
    expires_at: datetime | None = None


class ManagedToken(msgspec.Struct, frozen=True, omit_defaults=False):
    id: int
    name: str
    scope: str
    domains: list[str]
    hint: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class ManagedTokenList(msgspec.Struct, frozen=True):
    data: list[ManagedToken]
    meta: PageMeta


class TokenSecret(msgspec.Struct, frozen=True):
    """The token with its secret: shown once, at creation or rotation."""

    id: int
    name: str
    scope: str
    domains: list[str]
    hint: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    token: str


class SecurityIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rate_limit_login: Annotated[int, Meta(ge=0, le=10**9)]
    rate_limit_api: Annotated[int, Meta(ge=0, le=10**9)]
    login_allowlist: list[str] = msgspec.field(default_factory=list)
    api_key_allowlist: list[str] = msgspec.field(default_factory=list)
    trusted_proxies: list[str] = msgspec.field(default_factory=list)


class SecurityOut(msgspec.Struct, frozen=True):
    rate_limit_login: int
    rate_limit_api: int
    login_allowlist: list[str]
    api_key_allowlist: list[str]
    trusted_proxies: list[str]


class AuthCounts(msgspec.Struct, frozen=True):
    failed_logins: int
    refused_keys: int
    refused_tokens: int
    rate_limited: int
    ip_restricted: int


class SecurityStats(msgspec.Struct, frozen=True):
    since: str
    totals: AuthCounts
    by_ip: dict[str, AuthCounts]


# ---- configuration tiers, overrides, effective, anti-spam ---------------------------------


class GlobalConfigIn(GlobalConfig, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """PUT replaces the row in full: omitted fields take their defaults. updated_at, as a GET
    returns it, is accepted and ignored."""

    updated_at: str | None = None


class DomainDefaultsIn(DomainDefaults, forbid_unknown_fields=True, frozen=True, kw_only=True):
    updated_at: str | None = None


class MailboxDefaultsIn(MailboxDefaults, forbid_unknown_fields=True, frozen=True, kw_only=True):
    updated_at: str | None = None


class GlobalConfigOut(GlobalConfig, frozen=True, kw_only=True):
    updated_at: str | None = None


class DomainDefaultsOut(DomainDefaults, frozen=True, kw_only=True):
    updated_at: str | None = None


class MailboxDefaultsOut(MailboxDefaults, frozen=True, kw_only=True):
    updated_at: str | None = None


class DomainOverridesIn(DomainOverrides, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Omitted or null fields revert to inheritance."""


class MailboxOverridesIn(MailboxOverrides, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Omitted or null fields revert to inheritance."""


class AntispamIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dnsbl_enabled: bool
    dnsbl_zones: str
    greylist_enabled: bool
    greylist_delay_seconds: int
    greylist_max_age_days: int


class Antispam(msgspec.Struct, frozen=True, kw_only=True):
    dnsbl_enabled: bool
    dnsbl_zones: str
    greylist_enabled: bool
    greylist_delay_seconds: int
    greylist_max_age_days: int


class Provenance(msgspec.Struct, frozen=True):
    """Which tier supplied a value, and the event that set it there (seq 0: built-in)."""

    tier: str
    seq: int
    at: str | None
    actor: str | None


class EffectiveDomain(msgspec.Struct, kw_only=True):
    domain_id: int
    domain_name: str
    outgoing_ip: str
    quota_total_bytes: int
    max_mailboxes: int
    max_aliases: int
    message_size_limit: int
    dkim_enabled: bool
    spf_policy: str
    dmarc_policy: str
    spam_threshold: float
    spam_action: str
    clamav_action: str
    greylisting_enabled: bool
    require_tls_inbound: bool
    active: bool
    explain: dict[str, Provenance] | msgspec.UnsetType = msgspec.UNSET


class EffectiveMailbox(msgspec.Struct, kw_only=True):
    mailbox_id: int
    mailbox_username: str
    domain_id: int
    domain_name: str
    quota_bytes: int
    enabled_smtp: bool
    enabled_imap: bool
    enabled_pop3: bool
    max_send_per_day: int
    max_recipients_per_message: int
    message_size_limit: int
    spam_threshold: float
    spam_action: str
    auto_junk_threshold: float
    vacation_enabled: bool
    vacation_message: str
    forward_to: str
    forward_keep_copy: bool
    require_tls_client: bool
    clamav_action: str
    greylisting_enabled: bool
    require_tls_inbound: bool
    dkim_enabled: bool
    spf_policy: str
    dmarc_policy: str
    mailbox_active: bool
    domain_active: bool
    explain: dict[str, Provenance] | msgspec.UnsetType = msgspec.UNSET


class WhitelistIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    entry_type: str
    value: Annotated[str, Meta(max_length=320)]
    note: Annotated[str, Meta(max_length=500)] = ""


class WhitelistEntry(msgspec.Struct, frozen=True):
    id: int
    entry_type: str
    value: str
    note: str
    created_at: str


class WhitelistList(msgspec.Struct, frozen=True):
    data: list[WhitelistEntry]
    meta: PageMeta
