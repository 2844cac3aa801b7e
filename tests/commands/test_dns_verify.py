"""Verifying a domain's record sheet against a loopback authoritative DNS server."""

import socket

from commands.dns_verify import verify
from core.dns import DkimEntry, Record, records, zone
from tests.dnsserver import LoopbackDNS

KEY = "v=DKIM1; h=sha256; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx1"
EFFECTIVE = {"spf_policy": "~all", "dmarc_policy": "none", "dkim_enabled": True}


def sheet(dkim_value: str = KEY) -> list[Record]:
    dkim = [DkimEntry(selector="s1", txt_value=dkim_value, status="active")]
    return records("example.com", "mail.example.com", EFFECTIVE, ["192.0.2.10"], dkim)


def replace(rs: list[Record], name: str, type_: str, value: str | None) -> list[Record]:
    """The sheet with one record's value changed (or the record dropped when value is None)."""
    out = []
    for r in rs:
        if (r.name, r.type) == (name, type_):
            if value is None:
                continue
            r = Record(type=r.type, name=r.name, value=value, priority=r.priority, purpose="x")
        out.append(r)
    return out


async def check(published: list[Record], expected: list[Record]):
    with LoopbackDNS(zone(published), origin="example.com.") as server:
        return await verify(expected, nameserver="127.0.0.1", port=server.port, timeout=2)


async def test_fully_published_sheet_is_all_ok():
    # given DNS serving exactly the sheet, plus another TXT on the domain as is common
    rs = sheet()
    extra = Record(
        type="TXT", name="example.com", value="google-site-verification=abc", purpose="x"
    )
    # when verified
    checks = await check([*rs, extra], rs)
    # then every record is ok, in the sheet's order
    assert [(c.type, c.name, c.status) for c in checks] == [(r.type, r.name, "ok") for r in rs]


async def test_unpublished_dmarc_is_missing():
    # given DNS without the DMARC record
    rs = sheet()
    published = replace(rs, "_dmarc.example.com", "TXT", None)
    # when verified
    checks = await check(published, rs)
    # then only DMARC is missing
    assert {(c.name, c.status) for c in checks if c.status != "ok"} == {
        ("_dmarc.example.com", "missing")
    }


async def test_spf_with_other_policy_is_different_and_shows_what_was_found():
    # given DNS publishing SPF with -all where the sheet says ~all
    rs = sheet()
    published = replace(rs, "example.com", "TXT", "v=spf1 mx ip4:192.0.2.10 -all")
    # when verified
    checks = await check(published, rs)
    # then the SPF check is different and carries the published text
    [spf] = [c for c in checks if c.name == "example.com" and c.type == "TXT"]
    assert spf.status == "different"
    assert spf.found == ["v=spf1 mx ip4:192.0.2.10 -all"]
    assert "~all" in spf.detail and "-all" in spf.detail
    assert [c for c in checks if c.status != "ok"] == [spf]


async def test_mx_with_another_priority_is_different():
    rs = sheet()
    published = [
        Record(type="MX", name=r.name, value=r.value, priority=20, purpose="x")
        if r.type == "MX"
        else r
        for r in rs
    ]
    [mx] = [c for c in await check(published, rs) if c.type == "MX"]
    assert (mx.status, mx.expected, mx.found) == (
        "different",
        "10 mail.example.com",
        ["20 mail.example.com"],
    )


async def test_txt_spacing_differences_are_tolerated():
    # given DMARC published with different spacing and a trailing semicolon
    rs = sheet()
    spaced = "v=DMARC1;p=none;  rua=mailto:postmaster@example.com;"
    checks = await check(replace(rs, "_dmarc.example.com", "TXT", spaced), rs)
    [dmarc] = [c for c in checks if c.name == "_dmarc.example.com"]
    assert dmarc.status == "ok"


async def test_long_dkim_key_split_into_several_strings_is_ok():
    # given a DKIM value far over 255 octets, published as several strings (and over UDP size)
    value = "v=DKIM1; k=rsa; p=" + "MIIC" * 350
    rs = sheet(dkim_value=value)
    with LoopbackDNS(zone(rs), origin="example.com.") as server:
        # when verified
        checks = await verify(rs, nameserver="127.0.0.1", port=server.port, timeout=2)
        # then the joined strings match (the answer came over TCP after truncation)
        assert ("tcp", "s1._domainkey.example.com.", "TXT") in server.queries
    [dkim] = [c for c in checks if c.name == "s1._domainkey.example.com"]
    assert dkim.status == "ok" and dkim.found == [value]


async def test_two_spf_records_are_different():
    rs = sheet()
    second = Record(type="TXT", name="example.com", value="v=spf1 a -all", purpose="x")
    [spf] = [
        c for c in await check([*rs, second], rs) if c.name == "example.com" and c.type == "TXT"
    ]
    assert spf.status == "different" and "2 TXT records with v=spf1" in spf.detail


async def test_silent_nameserver_is_an_error():
    # given a UDP port that never answers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        mx = [r for r in sheet() if r.type == "MX"]
        # when verified with a short timeout
        [result] = await verify(
            mx, nameserver="127.0.0.1", port=silent.getsockname()[1], timeout=0.3
        )
    # then the check is an error naming the timeout
    assert result.status == "error" and "0.3s" in result.detail
