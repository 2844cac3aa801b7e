"""core.policy.decide: one behaviour each. Given a policy snapshot and the counters, when
Postfix asks about a request, then this is the action and the effects to persist."""

import calendar
from typing import Any

import pytest

from core.policy import (
    Decision,
    Malformed,
    Policy,
    Request,
    Triplet,
    Whitelist,
    client_net,
    decide,
    utc_day,
)

NOW = float(calendar.timegm((2026, 5, 2, 12, 0, 0)))
DAY = 86400.0
DELAY = 300
MAX_AGE_DAYS = 35
MAILBOX = "alice@example.test"
PLAIN = ""  # encryption_protocol when the client did not use STARTTLS


class Counters:
    """In-memory core.policy.Counters."""

    def __init__(
        self,
        sent: dict[tuple[str, str], int] | None = None,
        greylist: dict[Triplet, tuple[float, float | None]] | None = None,
    ) -> None:
        self.sent = sent or {}
        self.triplets = greylist or {}
        self.greylist_reads = 0

    def sent_today(self, user: str, day: str) -> int:
        return self.sent.get((user, day), 0)

    def greylist(self, triplet: Triplet) -> tuple[float, float | None] | None:
        self.greylist_reads += 1
        return self.triplets.get(triplet)


def policy(
    mailbox: dict[str, Any] | None = None,
    domain: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    whitelist: tuple[tuple[str, str], ...] = (),
) -> Policy:
    """example.test with the mailbox alice@ (and other.test, neither limited nor greylisted)."""
    return Policy.build(
        mailboxes={MAILBOX: mailbox or {}},
        domains={"example.test": domain or {}, "other.test": {}},
        settings={"greylist_delay_seconds": DELAY, "greylist_max_age_days": MAX_AGE_DAYS}
        | (settings or {}),
        whitelist=whitelist,
    )


def submission(state: str = "RCPT", **kw: Any) -> Request:
    values: dict[str, Any] = dict(
        protocol_state=state,
        service="submission",
        sasl_username=MAILBOX,
        sender=MAILBOX,
        recipient="friend@example.org",
        client_address="198.51.100.7",
        encryption_protocol="TLSv1.3",
        instance="a1.b2.c3.0",
    )
    return Request(**(values | kw))


def inbound(state: str = "RCPT", **kw: Any) -> Request:
    values: dict[str, Any] = dict(
        protocol_state=state,
        service="inbound",
        sender="bob@sender.example",
        recipient=MAILBOX,
        client_address="203.0.113.5",
        encryption_protocol="TLSv1.3",
        instance="d4.e5.f6.0",
    )
    return Request(**(values | kw))


def greylisting() -> Policy:
    return policy(settings={"greylist_enabled": True})


def triplet(client: str = "203.0.113.0/24", sender: str = "bob@sender.example") -> Triplet:
    return (client, sender, MAILBOX)


# ---- the request -------------------------------------------------------------------------


def test_attributes_become_a_request_with_lowercased_addresses():
    # given the attributes of a RCPT request on the submission service
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "policy_context": "submission",
        "sasl_username": "Alice@Example.TEST",
        "sender": "Alice@Example.TEST",
        "recipient": "Friend@Example.ORG",
        "client_address": "198.51.100.7",
        "recipient_count": "0",
        "size": "12345",
        "encryption_protocol": "TLSv1.3",
        "instance": "a1.b2.c3.0",
        "queue_id": "",
    }
    # when it is parsed
    req = Request.from_attrs(attrs)
    # then the service comes from policy_context, counts are ints, addresses lowercase
    assert req == submission(sender=MAILBOX, size=12345)


def test_a_count_that_is_not_a_number_is_malformed():
    with pytest.raises(Malformed, match="size"):
        Request.from_attrs({"request": "smtpd_access_policy", "size": "12x"})


def test_a_request_of_another_kind_is_malformed():
    with pytest.raises(Malformed, match="request"):
        Request.from_attrs({"protocol_state": "RCPT"})


def test_a_service_we_did_not_configure_is_dunno():
    assert decide(submission(service="other"), policy(), Counters(), NOW) == Decision(
        action="DUNNO"
    )


