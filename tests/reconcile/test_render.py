"""render(): a pure function of (MailState, Layout); snapshot-style checks of the lines that
decide where mail goes and who may log in."""

import random
from pathlib import Path

import pytest

from workers.reconcile.layout import (
    DENY_SERVICES,
    DOVECOT_CONF,
    KEY_TABLE,
    MAIN_CF,
    MASTER_CF,
    OPENDKIM_CONF,
    PASSWD,
    SIGNING_TABLE,
    Layout,
)
from workers.reconcile.render import RenderError, render, restrictions
from workers.reconcile.state import Alias, Domain, Mailbox, MailState

ROOT = Path("/srv/mp")
H = "{ARGON2ID}$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
B = "{BLF-CRYPT}$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"


def mailbox(address: str, **kw: object) -> Mailbox:
    local, _, domain = address.partition("@")
    fields: dict[str, object] = {"id": abs(hash(address)) % 10_000, "password_hash": H}
    fields.update(kw)
    return Mailbox(domain=domain, local=local, address=address, **fields)


STATE = MailState(
    domains=(
        Domain(id=1, name="example.test", outgoing_ip="192.0.2.10"),
        Domain(id=2, name="other.test", outgoing_ip="192.0.2.10"),
        Domain(id=3, name="off.test", active=False),
        Domain(id=4, name="six.test", outgoing_ip="2001:db8::25"),
    ),
    mailboxes=(
        mailbox("alice@example.test", quota_bytes=10485760),
        mailbox("bob@example.test", password_hash=B),
        mailbox("carol@example.test", active=False, quota_bytes=1048576),
        mailbox("o'neil@example.test"),
        mailbox("dave@off.test"),
    ),
    aliases=(
        Alias(source="info@example.test", destination=("alice@example.test",)),
        Alias(source="team@example.test", destination=("alice@example.test", "bob@example.test")),
        Alias(source="@example.test", destination=("alice@example.test",)),
        Alias(source="fwd@other.test", destination=("someone@elsewhere.example",)),
    ),
    tiers={"global": {"message_size_limit": 12345678, "relay_networks": "127.0.0.0/8 [::1]/128"}},
)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return render(STATE, Layout(root=ROOT))


@pytest.fixture(scope="module")
def prod() -> dict[str, str]:
    return render(STATE, Layout(root=ROOT, sandbox=False))


def test_every_file_of_the_stack_is_rendered(files: dict[str, str]):
    assert {
        MAIN_CF,
        MASTER_CF,
        DOVECOT_CONF,
        PASSWD,
        OPENDKIM_CONF,
        KEY_TABLE,
        SIGNING_TABLE,
        "etc/postfix/virtual_domains",
        "etc/postfix/virtual_mailboxes",
        "etc/postfix/virtual_aliases",
        "etc/postfix/recipient_access",
        "etc/postfix/sender_transport",
        "etc/postfix/whitelist_senders",
        "etc/postfix/whitelist_clients",
        *(f"etc/dovecot/deny-{service}" for service in DENY_SERVICES),
    } == set(files)


def test_rendering_is_deterministic_whatever_the_input_order(files: dict[str, str]):
    rng = random.Random(7)
    shuffled = MailState(
        domains=tuple(rng.sample(STATE.domains, len(STATE.domains))),
        mailboxes=tuple(rng.sample(STATE.mailboxes, len(STATE.mailboxes))),
        aliases=tuple(rng.sample(STATE.aliases, len(STATE.aliases))),
        tiers=STATE.tiers,
    )
    assert render(shuffled, Layout(root=ROOT)) == files


def test_every_mailbox_has_an_identity_line_so_the_catch_all_never_swallows_it(files):
    aliases = lines(files["etc/postfix/virtual_aliases"])
    for mb in STATE.mailboxes:
        assert f"{mb.address} {mb.address}" in aliases


