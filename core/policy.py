"""Decisions of the Postfix access-policy delegation service (SMTPD_POLICY_README).

Postfix cannot express per recipient or per sender what the tiers say per mailbox and domain:
sending enabled, a daily sending limit, recipients per message, a message size limit below the
global one, TLS required, greylisting. Postfix asks us at RCPT TO, DATA and end of message;
`decide` answers with one access(5) action. It is pure: the counters it needs (messages sent
today, greylist triplets) are read through `Counters`, and what should be remembered comes back
as effects on the `Decision` for the caller to persist.

Facts of the protocol this relies on (checked against Postfix 3.7):
- `recipient_count` is 0 at RCPT; only DATA and END-OF-MESSAGE carry the number of accepted
  recipients. The service therefore remembers, per `instance` (one mail transaction), the
  recipients it let through (`Decision.accepted_recipient`) and passes them back in
  `Request.recipients`, with `recipient_count` raised to their number at RCPT.
- `recipient` is empty at DATA and END-OF-MESSAGE when the message has several recipients.
- `size` is the client's SIZE= hint (0 without one) before END-OF-MESSAGE, the real size there.

A value of 0 for max_send_per_day, max_recipients_per_message or a message_size_limit means no
limit (as 0 means no cap for the domain caps and no limit for Postfix's message_size_limit).
"""

import functools
import ipaddress
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import msgspec

Triplet = tuple[str, str, str]  # (client network, sender, recipient), lowercased
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

RCPT: Final = "RCPT"
DATA: Final = "DATA"
END_OF_MESSAGE: Final = "END-OF-MESSAGE"
INBOUND: Final = "inbound"
SUBMISSION: Final = "submission"
REQUEST_NAME: Final = "smtpd_access_policy"

DUNNO: Final = "DUNNO"
SENDING_DISABLED: Final = "REJECT 5.7.1 Sending disabled for this mailbox"
STARTTLS_FIRST: Final = "REJECT 5.7.0 Must issue a STARTTLS command first"


class Malformed(ValueError):
    """A request that does not follow the protocol; the service answers DUNNO and logs it."""


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """The attributes of one policy request that decisions use; addresses lowercased."""

    protocol_state: str = ""  # RCPT, DATA, END-OF-MESSAGE (others are answered DUNNO)
    service: str = ""  # the `policy_context` attribute: "inbound" or "submission"
    sasl_username: str = ""
    sender: str = ""
    recipient: str = ""
    client_address: str = ""
    recipient_count: int = 0  # recipients accepted so far in this transaction
    size: int = 0
    encryption_protocol: str = ""  # e.g. "TLSv1.3"; empty in plaintext
    instance: str = ""  # the same for every request of one mail transaction
    # Supplied by the service, not Postfix: the recipients accepted earlier in this transaction.
    recipients: tuple[str, ...] = ()

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, str]) -> "Request":
        """The request from its `name=value` attributes, or Malformed."""
        kind = attrs.get("request")
        if kind != REQUEST_NAME:
            raise Malformed(f"request={kind!r}, expected {REQUEST_NAME}")
        return cls(
            protocol_state=attrs.get("protocol_state", "").upper(),
            service=attrs.get("policy_context", ""),
            sasl_username=attrs.get("sasl_username", "").lower(),
            sender=attrs.get("sender", "").lower(),
            recipient=attrs.get("recipient", "").lower(),
            client_address=attrs.get("client_address", ""),
            recipient_count=_count(attrs, "recipient_count"),
            size=_count(attrs, "size"),
            encryption_protocol=attrs.get("encryption_protocol", ""),
            instance=attrs.get("instance", ""),
        )


def _count(attrs: Mapping[str, str], name: str) -> int:
    value = attrs.get(name, "")
    if not value:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise Malformed(f"{name}={value[:40]!r} is not a count")
    return int(value)


class MailboxPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A mailbox's effective settings (core.config.MailboxDefaults names) and whether it and
    its domain are active."""

    enabled_smtp: bool = True
    max_send_per_day: int = 1000
    max_recipients_per_message: int = 100
    message_size_limit: int | None = None
    require_tls_client: bool = False
    active: bool = True


class DomainPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A domain's effective settings (core.config.DomainDefaults names) and its active flag."""

    message_size_limit: int | None = None
    greylisting_enabled: bool = False
    require_tls_inbound: bool = False
    active: bool = True


class GlobalPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The global tier's fields the policy uses (core.config.GlobalConfig names)."""

    message_size_limit: int = 26214400
    greylist_enabled: bool = False
    greylist_delay_seconds: int = 300
    greylist_max_age_days: int = 35


