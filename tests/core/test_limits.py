"""Domain caps."""

from core.limits import DomainUsage, alias_refusal, mailbox_refusal


def usage(**kw) -> DomainUsage:
    base = dict(
        max_mailboxes=2, max_aliases=1, quota_total_bytes=100, mailboxes=0, aliases=0, quota_sum=0
    )
    return DomainUsage(**{**base, **kw})


def test_mailbox_fits_under_every_cap():
    assert mailbox_refusal(usage(), 50) == ""


def test_mailbox_over_the_count_is_refused():
    assert "maximum of 2 mailboxes" in mailbox_refusal(usage(mailboxes=2), 1)


def test_mailbox_over_the_total_quota_is_refused():
    assert "quota_total_bytes" in mailbox_refusal(usage(quota_sum=60), 50)


def test_unlimited_mailbox_adds_nothing_to_the_total():
    assert mailbox_refusal(usage(quota_sum=100), 0) == ""


def test_quota_change_counts_only_the_difference():
    assert mailbox_refusal(usage(mailboxes=2, quota_sum=90), 60, replacing=50) == ""


def test_zero_caps_mean_no_cap():
    assert mailbox_refusal(usage(max_mailboxes=0, quota_total_bytes=0, mailboxes=9), 10**12) == ""


def test_alias_over_the_count_is_refused():
    assert "maximum of 1 aliases" in alias_refusal(usage(aliases=1))
