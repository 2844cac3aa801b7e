"""Deciders for the configuration tiers and the per-domain / per-mailbox overrides."""

import msgspec

from core import events
from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    Tier,
    validate,
)
from core.errors import NotFound

# ---- deciders ----------------------------------------------------------------------------


class TierState(msgspec.Struct, frozen=True, kw_only=True):
    """The current row of a tier (its defaults before it was ever set)."""

    current: Tier


class SetTier(msgspec.Struct, frozen=True, kw_only=True):
    wanted: Tier


def decide_tier(cmd: SetTier, state: TierState) -> list[events.Event]:
    """PUT of a whole tier: validated; setting what is already there decides nothing."""
    wanted = validate(cmd.wanted)
    if wanted == state.current:
        return []
    match wanted:
        case GlobalConfig():
            return [events.GlobalConfigSet(config=wanted)]
        case DomainDefaults():
            return [events.DomainDefaultsSet(config=wanted)]
        case MailboxDefaults():
            return [events.MailboxDefaultsSet(config=wanted)]
    raise AssertionError(wanted)


class OverridesState(msgspec.Struct, frozen=True, kw_only=True):
    """The overrides of one existing domain or mailbox (id None: it does not exist)."""

    id: int | None = None
    key: str = ""  # domain name or mailbox address
    current: DomainOverrides | MailboxOverrides = DomainOverrides()


class SetOverrides(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    wanted: DomainOverrides | MailboxOverrides


def decide_overrides(cmd: SetOverrides, state: OverridesState) -> list[events.Event]:
    what = "domain" if isinstance(cmd.wanted, DomainOverrides) else "mailbox"
    if state.id is None or state.id != cmd.id:
        raise NotFound(f"{what} not found", f"no {what} with id {cmd.id}")
    wanted = validate(cmd.wanted)
    if wanted == state.current:
        return []
    if isinstance(wanted, DomainOverrides):
        return [events.DomainOverridesSet(id=cmd.id, name=state.key, overrides=wanted)]
    assert isinstance(wanted, MailboxOverrides)
    return [events.MailboxOverridesSet(id=cmd.id, address=state.key, overrides=wanted)]
