"""Checking a domain's DNS record sheet (`core.dns.records`) against what DNS actually answers.

Each distinct (name, type) is looked up once, all concurrently, through dnspython's async
resolver: the system resolver by default, or one given nameserver (e.g. the domain's
authoritative server, to see changes before caches expire). One `Check` per record, in order:

- "ok": a matching record is published;
- "missing": the name does not exist, or has no record of that type (for TXT: none with the
  expected `v=` tag);
- "different": records are published but none matches (or, for a `v=` TXT such as SPF or
  DMARC, more than one with that tag, which receivers treat as an error); `found` lists them;
- "error": the lookup failed (timeout, SERVFAIL, refused...); `detail` has the message.
"""

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import msgspec

from core.dns import Record

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation, TCP beyond it


class Check(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    name: str
    expected: str  # the record's value as DNS shows it (MX: "priority host")
    status: str  # "ok" | "missing" | "different" | "error"
    found: list[str] = []
    detail: str = ""
    required: bool = True  # copied from the Record: whether the domain needs it to work


class _Answer(msgspec.Struct, frozen=True):
    status: str  # "ok" | "missing" | "error"
    values: list[str]
    detail: str = ""


async def verify(
    records: Sequence[Record],
    nameserver: str | None = None,
    port: int = 53,
    timeout: float = 3.0,
) -> list[Check]:
    """One Check per record, in the order given. `nameserver` is an IP address; without it
    the system's resolver configuration (/etc/resolv.conf) is used. `timeout` bounds each
    lookup as a whole."""
    resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
    resolver.port = port
    if nameserver is not None:
        resolver.nameservers = [nameserver]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.use_edns(0, 0, EDNS_PAYLOAD)

    keys = list(dict.fromkeys((r.name.lower().rstrip("."), r.type.upper()) for r in records))
    answers = await asyncio.gather(
        *(_lookup(resolver, name, rdtype, timeout) for name, rdtype in keys)
    )
    by_key = dict(zip(keys, answers, strict=True))
    return [_check(r, by_key[(r.name.lower().rstrip("."), r.type.upper())]) for r in records]


# ---- lookups -----------------------------------------------------------------------------


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, timeout: float
) -> _Answer:
    try:
        answer = await resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return _Answer("missing", [], f"{name} does not exist (NXDOMAIN)")
    except dns.resolver.NoAnswer:
        return _Answer("missing", [], f"{name} exists but has no {rdtype} record")
    except dns.exception.Timeout:
        return _Answer("error", [], f"no answer for {name} {rdtype} within {timeout:g}s")
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        return _Answer("error", [], f"{name} {rdtype}: {exc}")
    return _Answer("ok", [_text(rdata) for rdata in answer])


def _host(name: Any) -> str:
    return str(name.to_text(omit_final_dot=True)).lower()


def _text(rdata: Any) -> str:
    """An answer record in the form the sheet uses for values."""
    match rdata.rdtype:
        case dns.rdatatype.TXT:
            return "".join(s.decode("utf-8", errors="replace") for s in rdata.strings)
        case dns.rdatatype.MX:
            return f"{rdata.preference} {_host(rdata.exchange)}"
        case dns.rdatatype.CNAME:
            return _host(rdata.target)
        case dns.rdatatype.SRV:
            return f"{rdata.priority} {rdata.weight} {rdata.port} {_host(rdata.target)}"
        case _:
            return str(rdata.to_text())


# ---- comparison --------------------------------------------------------------------------


def _expected(record: Record) -> str:
    match record.type.upper():
        case "MX":
            return f"{record.priority if record.priority is not None else 10} {_name(record.value)}"
        case "CNAME":
            return _name(record.value)
        case "SRV":
            *numbers, target = record.value.split()
            return " ".join([*numbers, _name(target)])
        case _:
            return record.value


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _check(record: Record, answer: _Answer) -> Check:
    expected = _expected(record)

    def result(status: str, detail: str = "", found: list[str] | None = None) -> Check:
        return Check(
            type=record.type.upper(),
            name=record.name.lower().rstrip("."),
            expected=expected,
            status=status,
            found=answer.values if found is None else found,
            detail=detail,
            required=record.required,
        )

    if answer.status != "ok":
        return result(answer.status, answer.detail)
    kind = record.type.upper()
    if kind == "TXT":
        status, detail = _compare_txt(expected, answer.values)
        return result(status, detail)
    if kind == "MX":
        return result(*_compare_mx(expected, answer.values))
    if kind in ("A", "AAAA"):
        return result(*_compare_addresses(expected, answer.values))
    if expected in answer.values:  # CNAME, SRV: normalised on both sides already
        return result("ok")
    return result("different", f"expected {expected}, found {', '.join(answer.values)}")


