"""The per-domain DNS record sheet: what an operator publishes so a domain can send and receive.

Pure: `records()` derives the sheet from the domain, the mail host, the domain's effective
configuration (`spf_policy`, `dmarc_policy`, `dkim_enabled`) and its DKIM keys; `zone()` renders
it as a BIND zone fragment. Checking the sheet against live DNS is `commands.dns_verify`.

Names are lowercase ASCII (IDNA A-labels) without the trailing dot; values are in the form a
DNS answer shows them (TXT: the whole text, unquoted and unsplit; MX: the host, with the
preference in `priority`; SRV: "priority weight port target"; CNAME: the target).
"""

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from core.validation import check_domain_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TTL = 3600
MX_PRIORITY = 10
SPF_POLICIES = ("-all", "~all", "?all")
DMARC_POLICIES = ("none", "quarantine", "reject")
DKIM_PUBLISHED = ("active", "pending", "previous")
TXT_CHUNK = 255  # RFC 1035 character-string limit, in octets
MTA_STS_MAX_AGE = 86400

# Service SRV records (RFC 6186) for mail clients: service label, port.
_SRV_SERVICES = (
    ("_submission._tcp", 587, "message submission (SMTP with STARTTLS)"),
    ("_imaps._tcp", 993, "IMAP over implicit TLS"),
    ("_pop3s._tcp", 995, "POP3 over implicit TLS"),
)


class DkimEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One DKIM key of a domain as the DNS sheet needs it."""

    selector: str
    txt_value: str  # e.g. "v=DKIM1; h=sha256; k=rsa; p=MIIB..."
    status: str  # "active" | "pending" | "previous" | "retired"


class Record(msgspec.Struct, frozen=True, kw_only=True):
    type: str  # "MX" | "TXT" | "CNAME" | "SRV" | "A" | "AAAA"
    name: str  # FQDN without the trailing dot
    value: str
    priority: int | None = None  # MX preference; None for every other type
    ttl: int = DEFAULT_TTL
    purpose: str
    required: bool = True


def _fqdn(name: str, field: str) -> str:
    return check_domain_name(name.strip().lower().rstrip("."), field)


def _policy(effective: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = effective.get(key)
    if value is None:
        return default
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _addresses(outgoing_ips: Sequence[str]) -> list[IPAddress]:
    """The outgoing addresses, parsed, in order, without duplicates or empty entries."""
    seen: list[IPAddress] = []
    for raw in outgoing_ips:
        if not raw.strip():
            continue
        try:
            address = ipaddress.ip_address(raw.strip())
        except ValueError:
            raise ValueError(f"outgoing IP {raw!r} is not an IPv4/IPv6 address") from None
        if address not in seen:
            seen.append(address)
    return seen


def spf_value(addresses: Sequence[IPAddress], policy: str) -> str:
    terms = ["v=spf1", "mx"]
    for address in addresses:
        terms.append(f"ip{address.version}:{address}")
    terms.append(policy)
    return " ".join(terms)


def mta_sts_policy(mail_host: str) -> str:
    """The MTA-STS policy file (RFC 8461) served at
    https://mta-sts.<domain>/.well-known/mta-sts.txt, in "testing" mode, CRLF line endings."""
    host = _fqdn(mail_host, "mail_host")
    lines = ["version: STSv1", "mode: testing", f"mx: {host}", f"max_age: {MTA_STS_MAX_AGE}"]
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_id(policy: str) -> str:
    """A stable policy id: it changes exactly when the policy text does."""
    return hashlib.sha256(policy.encode()).hexdigest()[:12]


