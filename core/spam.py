"""What happens to a scanned message, per recipient: a pure function of the recipient's effective
settings and the scanners' findings.

Rules:
- A virus (ClamAV found one) -> the domain's clamav_action (tag | quarantine | reject).
- Else a spam score at or over the threshold -> spam_action (tag | quarantine | reject).
- Else -> "deliver". A message that was not scanned (score None) is delivered: the filter
  fails open.
- The mailbox's spam_threshold and spam_action win when they are not None (None = inherit),
  otherwise the domain's; clamav_action is a domain setting.
- One message, one answer: a before-queue filter answers the whole message once at the end of
  DATA, so when any recipient's action is "reject" the message is rejected for all of them
  (the strictest action wins). Otherwise each recipient gets its own action: quarantined
  recipients are held, the others are delivered with the headers of their verdict.

Headers (on delivered and quarantined copies; the filter removes any a sender forged):
  X-Spam-Score: <score, 1 decimal>                  when scanned
  X-Spam-Flag: YES                                  when score >= threshold
  X-Spam-Status: Yes|No, score=S required=T tests=A,B  or  "unscanned"
  X-Virus: <name>                                   when a virus is let through (tag) or held
  X-Virus-Status: unscanned                         when the virus scanner could not scan
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast, get_args

import msgspec

from core.config import Action, DomainDefaults

Outcome = Literal["deliver", "tag", "quarantine", "reject"]
Reason = Literal["virus", "spam", "clean", "unscanned"]
Header = tuple[str, str]

ACTIONS: frozenset[str] = frozenset(get_args(Action))
SEVERITY: dict[str, int] = {"deliver": 0, "tag": 1, "quarantine": 2, "reject": 3}
# Every header the filter sets; incoming copies of these are dropped before ours are added.
OWN_HEADERS = ("X-Spam-Score", "X-Spam-Flag", "X-Spam-Status", "X-Virus", "X-Virus-Status")
MAX_TESTS = 40  # rule names listed in X-Spam-Status
SPAM_REPLY = "550 5.7.1 Message rejected as spam"

_DEFAULTS = DomainDefaults()


class RecipientPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The three settings that decide a recipient's verdict."""

    spam_threshold: float = _DEFAULTS.spam_threshold
    spam_action: Action = _DEFAULTS.spam_action
    clamav_action: Action = _DEFAULTS.clamav_action


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    action: Outcome
    reason: Reason
    spam: bool  # the score reached the threshold
    headers: tuple[Header, ...] = ()


class MessageDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The whole message: a reply that rejects it, or who is held and who gets which headers."""

    reject: str | None = None  # the SMTP reply when the message is rejected for everyone
    quarantine: tuple[str, ...] = ()
    # Recipients delivered together share one set of headers.
    deliver: tuple[tuple[tuple[Header, ...], tuple[str, ...]], ...] = ()
    verdicts: dict[str, Verdict] = msgspec.field(default_factory=dict)


def _threshold(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _action(value: Any) -> Action | None:
    return cast(Action, value) if isinstance(value, str) and value in ACTIONS else None


def recipient_policy(
    domain: Mapping[str, Any], mailbox: Mapping[str, Any] | None = None
) -> RecipientPolicy:
    """The policy from a domain's effective settings and, when the recipient is a mailbox, its
    effective settings: the mailbox value when not None, else the domain's, else the default.
    A value of the wrong type or outside tag|quarantine|reject counts as unset."""
    box = mailbox or {}
    threshold = _threshold(box.get("spam_threshold"))
    if threshold is None:
        threshold = _threshold(domain.get("spam_threshold"))
    spam_action = _action(box.get("spam_action")) or _action(domain.get("spam_action"))
    clamav_action = _action(domain.get("clamav_action")) or _action(box.get("clamav_action"))
    return RecipientPolicy(
        spam_threshold=_DEFAULTS.spam_threshold if threshold is None else threshold,
        spam_action=spam_action or _DEFAULTS.spam_action,
        clamav_action=clamav_action or _DEFAULTS.clamav_action,
    )


def format_score(score: float) -> str:
    """One decimal; never "-0.0" (SpamAssassin reports tiny negatives that way)."""
    text = f"{score:.1f}"
    return "0.0" if text == "-0.0" else text


def _printable(text: str, limit: int = 200) -> str:
    """Only printable ASCII reaches a header or a reply line."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text).strip()
    return cleaned[:limit] or "unknown"