def test_aliases_catch_all_and_multiple_destinations(files: dict[str, str]):
    aliases = lines(files["etc/postfix/virtual_aliases"])
    assert "info@example.test alice@example.test" in aliases
    assert "team@example.test alice@example.test, bob@example.test" in aliases
    assert "@example.test alice@example.test" in aliases
    assert "fwd@other.test someone@elsewhere.example" in aliases


def test_an_alias_on_a_mailbox_address_keeps_the_mailbox_as_first_destination():
    state = MailState(
        domains=(Domain(id=1, name="example.test"),),
        mailboxes=(mailbox("alice@example.test"),),
        aliases=(Alias(source="alice@example.test", destination=("x@elsewhere.example",)),),
    )
    aliases = lines(render(state, Layout(root=ROOT))["etc/postfix/virtual_aliases"])
    assert aliases == ["alice@example.test alice@example.test, x@elsewhere.example"]


def test_an_alias_never_delivers_to_a_disabled_mailbox():
    # Given an alias to an active and a disabled mailbox, and one only to the disabled one
    state = MailState(
        domains=(Domain(id=1, name="example.test"), Domain(id=2, name="off.test", active=False)),
        mailboxes=(
            mailbox("alice@example.test"),
            mailbox("carol@example.test", active=False),
            mailbox("dave@off.test"),
        ),
        aliases=(
            Alias(
                source="team@example.test", destination=("alice@example.test", "carol@example.test")
            ),
            Alias(source="old@example.test", destination=("carol@example.test", "dave@off.test")),
        ),
    )
    # When rendered
    files = render(state, Layout(root=ROOT))
    aliases = lines(files["etc/postfix/virtual_aliases"])
    # Then the disabled destination is left out, and the alias left with none is refused
    assert "team@example.test alice@example.test" in aliases
    assert not any(line.startswith("old@example.test") for line in aliases)
    assert "old@example.test 550 5.1.1 Every destination of this alias is disabled" in lines(
        files["etc/postfix/recipient_access"]
    )


def test_inactive_domains_are_still_virtual_domains_but_refused_at_rcpt(files):
    assert lines(files["etc/postfix/virtual_domains"]) == [
        "example.test OK",
        "off.test OK",
        "other.test OK",
        "six.test OK",
    ]
    assert lines(files["etc/postfix/recipient_access"]) == [
        "carol@example.test 550 5.1.1 Mailbox disabled",
        "off.test 550 5.1.2 Domain disabled",
    ]


def test_mailbox_map_lists_every_mailbox(files: dict[str, str]):
    assert "bob@example.test example.test/bob/" in lines(files["etc/postfix/virtual_mailboxes"])
    assert len(lines(files["etc/postfix/virtual_mailboxes"])) == len(STATE.mailboxes)


def test_passwd_lines_carry_quota_and_nologin(files: dict[str, str]):
    mail = f"{ROOT}/mail"
    assert lines(files[PASSWD]) == [
        f"alice@example.test:{H}:5000:5000::{mail}/example.test/alice::"
        "userdb_quota_rule=*:bytes=10485760",
        f"bob@example.test:{B}:5000:5000::{mail}/example.test/bob::",
        f"carol@example.test:{H}:5000:5000::{mail}/example.test/carol::"
        "userdb_quota_rule=*:bytes=1048576 nologin reason=disabled",
        f"dave@off.test:{H}:5000:5000::{mail}/off.test/dave::nologin reason=disabled",
        # Dovecot escapes ' in %u before the lookup, so the key is stored escaped.
        f"o\\'neil@example.test:{H}:5000:5000::{mail}/example.test/o'neil::",
    ]


def test_passwd_home_follows_a_separate_mail_root():
    files = render(STATE, Layout(root=ROOT, mail_root_dir=Path("/var/vmail")))
    assert "::/var/vmail/example.test/alice::" in files[PASSWD]