# ---- submission ----------------------------------------------------------------------------


def test_recipient_of_a_mailbox_within_its_limits_is_accepted_and_remembered():
    decision = decide(submission(), policy(), Counters(), NOW)
    assert decision == Decision(action="DUNNO", accepted_recipient="friend@example.org")


def test_mailbox_with_sending_disabled_is_rejected():
    decision = decide(submission(), policy(mailbox={"enabled_smtp": False}), Counters(), NOW)
    assert decision.action == "REJECT 5.7.1 Sending disabled for this mailbox"


def test_inactive_mailbox_is_rejected_like_a_disabled_one():
    decision = decide(submission(), policy(mailbox={"active": False}), Counters(), NOW)
    assert decision.action == "REJECT 5.7.1 Sending disabled for this mailbox"


def test_mailbox_requiring_tls_is_rejected_in_plaintext():
    given = policy(mailbox={"require_tls_client": True})
    decision = decide(submission(encryption_protocol=PLAIN), given, Counters(), NOW)
    assert decision.action == "REJECT 5.7.0 Must issue a STARTTLS command first"


def test_mailbox_requiring_tls_passes_over_tls():
    given = policy(mailbox={"require_tls_client": True})
    assert decide(submission(), given, Counters(), NOW).action == "DUNNO"


def test_disabled_sending_is_reported_before_missing_tls():
    given = policy(mailbox={"enabled_smtp": False, "require_tls_client": True})
    decision = decide(submission(encryption_protocol=PLAIN), given, Counters(), NOW)
    assert decision.action.startswith("REJECT 5.7.1 Sending disabled")


def test_the_nth_recipient_is_accepted():
    # given at most 3 recipients, when the 3rd arrives (2 accepted so far), then it passes
    given = policy(mailbox={"max_recipients_per_message": 3})
    assert decide(submission(recipient_count=2), given, Counters(), NOW).action == "DUNNO"


def test_the_n_plus_first_recipient_is_refused_for_another_transaction():
    # given at most 3 recipients, when the 4th arrives (3 accepted so far), then 452
    given = policy(mailbox={"max_recipients_per_message": 3})
    decision = decide(submission(recipient_count=3), given, Counters(), NOW)
    assert decision == Decision(action="452 4.5.3 Too many recipients (at most 3 per message)")


def test_message_with_n_recipients_passes_at_data():
    given = policy(mailbox={"max_recipients_per_message": 3})
    assert decide(submission("DATA", recipient_count=3), given, Counters(), NOW).action == "DUNNO"


def test_message_with_n_plus_one_recipients_is_rejected_at_end_of_message():
    given = policy(mailbox={"max_recipients_per_message": 3})
    decision = decide(submission("END-OF-MESSAGE", recipient_count=4), given, Counters(), NOW)
    assert decision == Decision(action="REJECT 5.5.3 Too many recipients (at most 3 per message)")


def test_zero_recipient_limit_means_no_limit():
    given = policy(mailbox={"max_recipients_per_message": 0})
    assert decide(submission(recipient_count=10**6), given, Counters(), NOW).action == "DUNNO"


def test_message_within_the_daily_limit_is_accepted_and_counted():
    # given 2 of 3 messages sent today, when the 3rd ends, then it passes and is counted
    counters = Counters(sent={(MAILBOX, utc_day(NOW)): 2})
    given = policy(mailbox={"max_send_per_day": 3})
    decision = decide(submission("END-OF-MESSAGE"), given, counters, NOW)
    assert decision == Decision(action="DUNNO", count_sent=True)


def test_message_past_the_daily_limit_is_rejected_and_not_counted():
    counters = Counters(sent={(MAILBOX, utc_day(NOW)): 3})
    given = policy(mailbox={"max_send_per_day": 3})
    decision = decide(submission("END-OF-MESSAGE"), given, counters, NOW)
    assert decision == Decision(
        action="REJECT 5.7.1 Daily sending limit reached (3 messages per day)"
    )


def test_daily_limit_reached_is_rejected_already_at_rcpt():
    counters = Counters(sent={(MAILBOX, utc_day(NOW)): 3})
    given = policy(mailbox={"max_send_per_day": 3})
    assert decide(submission(), given, counters, NOW).action.startswith("REJECT 5.7.1 Daily")


