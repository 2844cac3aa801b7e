"""Tier resolution over the whole lattice: the narrowest non-null value always wins."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import (
    CASCADED,
    DOMAIN_FIELDS,
    MAILBOX_FIELDS,
    MAILBOX_FROM_DOMAIN,
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    resolve_domain,
    resolve_mailbox,
    validate,
)
from core.errors import ValidationFailed
from core.events import DomainOverridesSet, GlobalConfigSet
from core.tiers import (
    OverridesState,
    SetOverrides,
    SetTier,
    TierState,
    decide_overrides,
    decide_tier,
)

sizes = st.integers(min_value=0, max_value=2**40)
maybe_size = st.none() | sizes
actions = st.sampled_from(["tag", "quarantine", "reject"])
thresholds = st.floats(min_value=0, max_value=50, allow_nan=False)

domain_overrides = st.builds(
    DomainOverrides,
    quota_total_bytes=maybe_size,
    max_mailboxes=st.none() | st.integers(0, 1000),
    message_size_limit=maybe_size,
    dkim_enabled=st.none() | st.booleans(),
    spam_threshold=st.none() | thresholds,
    spam_action=st.none() | actions,
    dmarc_policy=st.none() | st.sampled_from(["none", "quarantine", "reject"]),
)
domain_defaults = st.builds(
    DomainDefaults,
    message_size_limit=maybe_size,
    spam_threshold=thresholds,
    spam_action=actions,
    max_aliases=st.integers(0, 1000),
)
mailbox_defaults = st.builds(
    MailboxDefaults,
    quota_bytes=sizes,
    message_size_limit=maybe_size,
    spam_threshold=st.none() | thresholds,
    spam_action=st.none() | actions,
    max_send_per_day=st.integers(0, 10**6),
)
mailbox_overrides = st.builds(
    MailboxOverrides,
    message_size_limit=maybe_size,
    spam_threshold=st.none() | thresholds,
    spam_action=st.none() | actions,
    enabled_pop3=st.none() | st.booleans(),
    max_send_per_day=st.none() | st.integers(0, 10**6),
)
globals_ = st.builds(GlobalConfig, message_size_limit=sizes)


def narrowest(field: str, *tiers: object) -> object:
    for tier in tiers:
        value = getattr(tier, field, None)
        if value is not None:
            return value
    return None


@given(globals_, domain_defaults, domain_overrides)
def test_domain_value_is_the_narrowest_non_null(glob, dd, do):
    values, _sources = resolve_domain((glob, 1), (dd, 2), (do, 3))
    for field in DOMAIN_FIELDS:
        assert values[field] == narrowest(field, do, dd, glob)
    assert values["message_size_limit"] is not None


@given(
    globals_,
    domain_defaults,
    domain_overrides,
    mailbox_defaults,
    mailbox_overrides,
    st.none() | sizes,
)
def test_mailbox_value_is_the_narrowest_non_null(glob, dd, do, md, mo, own_quota):
    domain = resolve_domain((glob, 1), (dd, 2), (do, 3))
    values, _sources = resolve_mailbox(domain, (md, 4), (mo, 5), (own_quota, 6))
    for field in MAILBOX_FIELDS:
        expected = narrowest(field, mo, md)
        if expected is None and field in CASCADED:
            expected = narrowest(field, do, dd, glob)
        assert values[field] == expected
    for field in MAILBOX_FROM_DOMAIN:
        assert values[field] == domain[0][field]
    assert values["quota_bytes"] == (md.quota_bytes if own_quota is None else own_quota)


@given(globals_, domain_defaults, domain_overrides)
def test_every_domain_value_names_the_tier_and_event_that_set_it(glob, dd, do):
    values, sources = resolve_domain((glob, 1), (dd, 2), (do, 3))
    seq_of = {"domain_override": 3, "domain_defaults": 2, "global": 1}
    for field in DOMAIN_FIELDS:
        tier = {"domain_override": do, "domain_defaults": dd, "global": glob}[sources[field].tier]
        assert getattr(tier, field) == values[field]
        assert sources[field].seq == seq_of[sources[field].tier]


def test_size_limit_null_everywhere_means_the_global_value():
    domain = resolve_domain(
        (GlobalConfig(message_size_limit=123), 1), (DomainDefaults(), 0), (DomainOverrides(), 0)
    )
    values, sources = resolve_mailbox(
        domain, (MailboxDefaults(), 0), (MailboxOverrides(), 0), (None, 0)
    )
    assert values["message_size_limit"] == 123 and sources["message_size_limit"].tier == "global"


@pytest.mark.parametrize(
    "tier, field",
    [
        (GlobalConfig(message_size_limit=-1), "message_size_limit"),
        (GlobalConfig(relay_networks="10.0.0.0/33"), "relay_networks"),
        (GlobalConfig(dnsbl_zones="zen.spamhaus.org bad_zone"), "dnsbl_zones"),
        (GlobalConfig(spam_remote_port=70000), "spam_remote_port"),
        (DomainDefaults(max_mailboxes=-5), "max_mailboxes"),
        (MailboxDefaults(forward_to="not-an-address"), "forward_to"),
        (MailboxOverrides(spam_threshold=-1.0), "spam_threshold"),
    ],
)
def test_invalid_field_is_named(tier, field):
    with pytest.raises(ValidationFailed) as info:
        validate(tier)
    assert info.value.field == field


def test_default_relay_networks_are_valid():
    assert validate(GlobalConfig()) == GlobalConfig()


def test_setting_a_tier_records_the_whole_row():
    wanted = GlobalConfig(greylist_enabled=True)
    assert decide_tier(SetTier(wanted=wanted), TierState(current=GlobalConfig())) == [
        GlobalConfigSet(config=wanted)
    ]


def test_setting_the_same_tier_decides_nothing():
    assert decide_tier(SetTier(wanted=GlobalConfig()), TierState(current=GlobalConfig())) == []


def test_overrides_name_their_domain():
    wanted = DomainOverrides(dmarc_policy="reject")
    state = OverridesState(id=4, key="example.com", current=DomainOverrides())
    assert decide_overrides(SetOverrides(id=4, wanted=wanted), state) == [
        DomainOverridesSet(id=4, name="example.com", overrides=wanted)
    ]


def test_enum_values_are_checked_at_decode():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"spf_policy": "+all"}, DomainOverrides)