def records(
    domain: str,
    mail_host: str,
    effective: Mapping[str, Any],
    outgoing_ips: Sequence[str],
    dkim: Sequence[DkimEntry],
) -> list[Record]:
    """The record sheet of `domain`, receiving and sending through `mail_host`.

    `effective` is the domain's resolved configuration (the values of
    `core.config.resolve_domain`); read are `spf_policy` (default "~all"), `dmarc_policy`
    (default "none") and `dkim_enabled` (default True; False leaves the DKIM keys out).
    `outgoing_ips` are the addresses the domain sends from (empty entries are skipped).
    Raises ValueError (or ValidationFailed for a bad name) on invalid input.
    """
    domain = _fqdn(domain, "domain")
    host = _fqdn(mail_host, "mail_host")
    spf_policy = _policy(effective, "spf_policy", SPF_POLICIES, "~all")
    dmarc_policy = _policy(effective, "dmarc_policy", DMARC_POLICIES, "none")
    addresses = _addresses(outgoing_ips)

    out = [
        Record(
            type="MX",
            name=domain,
            value=host,
            priority=MX_PRIORITY,
            purpose=f"Routes mail for {domain} to {host}.",
        ),
        Record(
            type="TXT",
            name=domain,
            value=spf_value(addresses, spf_policy),
            purpose=(
                f"SPF: authorises the MX host and the outgoing addresses to send as {domain}; "
                f"other senders get {spf_policy}."
            ),
        ),
    ]

    if effective.get("dkim_enabled", True) is not False:
        for entry in dkim:
            if entry.status not in DKIM_PUBLISHED:
                continue
            selector = entry.selector.strip().lower()
            if entry.status == "pending":
                purpose = (
                    f"DKIM public key of the pending selector {selector}: publish it and let it "
                    "propagate before activating the key, or signed mail will fail verification."
                )
            elif entry.status == "previous":
                purpose = (
                    f"DKIM public key of the previous selector {selector}: keep it until mail "
                    "signed with it has been delivered (a few days), then retire the key."
                )
            else:
                purpose = f"DKIM public key receivers use to verify mail signed with {selector}."
            out.append(
                Record(
                    type="TXT",
                    name=f"{selector}._domainkey.{domain}",
                    value=entry.txt_value.strip(),
                    purpose=purpose,
                )
            )

    out.append(
        Record(
            type="TXT",
            name=f"_dmarc.{domain}",
            value=f"v=DMARC1; p={dmarc_policy}; rua=mailto:postmaster@{domain}",
            purpose=(
                f"DMARC: tells receivers to apply p={dmarc_policy} to mail failing SPF/DKIM "
                f"alignment and to send aggregate reports to postmaster@{domain}."
            ),
        )
    )

    policy_id = mta_sts_id(mta_sts_policy(host))
    out += [
        Record(
            type="TXT",
            name=f"_mta-sts.{domain}",
            value=f"v=STSv1; id={policy_id}",
            purpose=(
                "MTA-STS: announces the TLS policy for inbound mail; the id changes whenever "
                "the policy file changes."
            ),
            required=False,
        ),
        Record(
            type="CNAME",
            name=f"mta-sts.{domain}",
            value=host,
            purpose=(
                f"MTA-STS: the policy is fetched from https://mta-sts.{domain}/.well-known/"
                f"mta-sts.txt, so {host} must serve it with a certificate for mta-sts.{domain}."
            ),
            required=False,
        ),
        Record(
            type="TXT",
            name=f"_smtp._tls.{domain}",
            value=f"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}",
            purpose=f"TLS-RPT: senders report TLS delivery failures to tlsrpt@{domain}.",
            required=False,
        ),
        Record(
            type="CNAME",
            name=f"autoconfig.{domain}",
            value=host,
            purpose="Lets Thunderbird-style clients find the account settings automatically.",
            required=False,
        ),
        Record(
            type="CNAME",
            name=f"autodiscover.{domain}",
            value=host,
            purpose="Lets Outlook-style clients find the account settings automatically.",
            required=False,
        ),
    ]
    for service, port, what in _SRV_SERVICES:
        out.append(
            Record(
                type="SRV",
                name=f"{service}.{domain}",
                value=f"0 1 {port} {host}",
                purpose=f"Client auto-configuration (RFC 6186): {what} at {host}:{port}.",
                required=False,
            )
        )

    if host == domain or host.endswith(f".{domain}"):
        for address in addresses:
            out.append(
                Record(
                    type="A" if address.version == 4 else "AAAA",
                    name=host,
                    value=str(address),
                    purpose=(
                        f"Address of the mail host {host}, which lives in this zone; its reverse "
                        "DNS (PTR) should name it too."
                    ),
                )
            )
    return out


def _txt_strings(value: str) -> str:
    """The TXT value as quoted character-strings of at most 255 octets each."""
    data = value.encode()
    chunks = [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]
    return " ".join(f'"{_escape(chunk)}"' for chunk in chunks)


def _escape(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def _rdata(record: Record) -> str:
    match record.type:
        case "TXT":
            return _txt_strings(record.value)
        case "MX":
            priority = MX_PRIORITY if record.priority is None else record.priority
            return f"{priority} {record.value}."
        case "CNAME":
            return f"{record.value}."
        case "SRV":
            *numbers, target = record.value.split()
            return " ".join([*numbers, f"{target.rstrip('.')}."])
        case _:
            return record.value


def zone(records: Sequence[Record]) -> str:
    """A BIND zone fragment (absolute names, no $TTL/$ORIGIN), each record after a comment line
    with its purpose; optional records are marked so."""
    lines = []
    for record in records:
        purpose = " ".join(record.purpose.split())
        marker = "" if record.required else "(optional) "
        lines.append(f"; {marker}{purpose}")
        lines.append(f"{record.name}. {record.ttl} IN {record.type} {_rdata(record)}")
    return "".join(f"{line}\n" for line in lines)