@dataclass(frozen=True)
class Whitelist:
    """Clients and senders that skip greylisting (never the size or TLS checks)."""

    ips: frozenset[IPAddress] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    emails: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, str]]) -> "Whitelist":
        """From (entry_type, value) rows; an unknown type or an unparsable value is skipped."""
        ips: set[IPAddress] = set()
        networks: list[IPNetwork] = []
        emails: set[str] = set()
        domains: set[str] = set()
        for entry_type, value in entries:
            value = value.strip().lower()
            try:
                if entry_type == "ip":
                    ips.add(_unmapped(ipaddress.ip_address(value)))
                elif entry_type == "cidr":
                    networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                continue
            if entry_type == "email" and "@" in value:
                emails.add(value)
            elif entry_type == "domain" and value:
                domains.add(value.rstrip("."))
        return cls(frozenset(ips), tuple(networks), frozenset(emails), frozenset(domains))

    def matches(self, client_address: str, sender: str) -> bool:
        """The client is a listed IP or inside a listed network, or the sender is a listed
        address, or its domain is a listed domain or a subdomain of one."""
        if sender and (self.emails or self.domains):
            if sender in self.emails:
                return True
            domain = sender.rpartition("@")[2]
            while domain:
                if domain in self.domains:
                    return True
                domain = domain.partition(".")[2]
        if self.ips or self.networks:
            address = _address(client_address)
            if address is not None:
                if address in self.ips:
                    return True
                return any(address in net for net in self.networks)
        return False


@dataclass(frozen=True)
class Policy:
    """One consistent snapshot of everything `decide` needs; replaced whole, never changed."""

    mailboxes: Mapping[str, MailboxPolicy] = field(default_factory=dict)
    domains: Mapping[str, DomainPolicy] = field(default_factory=dict)
    settings: GlobalPolicy = field(default_factory=GlobalPolicy)
    whitelist: Whitelist = field(default_factory=Whitelist)

    @classmethod
    def build(
        cls,
        mailboxes: Mapping[str, Mapping[str, Any]] | None = None,
        domains: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Mapping[str, Any] | None = None,
        whitelist: Iterable[tuple[str, str]] = (),
    ) -> "Policy":
        """From plain dicts: effective settings by address and by domain name (other keys are
        ignored, missing or null ones take the tier defaults), the global tier, and
        (entry_type, value) whitelist rows. Raises msgspec.ValidationError on a wrong type."""
        return cls(
            mailboxes={
                address.lower(): _convert(values, MailboxPolicy)
                for address, values in (mailboxes or {}).items()
            },
            domains={
                name.lower(): _convert(values, DomainPolicy)
                for name, values in (domains or {}).items()
            },
            settings=_convert(settings or {}, GlobalPolicy),
            whitelist=Whitelist.from_entries(whitelist),
        )

    def mailbox(self, address: str) -> MailboxPolicy | None:
        """The mailbox of `address`, also for `local+extension@domain`."""
        found = self.mailboxes.get(address)
        if found is None and "+" in address:
            local, _, domain = address.rpartition("@")
            found = self.mailboxes.get(f"{local.partition('+')[0]}@{domain}")
        return found


def _convert(values: Mapping[str, Any], kind: type[T]) -> T:
    return msgspec.convert({k: v for k, v in values.items() if v is not None}, kind)


class Counters(Protocol):
    """What `decide` reads of the service's persisted state."""

    def sent_today(self, user: str, day: str) -> int:
        """Messages counted for `user` on `day` (UTC, YYYY-MM-DD)."""
        ...

    def greylist(self, triplet: Triplet) -> tuple[float, float | None] | None:
        """(first seen, last passed or None) of a triplet, in epoch seconds; None if unseen."""
        ...


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The action to answer, and the effects the caller persists before answering."""

    action: str
    count_sent: bool = False  # count one message for the request's sasl_username today
    greylist_seen: Triplet | None = None  # (re)start this triplet's wait: first seen = now
    greylist_pass: Triplet | None = None  # the triplet passed now
    accepted_recipient: str | None = None  # remember for this transaction (Request.recipients)


_DUNNO = Decision(action=DUNNO)


def utc_day(now: float) -> str:
    """The UTC calendar day of an epoch time, YYYY-MM-DD: the period of the send counter."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


@functools.lru_cache(maxsize=4096)
def client_net(client_address: str) -> str:
    """The greylisting unit of a client: its /24 (IPv4) or /64 (IPv6) network; the address
    as given when it is not an IP address (e.g. "unknown")."""
    address = _address(client_address)
    if address is None:
        return client_address
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network((address, prefix), strict=False))


