"""Domain caps: max_mailboxes, max_aliases and quota_total_bytes (0 = no cap).

The same rules run twice: when a command is decided (a clear 409 at once) and in the
projector, which applies the log in order and leaves out a creation or quota change that a
concurrent request made impossible, so the caps hold even under concurrent writers.
"""

import msgspec

from core.errors import LimitExceeded


class DomainUsage(msgspec.Struct, frozen=True, kw_only=True):
    max_mailboxes: int
    max_aliases: int
    quota_total_bytes: int
    mailboxes: int
    aliases: int
    quota_sum: int  # effective quotas of the domain's mailboxes


def mailbox_refusal(usage: DomainUsage, quota: int, replacing: int | None = None) -> str:
    """Why one more mailbox (or one mailbox's quota changing from `replacing`) does not fit;
    empty when it does. quota_total_bytes caps the sum of the finite quotas: an unlimited
    mailbox (quota 0, which the seed allows anywhere) adds nothing to it."""
    if replacing is None and usage.max_mailboxes and usage.mailboxes >= usage.max_mailboxes:
        return f"the domain already has its maximum of {usage.max_mailboxes} mailboxes"
    if usage.quota_total_bytes and quota:
        total = usage.quota_sum - (replacing or 0) + quota
        if total > usage.quota_total_bytes:
            return (
                f"mailbox quotas would add up to {total} bytes, over the domain's "
                f"quota_total_bytes of {usage.quota_total_bytes}"
            )
    return ""


def alias_refusal(usage: DomainUsage) -> str:
    if usage.max_aliases and usage.aliases >= usage.max_aliases:
        return f"the domain already has its maximum of {usage.max_aliases} aliases"
    return ""


def check(reason: str) -> None:
    if reason:
        raise LimitExceeded("domain limit exceeded", reason)