def test_the_daily_count_starts_again_at_midnight_utc():
    # given the limit was reached on May 2 (UTC)
    counters = Counters(sent={(MAILBOX, "2026-05-02"): 3})
    given = policy(mailbox={"max_send_per_day": 3})
    last_second = float(calendar.timegm((2026, 5, 2, 23, 59, 59)))
    # when a message ends one second later, on May 3, then it passes and counts for May 3
    decision = decide(submission("END-OF-MESSAGE"), given, counters, last_second + 1)
    assert decision == Decision(action="DUNNO", count_sent=True)
    assert utc_day(last_second + 1) == "2026-05-03"
    assert decide(submission("END-OF-MESSAGE"), given, counters, last_second).action != "DUNNO"


def test_zero_daily_limit_means_no_limit():
    counters = Counters(sent={(MAILBOX, utc_day(NOW)): 10**6})
    given = policy(mailbox={"max_send_per_day": 0})
    assert decide(submission("END-OF-MESSAGE"), given, counters, NOW).count_sent


def test_message_over_the_mailbox_size_limit_is_rejected():
    given = policy(mailbox={"message_size_limit": 1000})
    decision = decide(submission("END-OF-MESSAGE", size=1001), given, Counters(), NOW)
    assert decision == Decision(action="552 5.3.4 Message too big (limit 1000 bytes)")


def test_message_of_exactly_the_size_limit_passes():
    given = policy(mailbox={"message_size_limit": 1000})
    decision = decide(submission("END-OF-MESSAGE", size=1000), given, Counters(), NOW)
    assert decision.action == "DUNNO"


def test_mailbox_without_a_size_limit_sends_any_size():
    given = policy(mailbox={"message_size_limit": None})
    decision = decide(submission("END-OF-MESSAGE", size=10**9), given, Counters(), NOW)
    assert decision.action == "DUNNO"


def test_data_within_the_limits_is_accepted_without_counting():
    assert decide(submission("DATA"), policy(), Counters(), NOW) == Decision(action="DUNNO")


def test_unauthenticated_submission_is_left_to_postfix():
    decision = decide(submission(sasl_username=""), policy(), Counters(), NOW)
    assert decision == Decision(action="DUNNO")


def test_sasl_user_that_is_not_a_mailbox_is_left_to_postfix():
    decision = decide(submission(sasl_username="nobody@example.test"), policy(), Counters(), NOW)
    assert decision == Decision(action="DUNNO")


# ---- inbound: which recipients, TLS, size ------------------------------------------------


def test_recipient_of_a_domain_we_do_not_host_is_left_to_postfix():
    counters = Counters()
    decision = decide(inbound(recipient="x@elsewhere.example"), greylisting(), counters, NOW)
    assert decision == Decision(action="DUNNO")
    assert counters.greylist_reads == 0


def test_recipient_of_an_inactive_domain_is_left_to_postfix():
    given = policy(domain={"active": False, "require_tls_inbound": True})
    decision = decide(inbound(encryption_protocol=PLAIN), given, Counters(), NOW)
    assert decision == Decision(action="DUNNO")


def test_domain_requiring_tls_rejects_plaintext():
    given = policy(domain={"require_tls_inbound": True})
    decision = decide(inbound(encryption_protocol=PLAIN), given, Counters(), NOW)
    assert decision.action == "REJECT 5.7.1 TLS required for mail to example.test"


def test_domain_requiring_tls_accepts_tls():
    given = policy(domain={"require_tls_inbound": True})
    assert decide(inbound(), given, Counters(), NOW).action == "DUNNO"


def test_size_hint_over_the_mailbox_limit_is_rejected_at_rcpt():
    given = policy(mailbox={"message_size_limit": 1000}, domain={"message_size_limit": 5000})
    decision = decide(inbound(size=1001), given, Counters(), NOW)
    assert decision.action == "552 5.3.4 Message too big for this mailbox (limit 1000 bytes)"


