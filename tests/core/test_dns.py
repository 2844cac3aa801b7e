"""The DNS record sheet of a domain and its BIND zone rendering."""

import re

import pytest

from core.dns import DkimEntry, Record, mta_sts_id, mta_sts_policy, records, zone

EFFECTIVE = {"spf_policy": "-all", "dmarc_policy": "quarantine", "dkim_enabled": True}
KEY = "v=DKIM1; h=sha256; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"


def sheet(
    mail_host: str = "mail.example.com",
    effective: dict[str, object] | None = None,
    ips: tuple[str, ...] = ("192.0.2.10",),
    dkim: tuple[DkimEntry, ...] = (),
) -> list[Record]:
    return records(
        "example.com", mail_host, EFFECTIVE if effective is None else effective, ips, dkim
    )


def named(rs: list[Record], type_: str, name: str) -> list[Record]:
    return [r for r in rs if r.type == type_ and r.name == name]


def test_mx_points_at_the_mail_host_with_priority_10():
    # given a domain served by mail.example.com / when the sheet is built
    [mx] = named(sheet(), "MX", "example.com")
    # then
    assert (mx.value, mx.priority, mx.required) == ("mail.example.com", 10, True)


def test_spf_lists_every_outgoing_ip_and_ends_with_the_policy():
    # given an IPv4 and an IPv6 outgoing address and spf_policy -all
    rs = sheet(ips=("192.0.2.10", "2001:db8::25"))
    # when the SPF record is taken
    [spf] = [r for r in named(rs, "TXT", "example.com") if r.value.startswith("v=spf1")]
    # then
    assert spf.value == "v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::25 -all"


def test_spf_policy_defaults_to_softfail_when_not_configured():
    [spf] = named(sheet(effective={}), "TXT", "example.com")
    assert spf.value.endswith(" ~all")


def test_unknown_spf_policy_is_refused():
    with pytest.raises(ValueError, match="spf_policy"):
        sheet(effective={"spf_policy": "+all"})


def test_pending_dkim_key_is_published_and_retired_one_is_not():
    # given an active, a pending and a retired key
    dkim = (
        DkimEntry(selector="s2024", txt_value=KEY, status="active"),
        DkimEntry(selector="s2025", txt_value=KEY, status="pending"),
        DkimEntry(selector="s2023", txt_value=KEY, status="retired"),
    )
    # when the sheet is built
    rs = sheet(dkim=dkim)
    # then the active and pending selectors appear, the retired one does not
    names = {r.name for r in rs if "._domainkey." in r.name}
    assert names == {"s2024._domainkey.example.com", "s2025._domainkey.example.com"}
    [pending] = named(rs, "TXT", "s2025._domainkey.example.com")
    assert pending.value == KEY and "before activating" in pending.purpose


def test_dkim_keys_are_left_out_when_dkim_is_disabled():
    dkim = (DkimEntry(selector="s1", txt_value=KEY, status="active"),)
    rs = sheet(effective={**EFFECTIVE, "dkim_enabled": False}, dkim=dkim)
    assert not [r for r in rs if "._domainkey." in r.name]


def test_dmarc_carries_the_policy_and_reports_to_postmaster():
    [dmarc] = named(sheet(), "TXT", "_dmarc.example.com")
    assert dmarc.value == "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"


def test_mta_sts_id_follows_the_policy_content():
    # given the sheet / then the TXT id is the hash of the policy naming the mail host
    rs = sheet()
    [sts] = named(rs, "TXT", "_mta-sts.example.com")
    policy = mta_sts_policy("mail.example.com")
    assert sts.value == f"v=STSv1; id={mta_sts_id(policy)}"
    assert "mode: testing" in policy and "mx: mail.example.com" in policy
    assert mta_sts_id(policy) != mta_sts_id(mta_sts_policy("mx.example.net"))
    [cname] = named(rs, "CNAME", "mta-sts.example.com")
    assert cname.value == "mail.example.com" and not cname.required


def test_tls_rpt_reports_to_tlsrpt_mailbox():
    [tlsrpt] = named(sheet(), "TXT", "_smtp._tls.example.com")
    assert tlsrpt.value == "v=TLSRPTv1; rua=mailto:tlsrpt@example.com"


def test_client_autoconfiguration_records_are_optional():
    rs = sheet()
    optional = {(r.type, r.name, r.value) for r in rs if not r.required}
    assert {
        ("CNAME", "autoconfig.example.com", "mail.example.com"),
        ("CNAME", "autodiscover.example.com", "mail.example.com"),
        ("SRV", "_submission._tcp.example.com", "0 1 587 mail.example.com"),
        ("SRV", "_imaps._tcp.example.com", "0 1 993 mail.example.com"),
        ("SRV", "_pop3s._tcp.example.com", "0 1 995 mail.example.com"),
    } <= optional


def test_mail_host_inside_the_domain_gets_an_address_record_per_ip():
    rs = sheet(ips=("192.0.2.10", "2001:db8::25"))
    addresses = {(r.type, r.value) for r in rs if r.name == "mail.example.com"}
    assert addresses == {("A", "192.0.2.10"), ("AAAA", "2001:db8::25")}


def test_mail_host_outside_the_domain_gets_no_address_record():
    rs = sheet(mail_host="mx.provider.net")
    assert not [r for r in rs if r.type in ("A", "AAAA")]


def test_zone_line_has_absolute_names_and_a_purpose_comment():
    # given the sheet / when rendered
    text = zone(sheet())
    lines = text.splitlines()
    # then the MX line is BIND syntax preceded by its purpose
    index = lines.index("example.com. 3600 IN MX 10 mail.example.com.")
    assert lines[index - 1].startswith("; Routes mail for example.com")
    assert "_imaps._tcp.example.com. 3600 IN SRV 0 1 993 mail.example.com." in lines
    assert "autoconfig.example.com. 3600 IN CNAME mail.example.com." in lines
    assert all(line.startswith(";") or " IN " in line for line in lines)


def test_zone_splits_long_txt_into_strings_of_at_most_255():
    # given a 600-character DKIM value
    value = "v=DKIM1; k=rsa; p=" + "A" * 582
    dkim = (DkimEntry(selector="big", txt_value=value, status="active"),)
    # when rendered
    [line] = [li for li in zone(sheet(dkim=dkim)).splitlines() if li.startswith("big._domainkey")]
    # then it is three quoted strings that join back to the value
    strings = re.findall(r'"([^"]*)"', line)
    assert [len(s) for s in strings] == [255, 255, 90]
    assert "".join(strings) == value


def test_zone_escapes_quotes_in_txt():
    record = Record(type="TXT", name="x.example.com", value='say "hi"', purpose="test")
    assert zone([record]).splitlines()[1] == 'x.example.com. 3600 IN TXT "say \\"hi\\""'