def test_main_cf_keeps_everything_under_the_root(files: dict[str, str]):
    main = lines(files[MAIN_CF])
    for line in (
        f"queue_directory = {ROOT}/spool",
        f"data_directory = {ROOT}/data",
        f"maillog_file = {ROOT}/log/postfix.log",
        f"maillog_file_prefixes = /var, /dev/stdout, {ROOT}/log",
        "virtual_mailbox_domains = texthash:$config_directory/virtual_domains",
        "virtual_mailbox_maps = texthash:$config_directory/virtual_mailboxes",
        "virtual_alias_maps = texthash:$config_directory/virtual_aliases",
        f"virtual_transport = lmtp:unix:{ROOT}/run/dovecot/lmtp",
        "recipient_delimiter = +",
        "propagate_unmatched_extensions = canonical",
        "message_size_limit = 12345678",
        "mynetworks = 127.0.0.0/8, [::1]/128",
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
        "reject_unauth_destination",
        "smtpd_recipient_restrictions = check_recipient_access "
        "texthash:$config_directory/recipient_access",
    ):
        assert line in main


def test_the_sandbox_never_sends_anything_out(files: dict[str, str]):
    main = lines(files[MAIN_CF])
    assert any(ln.startswith("default_transport = error:") for ln in main)
    assert any(ln.startswith("relay_transport = error:") for ln in main)
    assert not any(ln.startswith("sender_dependent_default_transport_maps") for ln in main)
    assert "inet_interfaces = loopback-only" in main


def test_each_outgoing_ip_gets_its_own_transport_bound_by_sender_domain(prod: dict[str, str]):
    main = lines(prod[MAIN_CF])
    assert (
        "sender_dependent_default_transport_maps = texthash:$config_directory/sender_transport"
        in main
    )
    assert "inet_protocols = all" in main  # a domain sends from IPv6
    assert lines(prod["etc/postfix/sender_transport"]) == [
        "@example.test out_192_0_2_10:",
        "@other.test out_192_0_2_10:",
        "@six.test out_2001_db8__25:",
    ]
    master = prod[MASTER_CF]
    assert master.count("out_192_0_2_10 unix - - n - - smtp\n") == 1
    assert "  -o smtp_bind_address=192.0.2.10\n" in master
    assert "out_2001_db8__25 unix - - n - - smtp\n" in master
    assert "  -o smtp_bind_address6=2001:db8::25\n" in master


def test_no_master_cf_service_is_chrooted(files: dict[str, str]):
    services = [ln.split() for ln in lines(files[MASTER_CF]) if not ln.startswith(" ")]
    assert services and all(fields[4] == "n" for fields in services)
    names = [fields[0] for fields in services]
    assert "127.0.0.1:2525" in names and "127.0.0.1:2587" in names and "postlog" in names


def test_dovecot_conf_is_standalone_and_sandboxed(files: dict[str, str]):
    conf = [ln.strip() for ln in lines(files[DOVECOT_CONF])]
    for line in (
        "instance_name = mailpanel",
        f"base_dir = {ROOT}/run/dovecot",
        f"state_dir = {ROOT}/state/dovecot",
        f"log_path = {ROOT}/log/dovecot.log",
        "protocols = imap pop3 lmtp",
        "listen = 127.0.0.1",
        "ssl = no",
        "auth_failure_delay = 0",
        "first_valid_uid = 5000",
        "last_valid_uid = 5000",
        "mail_location = maildir:~/Maildir",
        "mail_plugins = $mail_plugins quota",
        f"args = username_format=%u {ROOT}/etc/dovecot/passwd",
        "special_use = \\Sent",
        "special_use = \\Junk",
        "auto = subscribe",
        "quota = maildir:User quota",
        "port = 1143",
        "port = 1110",
        "mode = 0600",
        "user = postfix",
        f"unix_listener {ROOT}/spool/private/auth {{",
        "recipient_delimiter =",
        "unix_listener anvil-auth-penalty {",  # no per-IP login penalty in the sandbox
    ):
        assert line in conf
    assert not any(ln.startswith("!include") for ln in conf)


