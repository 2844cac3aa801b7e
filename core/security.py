"""Security settings: per-IP rate limits, IP allow-lists, trusted proxies."""

import ipaddress

import msgspec

from core.errors import ValidationFailed
from core.events import Event, SecuritySettingsChanged

MAX_LIMIT = 10**9


class SecuritySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Limits are requests per minute per source IP; 0 turns a limit off. An empty allow-list
    allows every address."""

    rate_limit_login: int = 5
    rate_limit_api: int = 60
    login_allowlist: tuple[str, ...] = ()
    api_key_allowlist: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()


class ChangeSecuritySettings(msgspec.Struct, frozen=True, kw_only=True):
    settings: SecuritySettings


def normalise_networks(values: tuple[str, ...], field: str) -> tuple[str, ...]:
    """CIDRs (a bare address is a /32 or /128) in canonical form, duplicates dropped."""
    out: list[str] = []
    for raw in values:
        try:
            net = str(ipaddress.ip_network(raw.strip(), strict=False))
        except ValueError:
            raise ValidationFailed(
                field, f"{field}: {raw!r} is not an IP address or CIDR"
            ) from None
        if net not in out:
            out.append(net)
    return tuple(out)


def decide(cmd: ChangeSecuritySettings, current: SecuritySettings) -> list[Event]:
    s = cmd.settings
    for field, value in (
        ("rate_limit_login", s.rate_limit_login),
        ("rate_limit_api", s.rate_limit_api),
    ):
        if not 0 <= value <= MAX_LIMIT:
            raise ValidationFailed(field, f"{field} must be between 0 and {MAX_LIMIT}")
    wanted = SecuritySettings(
        rate_limit_login=s.rate_limit_login,
        rate_limit_api=s.rate_limit_api,
        login_allowlist=normalise_networks(s.login_allowlist, "login_allowlist"),
        api_key_allowlist=normalise_networks(s.api_key_allowlist, "api_key_allowlist"),
        trusted_proxies=normalise_networks(s.trusted_proxies, "trusted_proxies"),
    )
    if wanted == current:
        return []
    return [SecuritySettingsChanged(**msgspec.structs.asdict(wanted))]


def from_event(event: SecuritySettingsChanged) -> SecuritySettings:
    return SecuritySettings(
        rate_limit_login=event.rate_limit_login,
        rate_limit_api=event.rate_limit_api,
        login_allowlist=event.login_allowlist,
        api_key_allowlist=event.api_key_allowlist,
        trusted_proxies=event.trusted_proxies,
    )


def evolve(state: SecuritySettings, event: Event) -> SecuritySettings:
    return from_event(event) if isinstance(event, SecuritySettingsChanged) else state