def headers_for(
    policy: RecipientPolicy,
    score: float | None,
    virus: str | None,
    *,
    tests: Sequence[str] = (),
    virus_scanned: bool = True,
) -> tuple[Header, ...]:
    """The header lines (name, value) a copy for this recipient carries."""
    out: list[Header] = []
    if score is None:
        out.append(("X-Spam-Status", "unscanned"))
    else:
        spam = score >= policy.spam_threshold
        names = [_printable(t, 64).replace(" ", "_") for t in tests[:MAX_TESTS] if t.strip()]
        out.append(("X-Spam-Score", format_score(score)))
        if spam:
            out.append(("X-Spam-Flag", "YES"))
        out.append(
            (
                "X-Spam-Status",
                f"{'Yes' if spam else 'No'}, score={format_score(score)} "
                f"required={format_score(policy.spam_threshold)} "
                f"tests={','.join(names) or 'none'}",
            )
        )
    if virus is not None:
        out.append(("X-Virus", _printable(virus)))
    elif not virus_scanned:
        out.append(("X-Virus-Status", "unscanned"))
    return tuple(out)


def decide(
    policy: RecipientPolicy,
    score: float | None,
    virus: str | None,
    *,
    tests: Sequence[str] = (),
    virus_scanned: bool = True,
) -> Verdict:
    """One recipient's verdict. `score` is None when the message was not scored, `virus` the
    name ClamAV reported (None: clean or not scanned, see `virus_scanned`)."""
    spam = score is not None and score >= policy.spam_threshold
    action: Outcome
    reason: Reason
    if virus is not None:
        action, reason = policy.clamav_action, "virus"
    elif spam:
        action, reason = policy.spam_action, "spam"
    else:
        action, reason = "deliver", ("clean" if score is not None else "unscanned")
    headers = (
        ()
        if action == "reject"
        else headers_for(policy, score, virus, tests=tests, virus_scanned=virus_scanned)
    )
    return Verdict(action=action, reason=reason, spam=spam, headers=headers)


def strictest(actions: Iterable[Outcome]) -> Outcome:
    """reject > quarantine > tag > deliver; "deliver" for no actions at all."""
    best: Outcome = "deliver"
    for action in actions:
        if SEVERITY[action] > SEVERITY[best]:
            best = action
    return best


def reject_reply(virus: str | None) -> str:
    if virus is not None:
        return f"554 5.7.1 Virus found: {_printable(virus)}"
    return SPAM_REPLY


def decide_message(
    policies: Mapping[str, RecipientPolicy],
    score: float | None,
    virus: str | None,
    *,
    tests: Sequence[str] = (),
    virus_scanned: bool = True,
) -> MessageDecision:
    """Every recipient's verdict, and what that means for the one message: rejected for all
    when any recipient rejects, else held for the quarantined ones and delivered to the rest,
    grouped by identical headers (each group is one delivery). Recipient order is kept."""
    verdicts = {
        rcpt: decide(policy, score, virus, tests=tests, virus_scanned=virus_scanned)
        for rcpt, policy in policies.items()
    }
    if strictest(v.action for v in verdicts.values()) == "reject":
        return MessageDecision(reject=reject_reply(virus), verdicts=verdicts)
    held = tuple(rcpt for rcpt, v in verdicts.items() if v.action == "quarantine")
    groups: dict[tuple[Header, ...], list[str]] = {}
    for rcpt, verdict in verdicts.items():
        if verdict.action in ("deliver", "tag"):
            groups.setdefault(verdict.headers, []).append(rcpt)
    return MessageDecision(
        quarantine=held,
        deliver=tuple((headers, tuple(rcpts)) for headers, rcpts in groups.items()),
        verdicts=verdicts,
    )