def test_mailbox_without_a_limit_falls_back_to_its_domain():
    given = policy(domain={"message_size_limit": 5000})
    decision = decide(inbound(size=5001), given, Counters(), NOW)
    assert decision.action == "552 5.3.4 Message too big for this domain (limit 5000 bytes)"


def test_alias_address_takes_the_domain_limit():
    given = policy(mailbox={"message_size_limit": 1000}, domain={"message_size_limit": 5000})
    decision = decide(inbound(recipient="info@example.test", size=2000), given, Counters(), NOW)
    assert decision.action == "DUNNO"


def test_without_mailbox_or_domain_limit_the_global_one_applies():
    given = policy(settings={"message_size_limit": 9000})
    decision = decide(inbound(size=9001), given, Counters(), NOW)
    assert decision.action == "552 5.3.4 Message too big (limit 9000 bytes)"


def test_address_extension_takes_the_mailbox_limit():
    given = policy(mailbox={"message_size_limit": 1000})
    decision = decide(
        inbound(recipient="alice+news@example.test", size=1001), given, Counters(), NOW
    )
    assert decision.action.startswith("552 5.3.4 Message too big for this mailbox")


def test_rcpt_without_a_size_hint_is_not_size_checked():
    given = policy(mailbox={"message_size_limit": 1000})
    assert decide(inbound(size=0), given, Counters(), NOW).action == "DUNNO"


def test_real_size_at_end_of_message_is_checked():
    given = policy(mailbox={"message_size_limit": 1000})
    decision = decide(inbound("END-OF-MESSAGE", size=1001), given, Counters(), NOW)
    assert decision.action.startswith("552 5.3.4")


def test_several_recipients_at_end_of_message_are_checked_from_those_remembered():
    # given Postfix leaves `recipient` empty for a message with several recipients
    given = policy(mailbox={"message_size_limit": 1000})
    req = inbound(
        "END-OF-MESSAGE",
        recipient="",
        recipient_count=2,
        size=1500,
        recipients=("carol@other.test", MAILBOX),
    )
    # then the smallest limit among them decides
    assert decide(req, given, Counters(), NOW).action.startswith("552 5.3.4")


# ---- inbound: greylisting ----------------------------------------------------------------


def test_first_attempt_of_a_triplet_is_greylisted_and_recorded():
    decision = decide(inbound(), greylisting(), Counters(), NOW)
    assert decision == Decision(
        action="DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 300 seconds",
        greylist_seen=triplet(),
    )


def test_retry_within_the_delay_is_deferred_for_the_rest_of_it():
    counters = Counters(greylist={triplet(): (NOW - 100, None)})
    decision = decide(inbound(), greylisting(), counters, NOW)
    assert decision == Decision(action="DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 200 seconds")


def test_retry_after_the_delay_passes_and_is_recorded():
    counters = Counters(greylist={triplet(): (NOW - DELAY, None)})
    decision = decide(inbound(), greylisting(), counters, NOW)
    assert decision == Decision(action="DUNNO", greylist_pass=triplet(), accepted_recipient=MAILBOX)


def test_triplet_that_passed_before_passes_at_once():
    counters = Counters(greylist={triplet(): (NOW - 5 * DAY, NOW - DAY)})
    assert decide(inbound(), greylisting(), counters, NOW).greylist_pass == triplet()


def test_triplet_never_retried_within_the_max_age_counts_as_new():
    counters = Counters(greylist={triplet(): (NOW - (MAX_AGE_DAYS + 1) * DAY, None)})
    decision = decide(inbound(), greylisting(), counters, NOW)
    assert decision.action.startswith("DEFER_IF_PERMIT 4.7.1 Greylisted, try again in 300")
    assert decision.greylist_seen == triplet()


def test_triplet_unused_since_its_pass_for_the_max_age_counts_as_new():
    counters = Counters(greylist={triplet(): (NOW - 90 * DAY, NOW - (MAX_AGE_DAYS + 1) * DAY)})
    assert decide(inbound(), greylisting(), counters, NOW).greylist_seen == triplet()


