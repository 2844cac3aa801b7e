"""Configuration tiers and their resolution.

    global_config -> domain_defaults -> domain overrides -> mailbox_defaults -> mailbox overrides

The narrowest non-null value wins. Resolution is pure: it takes the tiers with the sequence of
the event that last set each one, and returns the values and, per field, which tier supplied it
and that event's sequence (provenance for `?explain=true`).

Quota rule: a mailbox's own `quota` (set at creation or by PATCH) is the narrowest tier for
`quota_bytes`; when it was never given (null) the mailbox inherits `mailbox_defaults.quota_bytes`.
0 means unlimited at any tier. The mailbox object's `quota` shows the effective value.
"""

import ipaddress
import re
from typing import Any, Literal

import msgspec

from core.errors import ValidationFailed
from core.validation import check_domain_name

SpfPolicy = Literal["-all", "~all", "?all"]
DmarcPolicy = Literal["none", "quarantine", "reject"]
Action = Literal["tag", "quarantine", "reject"]
CipherPolicy = Literal["medium", "high"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


class GlobalConfig(msgspec.Struct, frozen=True, kw_only=True):
    message_size_limit: int = 26214400
    max_smtpd_connections: int = 100
    max_smtpd_rate_per_min: int = 600
    relay_networks: str = "127.0.0.0/8 [::1]/128"
    tls_min_version: TlsVersion = "TLSv1.2"
    cipher_policy: CipherPolicy = "high"
    spam_remote_host: str = ""
    spam_remote_port: int = 783
    spam_remote_network: str = ""
    dnsbl_enabled: bool = False
    dnsbl_zones: str = ""
    greylist_enabled: bool = False
    greylist_delay_seconds: int = 300
    greylist_max_age_days: int = 35


class DomainDefaults(msgspec.Struct, frozen=True, kw_only=True):
    quota_total_bytes: int = 10737418240
    max_mailboxes: int = 100
    max_aliases: int = 100
    message_size_limit: int | None = None
    dkim_enabled: bool = True
    spf_policy: SpfPolicy = "~all"
    dmarc_policy: DmarcPolicy = "none"
    spam_threshold: float = 5.0
    spam_action: Action = "tag"
    clamav_action: Action = "quarantine"
    greylisting_enabled: bool = False
    require_tls_inbound: bool = False


class MailboxDefaults(msgspec.Struct, frozen=True, kw_only=True):
    quota_bytes: int = 1073741824
    enabled_smtp: bool = True
    enabled_imap: bool = True
    enabled_pop3: bool = False
    max_send_per_day: int = 1000
    max_recipients_per_message: int = 100
    message_size_limit: int | None = None
    spam_threshold: float | None = None
    spam_action: Action | None = None
    auto_junk_threshold: float = 7.0
    vacation_enabled: bool = False
    vacation_message: str = ""
    forward_to: str = ""
    forward_keep_copy: bool = True
    require_tls_client: bool = False


class DomainOverrides(msgspec.Struct, frozen=True, kw_only=True):
    quota_total_bytes: int | None = None
    max_mailboxes: int | None = None
    max_aliases: int | None = None
    message_size_limit: int | None = None
    dkim_enabled: bool | None = None
    spf_policy: SpfPolicy | None = None
    dmarc_policy: DmarcPolicy | None = None
    spam_threshold: float | None = None
    spam_action: Action | None = None
    clamav_action: Action | None = None
    greylisting_enabled: bool | None = None
    require_tls_inbound: bool | None = None


class MailboxOverrides(msgspec.Struct, frozen=True, kw_only=True):
    enabled_smtp: bool | None = None
    enabled_imap: bool | None = None
    enabled_pop3: bool | None = None
    max_send_per_day: int | None = None
    max_recipients_per_message: int | None = None
    message_size_limit: int | None = None
    spam_threshold: float | None = None
    spam_action: Action | None = None
    auto_junk_threshold: float | None = None
    vacation_enabled: bool | None = None
    vacation_message: str | None = None
    forward_to: str | None = None
    forward_keep_copy: bool | None = None
    require_tls_client: bool | None = None


Tier = GlobalConfig | DomainDefaults | MailboxDefaults | DomainOverrides | MailboxOverrides

# The three tiers by the name they are stored (and addressed) under.
TIER_TYPES: dict[str, type[Tier]] = {
    "global": GlobalConfig,
    "domain_defaults": DomainDefaults,
    "mailbox_defaults": MailboxDefaults,
}

ANTISPAM_FIELDS = (
    "dnsbl_enabled",
    "dnsbl_zones",
    "greylist_enabled",
    "greylist_delay_seconds",
    "greylist_max_age_days",
)

# ---- validation --------------------------------------------------------------------------

_NON_NEGATIVE = {
    "message_size_limit",
    "max_smtpd_connections",
    "max_smtpd_rate_per_min",
    "spam_remote_port",
    "greylist_delay_seconds",
    "greylist_max_age_days",
    "quota_total_bytes",
    "max_mailboxes",
    "max_aliases",
    "quota_bytes",
    "max_send_per_day",
    "max_recipients_per_message",
    "spam_threshold",
    "auto_junk_threshold",
}
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
_ADDRESS = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")


def validate(tier: Tier) -> Tier:
    """Field rules of every tier; raises ValidationFailed naming the field."""
    for field in tier.__struct_fields__:
        value = getattr(tier, field)
        if value is None:
            continue
        if field in _NON_NEGATIVE and not isinstance(value, bool) and value < 0:
            raise ValidationFailed(field, f"{field} must be non-negative")
    if isinstance(tier, GlobalConfig):
        if tier.spam_remote_port > 65535:
            raise ValidationFailed("spam_remote_port", "spam_remote_port must be at most 65535")
        _check_networks(tier.relay_networks, "relay_networks")
        if tier.spam_remote_network:
            _check_networks(tier.spam_remote_network, "spam_remote_network")
        if tier.spam_remote_host and not _HOST.match(tier.spam_remote_host):
            raise ValidationFailed("spam_remote_host", "spam_remote_host must be a host name or IP")
        for zone in tier.dnsbl_zones.split():
            check_domain_name(zone.lower().rstrip("."), "dnsbl_zones")
    if isinstance(tier, MailboxDefaults | MailboxOverrides) and tier.forward_to:
        for addr in tier.forward_to.split(","):
            if not _ADDRESS.match(addr.strip()):
                raise ValidationFailed("forward_to", "forward_to must be an address (or a list)")
    return tier


def _check_networks(value: str, field: str) -> None:
    for net in value.split():
        try:
            ipaddress.ip_network(net.strip("[]").replace("]/", "/"), strict=False)
        except ValueError:
            raise ValidationFailed(field, f"{field}: {net!r} is not a CIDR") from None


# ---- resolution --------------------------------------------------------------------------


class Source(msgspec.Struct, frozen=True, array_like=True):
    """Where a value came from: the tier and the sequence of the event that set it there."""

    tier: str
    seq: int


Resolved = tuple[dict[str, Any], dict[str, Source]]

DOMAIN_FIELDS = tuple(DomainOverrides.__struct_fields__)
MAILBOX_FIELDS = tuple(MailboxOverrides.__struct_fields__)
# Domain-level settings a mailbox view shows from its domain.
MAILBOX_FROM_DOMAIN = (
    "clamav_action",
    "greylisting_enabled",
    "require_tls_inbound",
    "dkim_enabled",
    "spf_policy",
    "dmarc_policy",
)
# Mailbox settings that fall through to the domain (and, for the size, to global).
CASCADED = ("message_size_limit", "spam_threshold", "spam_action")


def _pick(field: str, tiers: list[tuple[str, Any, int]]) -> tuple[Any, Source]:
    """The first non-null value, narrowest tier first."""
    for name, tier, seq in tiers:
        value = getattr(tier, field, None)
        if value is not None:
            return value, Source(name, seq)
    return None, Source("unset", 0)


def resolve_domain(
    glob: tuple[GlobalConfig, int],
    defaults: tuple[DomainDefaults, int],
    overrides: tuple[DomainOverrides, int],
) -> Resolved:
    tiers = [
        ("domain_override", overrides[0], overrides[1]),
        ("domain_defaults", defaults[0], defaults[1]),
        ("global", glob[0], glob[1]),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for field in DOMAIN_FIELDS:
        values[field], sources[field] = _pick(field, tiers)
    return values, sources


def resolve_mailbox(
    domain: Resolved,
    defaults: tuple[MailboxDefaults, int],
    overrides: tuple[MailboxOverrides, int],
    own_quota: tuple[int | None, int],
) -> Resolved:
    dvalues, dsources = domain
    tiers = [
        ("mailbox_override", overrides[0], overrides[1]),
        ("mailbox_defaults", defaults[0], defaults[1]),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    if own_quota[0] is not None:
        values["quota_bytes"], sources["quota_bytes"] = (
            own_quota[0],
            Source("mailbox", own_quota[1]),
        )
    else:
        values["quota_bytes"], sources["quota_bytes"] = _pick("quota_bytes", tiers[1:])
    for field in MAILBOX_FIELDS:
        value, source = _pick(field, tiers)
        if value is None and field in CASCADED:
            value, source = dvalues[field], dsources[field]
        values[field], sources[field] = value, source
    for field in MAILBOX_FROM_DOMAIN:
        values[field], sources[field] = dvalues[field], dsources[field]
    return values, sources