def test_production_dovecot_keeps_the_failure_delay_and_plaintext_off(prod: dict[str, str]):
    conf = lines(prod[DOVECOT_CONF])
    assert "auth_failure_delay = 0" not in conf
    assert "disable_plaintext_auth = yes" in conf
    assert "anvil-auth-penalty" not in prod[DOVECOT_CONF]


def test_dkim_tables_are_empty_without_keys_and_list_given_keys(files: dict[str, str]):
    assert lines(files[KEY_TABLE]) == [] and lines(files[SIGNING_TABLE]) == []
    keyed = render(STATE, Layout(root=ROOT), [("example.test", "s1", f"{ROOT}/k/example.pem")])
    assert lines(keyed[KEY_TABLE]) == [
        f"s1._domainkey.example.test example.test:s1:{ROOT}/k/example.pem"
    ]
    assert lines(keyed[SIGNING_TABLE]) == ["*@example.test s1._domainkey.example.test"]


def test_the_milter_is_wired_only_when_dkim_is_on(files: dict[str, str]):
    assert "smtpd_milters" not in files[MAIN_CF]
    dkim = render(STATE, Layout(root=ROOT, dkim=True, milter_port=8899))
    assert "smtpd_milters = inet:127.0.0.1:8899" in lines(dkim[MAIN_CF])
    assert "Socket inet:8899@127.0.0.1" in lines(dkim[OPENDKIM_CONF])


def test_opendkim_requires_safe_keys_except_under_tmp():
    assert "RequireSafeKeys true" in render(STATE, Layout(root=ROOT))[OPENDKIM_CONF]
    assert "RequireSafeKeys false" in render(STATE, Layout(root=Path("/tmp/x")))[OPENDKIM_CONF]


def test_restrictions_come_from_the_fixed_list_only():
    assert restrictions(["permit_mynetworks", "reject"]) == "permit_mynetworks, reject"
    with pytest.raises(RenderError):
        restrictions(["permit_mynetworks", "reject_unauth_destinatoin"])


HOSTILE_MAILBOXES = [
    {"address": "a b@example.test", "local": "a b"},
    {"address": "a\n@example.test", "local": "a\n"},
    {"address": "#x@example.test", "local": "#x"},  # a map line starting with # is a comment
    {"address": "a:b@example.test", "local": "a:b"},
    {"address": "../x@example.test", "local": "../x"},
    {"address": "a@b@example.test", "local": "a@b"},
    {"address": "ü@example.test", "local": "ü"},
    {"password_hash": "{ARGON2ID}$argon2id$a:b"},
    {"password_hash": "$argon2id$no-scheme"},
    {"password_hash": H + "\nevil@example.test:x"},
    {"quota_bytes": -1},
]


@pytest.mark.parametrize("bad", HOSTILE_MAILBOXES, ids=repr)
def test_a_hostile_mailbox_value_is_refused(bad: dict[str, object]):
    good = mailbox("x@example.test")
    fields = {f: getattr(good, f) for f in good.__struct_fields__}
    fields.update(bad)
    state = MailState(domains=(Domain(id=1, name="example.test"),), mailboxes=(Mailbox(**fields),))
    with pytest.raises(RenderError):
        render(state, Layout(root=ROOT))


@pytest.mark.parametrize(
    "state",
    [
        MailState(domains=(Domain(id=1, name="exa mple.test"),)),
        MailState(domains=(Domain(id=1, name="example.test\nrelayhost = evil"),)),
        MailState(domains=(Domain(id=1, name="example.test", outgoing_ip="192.0.2.999"),)),
        MailState(aliases=(Alias(source="a@example.test", destination=("b@x.test c@y.test",)),)),
        MailState(aliases=(Alias(source="#a@example.test", destination=("b@x.test",)),)),
        MailState(aliases=(Alias(source="a@example.test", destination=()),)),
        MailState(tiers={"global": {"message_size_limit": "10; rm", "relay_networks": ""}}),
        MailState(tiers={"global": {"message_size_limit": 1, "relay_networks": "evil"}}),
    ],
)
def test_a_hostile_domain_alias_or_tier_value_is_refused(state: MailState):
    with pytest.raises(RenderError):
        render(state, Layout(root=ROOT))