def test_retry_from_another_address_of_the_same_ipv4_24_passes():
    counters = Counters(greylist={triplet("203.0.113.0/24"): (NOW - DELAY - 1, None)})
    decision = decide(inbound(client_address="203.0.113.250"), greylisting(), counters, NOW)
    assert decision.action == "DUNNO"


def test_retry_from_the_next_ipv4_24_is_a_new_triplet():
    counters = Counters(greylist={triplet("203.0.113.0/24"): (NOW - DELAY - 1, None)})
    decision = decide(inbound(client_address="203.0.114.5"), greylisting(), counters, NOW)
    assert decision.greylist_seen == triplet("203.0.114.0/24")


def test_ipv6_clients_are_grouped_by_64():
    assert (
        client_net("2001:db8:1:2:aa::1")
        == client_net("2001:db8:1:2:bb::9")
        == ("2001:db8:1:2::/64")
    )


def test_domain_greylisting_applies_when_the_global_switch_is_off():
    given = policy(domain={"greylisting_enabled": True})
    assert decide(inbound(), given, Counters(), NOW).greylist_seen == triplet()


def test_no_greylisting_when_neither_switch_is_on():
    counters = Counters()
    decision = decide(inbound(), policy(), counters, NOW)
    assert decision == Decision(action="DUNNO", accepted_recipient=MAILBOX)
    assert counters.greylist_reads == 0


def test_greylisting_happens_only_at_rcpt():
    assert decide(inbound("END-OF-MESSAGE"), greylisting(), Counters(), NOW) == Decision(
        action="DUNNO"
    )


# ---- inbound: whitelist ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "client", "sender"),
    [
        (("ip", "203.0.113.5"), "203.0.113.5", "bob@sender.example"),
        (("cidr", "203.0.112.0/23"), "203.0.113.5", "bob@sender.example"),
        (("ip", "2001:db8::5"), "2001:db8:0::5", "bob@sender.example"),
        (("email", "bob@sender.example"), "192.0.2.1", "bob@sender.example"),
        (("domain", "sender.example"), "192.0.2.1", "bob@sender.example"),
        (("domain", "sender.example"), "192.0.2.1", "bob@mail.eu.sender.example"),
    ],
)
def test_whitelisted_client_or_sender_skips_greylisting(entry, client, sender):
    given = policy(settings={"greylist_enabled": True}, whitelist=(entry,))
    counters = Counters()
    decision = decide(inbound(client_address=client, sender=sender), given, counters, NOW)
    assert decision == Decision(action="DUNNO", accepted_recipient=MAILBOX)
    assert counters.greylist_reads == 0


@pytest.mark.parametrize(
    ("entry", "client", "sender"),
    [
        (("ip", "203.0.113.6"), "203.0.113.5", "bob@sender.example"),
        (("cidr", "203.0.112.0/24"), "203.0.113.5", "bob@sender.example"),
        (("email", "eve@sender.example"), "192.0.2.1", "bob@sender.example"),
        (("domain", "sender.example"), "192.0.2.1", "bob@othersender.example"),
        (("domain", "sender.example"), "192.0.2.1", ""),
    ],
)
def test_entries_that_do_not_match_leave_greylisting_on(entry, client, sender):
    given = policy(settings={"greylist_enabled": True}, whitelist=(entry,))
    decision = decide(inbound(client_address=client, sender=sender), given, Counters(), NOW)
    assert decision.action.startswith("DEFER_IF_PERMIT")


def test_whitelisted_sender_is_still_size_checked():
    given = policy(mailbox={"message_size_limit": 1000}, whitelist=(("domain", "sender.example"),))
    assert decide(inbound(size=1001), given, Counters(), NOW).action.startswith("552 5.3.4")


def test_whitelisted_client_is_still_tls_checked():
    given = policy(domain={"require_tls_inbound": True}, whitelist=(("ip", "203.0.113.5"),))
    decision = decide(inbound(encryption_protocol=PLAIN), given, Counters(), NOW)
    assert decision.action.startswith("REJECT 5.7.1 TLS required")


def test_unparsable_whitelist_entries_are_skipped():
    listed = Whitelist.from_entries([("ip", "not-an-ip"), ("cidr", "300.1.0.0/16"), ("x", "y")])
    assert listed == Whitelist()
