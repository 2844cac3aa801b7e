"""core.spam: one behaviour each. Given a recipient's effective settings and what the scanners
found, when the filter decides, then this is the action and the headers its copy carries."""

from core.spam import (
    SPAM_REPLY,
    RecipientPolicy,
    decide,
    decide_message,
    format_score,
    headers_for,
    recipient_policy,
    strictest,
)

GTUBE_SCORE = 1000.0
VIRUS = "Eicar-Test-Signature.UNOFFICIAL"


def policy(
    threshold: float = 5.0, spam: str = "tag", clamav: str = "quarantine"
) -> RecipientPolicy:
    return recipient_policy(
        {"spam_threshold": threshold, "spam_action": spam, "clamav_action": clamav}
    )


# ---- which settings apply ------------------------------------------------------------------


def test_the_mailbox_threshold_wins_over_the_domain_threshold():
    # given a domain at 5.0 and a mailbox at 2.0
    domain = {"spam_threshold": 5.0, "spam_action": "tag", "clamav_action": "reject"}
    # when the recipient's policy is built
    result = recipient_policy(domain, {"spam_threshold": 2.0, "spam_action": "tag"})
    # then the mailbox's threshold applies
    assert result.spam_threshold == 2.0


def test_a_null_mailbox_value_inherits_the_domain_value():
    domain = {"spam_threshold": 6.5, "spam_action": "reject", "clamav_action": "tag"}
    result = recipient_policy(domain, {"spam_threshold": None, "spam_action": None})
    assert (result.spam_threshold, result.spam_action) == (6.5, "reject")


def test_the_mailbox_spam_action_wins_over_the_domain_action():
    domain = {"spam_threshold": 5.0, "spam_action": "tag", "clamav_action": "tag"}
    assert recipient_policy(domain, {"spam_action": "quarantine"}).spam_action == "quarantine"


def test_the_clamav_action_is_the_domains():
    # given a mailbox view that (wrongly) carries another clamav_action
    result = recipient_policy({"clamav_action": "reject"}, {"clamav_action": "tag"})
    # then the domain's setting decides
    assert result.clamav_action == "reject"


def test_a_recipient_without_a_mailbox_gets_the_domain_settings():
    domain = {"spam_threshold": 3.0, "spam_action": "quarantine", "clamav_action": "reject"}
    assert recipient_policy(domain) == RecipientPolicy(
        spam_threshold=3.0, spam_action="quarantine", clamav_action="reject"
    )


def test_missing_settings_fall_back_to_the_domain_defaults():
    assert recipient_policy({}) == RecipientPolicy(
        spam_threshold=5.0, spam_action="tag", clamav_action="quarantine"
    )


def test_an_unknown_action_counts_as_unset():
    result = recipient_policy({"spam_action": "tag"}, {"spam_action": "drop"})
    assert result.spam_action == "tag"


def test_a_threshold_that_is_not_a_number_counts_as_unset():
    result = recipient_policy({"spam_threshold": 4.0}, {"spam_threshold": True})
    assert result.spam_threshold == 4.0


# ---- one recipient's verdict ---------------------------------------------------------------


def test_a_virus_gets_the_clamav_action_whatever_the_score():
    # given a virus in a message that scores low, for a domain that rejects viruses
    verdict = decide(policy(clamav="reject"), 0.1, VIRUS)
    # then the message is rejected for the virus
    assert (verdict.action, verdict.reason) == ("reject", "virus")


def test_a_virus_wins_over_the_spam_action():
    verdict = decide(policy(spam="reject", clamav="tag"), GTUBE_SCORE, VIRUS)
    assert (verdict.action, verdict.reason) == ("tag", "virus")


def test_a_score_at_the_threshold_is_spam():
    verdict = decide(policy(threshold=5.0, spam="quarantine"), 5.0, None)
    assert (verdict.action, verdict.reason, verdict.spam) == ("quarantine", "spam", True)


def test_a_score_below_the_threshold_is_delivered():
    verdict = decide(policy(threshold=5.0, spam="reject"), 4.9, None)
    assert (verdict.action, verdict.reason, verdict.spam) == ("deliver", "clean", False)