def _compare_mx(expected: str, found: list[str]) -> tuple[str, str]:
    if expected in found:
        return "ok", ""
    priority, host = expected.split(" ", 1)
    same_host = [value for value in found if value.split(" ", 1)[1] == host]
    if same_host:
        return (
            "different",
            f"{host} is listed with priority {same_host[0].split()[0]}, not {priority}",
        )
    return "different", f"no MX record points at {host}"


def _compare_addresses(expected: str, found: list[str]) -> tuple[str, str]:
    want = ipaddress.ip_address(expected)
    for value in found:
        try:
            if ipaddress.ip_address(value) == want:
                return "ok", ""
        except ValueError:
            continue
    return "different", f"{expected} is not among the addresses"


_VERSION = re.compile(r"^\s*v\s*=\s*([^;\s]+)", re.IGNORECASE)


def _version(text: str) -> str | None:
    match = _VERSION.match(text)
    return match.group(1).lower() if match else None


def _normalize(text: str) -> str:
    """Whitespace collapsed, one space after each `;`, no trailing `;`."""
    text = re.sub(r"\s*;\s*", "; ", " ".join(text.split()))
    return text.strip().rstrip(";").strip()


def _tags(text: str, version: str | None) -> dict[str, str]:
    """A tag-list record (DKIM, DMARC, MTA-STS, TLS-RPT) as tag -> value."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        tag, _, value = part.partition("=")
        tag = tag.strip()
        if not tag:
            continue
        value = " ".join(value.split())
        if tag == "p" and version == "dkim1":  # base64: folding whitespace is not part of it
            value = "".join(value.split())
        tags[tag] = value
    return tags


def _same_txt(expected: str, found: str, version: str | None) -> bool:
    if version == "spf1":  # SPF terms are case-insensitive
        return _normalize(expected).lower().split() == _normalize(found).lower().split()
    if version is not None:
        return _tags(expected, version) == _tags(found, version)
    return _normalize(expected) == _normalize(found)


def _compare_txt(expected: str, found: list[str]) -> tuple[str, str]:
    version = _version(expected)
    if version is None:
        candidates = found
    else:
        candidates = [value for value in found if _version(value) == version]
        if version == "dkim1":  # v= is optional in a DKIM key record
            candidates += [value for value in found if _version(value) is None]
    if not candidates:
        return "missing", f"no TXT record starting with v={version}" if version else "no TXT record"
    matching = [value for value in candidates if _same_txt(expected, value, version)]
    if version is not None and len(candidates) > 1:
        note = "one of them matches" if matching else "none matches"
        return "different", (
            f"{len(candidates)} TXT records with v={version} ({note}); "
            "receivers treat more than one as an error"
        )
    if matching:
        return "ok", ""
    return "different", _txt_difference(expected, candidates[0], version)


def _txt_difference(expected: str, found: str, version: str | None) -> str:
    if version == "spf1":
        want, have = _normalize(expected).lower().split(), _normalize(found).lower().split()
        parts = []
        if missing := [term for term in want if term not in have]:
            parts.append(f"missing {' '.join(missing)}")
        if extra := [term for term in have if term not in want]:
            parts.append(f"unexpected {' '.join(extra)}")
        return "; ".join(parts) or "same terms in a different order"
    if version is not None:
        want_tags, have_tags = _tags(expected, version), _tags(found, version)
        differing = sorted(
            tag
            for tag in want_tags.keys() | have_tags.keys()
            if want_tags.get(tag) != have_tags.get(tag)
        )
        return f"tags differ: {', '.join(differing)}"
    return "the text differs"