@pytest.mark.parametrize("root", ["/srv/a b", "/srv/$x", "/srv/a:b", "relative", "/srv/../etc"])
def test_a_layout_path_that_cannot_go_into_a_config_line_is_refused(root: str):
    with pytest.raises(RenderError):
        render(STATE, Layout(root=Path(root)))


def test_connection_limits_come_from_the_global_tier():
    state = MailState(tiers={"global": {"max_smtpd_connections": 7, "max_smtpd_rate_per_min": 90}})
    main = lines(render(state, Layout(root=ROOT))[MAIN_CF])
    assert "smtpd_client_connection_count_limit = 7" in main
    assert "smtpd_client_connection_rate_limit = 90" in main
    assert "anvil_rate_time_unit = 60s" in main


def test_dnsbl_zones_come_after_the_whitelist_maps_and_only_when_enabled():
    # Given DNSBL on with two zones and whitelist entries of every type
    state = MailState(
        tiers={
            "global": {"dnsbl_enabled": True, "dnsbl_zones": "zen.spamhaus.org, bl.example.net"}
        },
        whitelist=(
            ("ip", "192.0.2.7"),
            ("cidr", "198.51.100.0/24"),
            ("domain", "partner.example"),
            ("email", "boss@friend.example"),
        ),
    )
    files = render(state, Layout(root=ROOT))
    recipient = next(ln for ln in lines(files[MAIN_CF]) if ln.startswith("smtpd_recipient_rest"))
    # Then the whitelist maps are consulted before each reject_rbl_client
    assert recipient.index("whitelist_clients") < recipient.index("reject_rbl_client")
    assert "reject_rbl_client zen.spamhaus.org" in recipient
    assert "reject_rbl_client bl.example.net" in recipient
    assert lines(files["etc/postfix/whitelist_clients"]) == [
        "192.0.2.7/32 OK",
        "198.51.100.0/24 OK",
    ]
    assert lines(files["etc/postfix/whitelist_senders"]) == [
        ".partner.example OK",
        "boss@friend.example OK",
        "partner.example OK",
    ]
    # And with DNSBL off no zone is queried
    off = render(
        MailState(tiers={"global": {"dnsbl_zones": "zen.spamhaus.org"}}), Layout(root=ROOT)
    )
    assert "reject_rbl_client" not in off[MAIN_CF]


def test_a_hostile_dnsbl_zone_is_refused():
    state = MailState(tiers={"global": {"dnsbl_enabled": True, "dnsbl_zones": "x.org,permit"}})
    with pytest.raises(RenderError):
        render(state, Layout(root=ROOT))


def test_login_services_refuse_mailboxes_with_the_protocol_disabled():
    state = MailState(
        domains=(Domain(id=1, name="example.test"),),
        mailboxes=(
            mailbox("alice@example.test", effective={"enabled_imap": False}),
            mailbox("bob@example.test", effective={"enabled_pop3": False, "enabled_smtp": False}),
            mailbox("carol@example.test", effective={"enabled_imap": True}),
        ),
    )
    files = render(state, Layout(root=ROOT))
    assert lines(files["etc/dovecot/deny-imap"]) == ["alice@example.test"]
    assert lines(files["etc/dovecot/deny-pop3"]) == ["bob@example.test"]
    assert lines(files["etc/dovecot/deny-smtp"]) == ["bob@example.test"]
    assert "deny = yes" in files[DOVECOT_CONF]


def test_the_policy_service_is_wired_for_inbound_and_submission_only_when_it_runs(files):
    assert "check_policy_service" not in files[MAIN_CF]
    wired = render(STATE, Layout(root=ROOT, policy_port=10040))
    main = wired[MAIN_CF]
    assert "policy_context=inbound" in main and "smtpd_end_of_data_restrictions" in main
    assert "-o smtpd_end_of_data_restrictions=$mailpanel_submission_policy" in wired[MASTER_CF]
    assert "policy_context=submission" in main