def test_an_unscanned_message_is_delivered():
    # given neither scanner answered
    verdict = decide(policy(spam="reject", clamav="reject"), None, None, virus_scanned=False)
    # then the filter fails open
    assert (verdict.action, verdict.reason) == ("deliver", "unscanned")


def test_a_rejected_recipient_gets_no_headers():
    assert decide(policy(spam="reject"), GTUBE_SCORE, None).headers == ()


# ---- headers -------------------------------------------------------------------------------


def test_a_clean_message_carries_its_score_with_one_decimal():
    headers = dict(headers_for(policy(), 1.234, None, tests=["MISSING_DATE"]))
    assert headers == {
        "X-Spam-Score": "1.2",
        "X-Spam-Status": "No, score=1.2 required=5.0 tests=MISSING_DATE",
    }


def test_spam_is_flagged():
    headers = dict(decide(policy(), GTUBE_SCORE, None, tests=["GTUBE"]).headers)
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"] == "Yes, score=1000.0 required=5.0 tests=GTUBE"


def test_the_threshold_of_the_recipient_decides_the_flag():
    # given a mailbox at threshold 2.0 and a message scoring 3.0
    headers = dict(decide(policy(threshold=2.0), 3.0, None).headers)
    assert headers["X-Spam-Flag"] == "YES"


def test_a_negative_zero_score_reads_zero():
    assert format_score(-0.04) == "0.0"


def test_an_unscanned_message_says_so():
    headers = headers_for(policy(), None, None, virus_scanned=False)
    assert headers == (("X-Spam-Status", "unscanned"), ("X-Virus-Status", "unscanned"))


def test_a_tagged_virus_is_named():
    headers = dict(decide(policy(clamav="tag"), 0.0, VIRUS).headers)
    assert headers["X-Virus"] == VIRUS


def test_control_characters_never_reach_a_header():
    headers = dict(headers_for(policy(), 0.0, "Evil\r\nBcc: x@y.test"))
    assert headers["X-Virus"] == "Evil??Bcc: x@y.test"


def test_no_tests_are_listed_as_none():
    assert dict(headers_for(policy(), 0.0, None))["X-Spam-Status"].endswith("tests=none")


# ---- the whole message ---------------------------------------------------------------------


def test_the_strictest_action_is_reject_then_quarantine_then_tag():
    assert strictest(["tag", "quarantine", "deliver"]) == "quarantine"
    assert strictest(["deliver", "reject", "quarantine"]) == "reject"
    assert strictest([]) == "deliver"


def test_one_rejecting_recipient_rejects_the_message_for_all():
    # given GTUBE to a recipient that tags and one that rejects
    decision = decide_message(
        {"a@x.test": policy(spam="tag"), "b@x.test": policy(spam="reject")}, GTUBE_SCORE, None
    )
    # then the message is rejected as spam, for both
    assert decision.reject == SPAM_REPLY
    assert (decision.quarantine, decision.deliver) == ((), ())


def test_a_rejected_virus_names_the_virus():
    decision = decide_message({"a@x.test": policy(clamav="reject")}, 0.0, VIRUS)
    assert decision.reject == f"554 5.7.1 Virus found: {VIRUS}"


def test_quarantined_and_tagged_recipients_are_split():
    decision = decide_message(
        {"a@x.test": policy(spam="quarantine"), "b@x.test": policy(spam="tag")}, 8.0, None
    )
    assert decision.reject is None
    assert decision.quarantine == ("a@x.test",)
    assert [rcpts for _headers, rcpts in decision.deliver] == [("b@x.test",)]


def test_recipients_with_the_same_headers_are_delivered_together():
    decision = decide_message(
        {"a@x.test": policy(), "b@x.test": policy(), "c@x.test": policy(threshold=1.0)}, 3.0, None
    )
    assert [rcpts for _headers, rcpts in decision.deliver] == [
        ("a@x.test", "b@x.test"),
        ("c@x.test",),
    ]