def _address(text: str) -> IPAddress | None:
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    """::ffff:192.0.2.1 is the IPv4 client 192.0.2.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _over(value: int, limit: int | None) -> bool:
    return bool(limit) and value > (limit or 0)


def decide(req: Request, policy: Policy, counters: Counters, now: float) -> Decision:
    """The action for one request; `now` in epoch seconds. Requests of another service,
    unauthenticated submissions and recipients in domains that are not ours get DUNNO:
    Postfix decides those elsewhere."""
    if req.service == SUBMISSION:
        return _submission(req, policy, counters, now)
    if req.service == INBOUND:
        return _inbound(req, policy, counters, now)
    return _DUNNO


def _submission(req: Request, policy: Policy, counters: Counters, now: float) -> Decision:
    mailbox = policy.mailboxes.get(req.sasl_username) if req.sasl_username else None
    if mailbox is None:
        return _DUNNO  # unauthenticated (refused by smtpd_client_restrictions) or not ours
    if not (mailbox.active and mailbox.enabled_smtp):
        return Decision(action=SENDING_DISABLED)
    if mailbox.require_tls_client and not req.encryption_protocol:
        return Decision(action=STARTTLS_FIRST)
    state = req.protocol_state
    most = mailbox.max_recipients_per_message
    if most and state == RCPT and req.recipient_count >= most:
        # 452 asks the client to send the remaining recipients in another transaction.
        return Decision(action=f"452 4.5.3 Too many recipients (at most {most} per message)")
    if most and state in (DATA, END_OF_MESSAGE) and req.recipient_count > most:
        return Decision(action=f"REJECT 5.5.3 Too many recipients (at most {most} per message)")
    per_day = mailbox.max_send_per_day
    if per_day and counters.sent_today(req.sasl_username, utc_day(now)) >= per_day:
        return Decision(
            action=f"REJECT 5.7.1 Daily sending limit reached ({per_day} messages per day)"
        )
    if _over(req.size, mailbox.message_size_limit):
        return Decision(
            action=f"552 5.3.4 Message too big (limit {mailbox.message_size_limit} bytes)"
        )
    if state == END_OF_MESSAGE:
        return Decision(action=DUNNO, count_sent=True)
    if state == RCPT and req.recipient:
        return Decision(action=DUNNO, accepted_recipient=req.recipient)
    return _DUNNO


def _inbound(req: Request, policy: Policy, counters: Counters, now: float) -> Decision:
    state = req.protocol_state
    if state == RCPT or req.recipient:
        addresses: tuple[str, ...] = (req.recipient,)
    else:
        addresses = req.recipients  # several recipients: Postfix leaves `recipient` empty
    ours: list[tuple[str, str, DomainPolicy]] = []
    for address in addresses:
        name = address.rpartition("@")[2]
        domain = policy.domains.get(name)
        if domain is not None and domain.active:
            ours.append((address, name, domain))
    if not ours:
        return _DUNNO  # not a domain we receive for: Postfix refuses it elsewhere
    for _, name, domain in ours:
        if domain.require_tls_inbound and not req.encryption_protocol:
            return Decision(action=f"REJECT 5.7.1 TLS required for mail to {name}")
    if req.size:
        for address, _, domain in ours:
            limit, scope = _size_limit(policy, address, domain)
            if _over(req.size, limit):
                return Decision(action=f"552 5.3.4 Message too big{scope} (limit {limit} bytes)")
    if state != RCPT:
        return _DUNNO
    address, _, domain = ours[0]
    glob = policy.settings
    if not (glob.greylist_enabled or domain.greylisting_enabled) or policy.whitelist.matches(
        req.client_address, req.sender
    ):
        return Decision(action=DUNNO, accepted_recipient=address)
    return _greylist(req, glob, counters, now)


def _size_limit(policy: Policy, address: str, domain: DomainPolicy) -> tuple[int, str]:
    """The recipient's limit and the words naming where it comes from: the mailbox's, else
    the domain's, else the global one (0: none)."""
    mailbox = policy.mailbox(address)
    if mailbox is not None and mailbox.message_size_limit is not None:
        return mailbox.message_size_limit, " for this mailbox"
    if domain.message_size_limit is not None:
        return domain.message_size_limit, " for this domain"
    return policy.settings.message_size_limit, ""


def _greylist(req: Request, glob: GlobalPolicy, counters: Counters, now: float) -> Decision:
    triplet = (client_net(req.client_address), req.sender, req.recipient)
    delay = glob.greylist_delay_seconds
    max_age = glob.greylist_max_age_days * 86400
    seen = counters.greylist(triplet)
    if seen is not None:
        first, passed = seen
        last = passed if passed is not None else first
        if not (max_age and now - last > max_age):  # an expired triplet counts as new
            if passed is not None or now - first >= delay:
                return Decision(
                    action=DUNNO, greylist_pass=triplet, accepted_recipient=req.recipient
                )
            wait = max(1, math.ceil(delay - (now - first)))
            return Decision(action=f"DEFER_IF_PERMIT 4.7.1 Greylisted, try again in {wait} seconds")
    return Decision(
        action=f"DEFER_IF_PERMIT 4.7.1 Greylisted, try again in {max(1, delay)} seconds",
        greylist_seen=triplet,
    )
