"""validate_candidate() against the real tools: each injected fault is refused at its step.

Skipped where Postfix/Dovecot/OpenDKIM are not installed (.ci/mailstack-deps installs them)."""

import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from workers.reconcile.apply import BACKDATE_S
from workers.reconcile.layout import (
    DOVECOT_CONF,
    KEY_TABLE,
    MAIN_CF,
    MASTER_CF,
    OPENDKIM_CONF,
    PASSWD,
    Layout,
)
from workers.reconcile.render import render
from workers.reconcile.state import Alias, Domain, Mailbox, MailState
from workers.reconcile.validate import validate_candidate, which

pytestmark = pytest.mark.skipif(
    not all(which(tool) for tool in ("postconf", "postmap", "doveconf", "opendkim")),
    reason="the mail stack is not installed (run .ci/mailstack-deps)",
)

H = "{ARGON2ID}$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
STATE = MailState(
    domains=(Domain(id=1, name="example.test", outgoing_ip="192.0.2.10"),),
    mailboxes=(
        Mailbox(
            id=2,
            domain="example.test",
            local="alice",
            address="alice@example.test",
            password_hash=H,
            quota_bytes=1024,
        ),
    ),
    aliases=(Alias(source="@example.test", destination=("alice@example.test",)),),
)

Edit = Callable[[dict[str, str]], None]


def append(rel: str, text: str) -> Edit:
    def edit(files: dict[str, str]) -> None:
        files[rel] += text

    return edit


def replace(rel: str, old: str, new: str) -> Edit:
    def edit(files: dict[str, str]) -> None:
        assert old in files[rel]
        files[rel] = files[rel].replace(old, new, 1)

    return edit


def write(candidate: Path, files: dict[str, str]) -> None:
    """As apply() does: backdated, or every Postfix tool stalls ~2 s on fresh files."""
    old = time.time() - BACKDATE_S
    for rel, text in files.items():
        (candidate / rel).parent.mkdir(parents=True, exist_ok=True)
        (candidate / rel).write_text(text)
        os.utime(candidate / rel, (old, old))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(root=tmp_path / "live")


@pytest.mark.parametrize("sandbox", [True, False])
def test_a_rendered_candidate_passes_every_step(tmp_path: Path, sandbox: bool):
    layout = Layout(root=tmp_path / "live", sandbox=sandbox)
    write(tmp_path / "c", render(STATE, layout))
    report = validate_candidate(tmp_path / "c", layout)
    assert report.ok, report.log
    assert not [line for line in report.log if "skipped" in line]
    steps = [line.split(":")[0] for line in report.log]
    for step in (
        "postconf -n",
        "postconf -M",
        "postmap",
        "smtpd -S",
        "passwd-file",
        "doveconf -n",
        "dovecot plugins",
        "opendkim -n",
        "dkim keys",
    ):
        assert step in steps


@pytest.mark.parametrize("sandbox", [True, False])
def test_every_feature_at_once_passes_every_step(tmp_path: Path, sandbox: bool):
    """Policy service, DNSBL with whitelist maps, TLS, DKIM keys and login refusals."""
    from datetime import UTC, datetime

    from commands.keys import generate_dkim, self_signed
    from workers.reconcile.render import SigningKey, TlsBundle

    cert, key = self_signed("mx.mailpanel.test", datetime.now(UTC))
    state = msgspec.structs.replace(
        STATE,
        tiers={
            "global": {"dnsbl_enabled": True, "dnsbl_zones": "zen.spamhaus.org"},
        },
        whitelist=(("cidr", "192.0.2.0/24"), ("domain", "friend.example")),
        mailboxes=tuple(
            msgspec.structs.replace(m, effective={"enabled_imap": False}) for m in STATE.mailboxes
        ),
    )
    layout = Layout(root=tmp_path / "live", sandbox=sandbox, policy_port=10040)
    files = render(
        state,
        layout,
        signing=[
            SigningKey(
                domain="example.test", selector="s1", private_pem=generate_dkim().private_pem
            )
        ],
        tls=TlsBundle(hostname="mx.mailpanel.test", chain_pem=cert, key_pem=key),
    )
    write(tmp_path / "c", files)
    report = validate_candidate(tmp_path / "c", layout)
    assert report.ok, report.log


FAULTS: dict[str, tuple[Edit, str]] = {
    "misspelled parameter": (append(MAIN_CF, "virtual_alias_map = texthash:/x\n"), "postconf -n"),
    # postconf -n reads master.cf too (service-defined parameters), so it already refuses.
    "bad master.cf line": (append(MASTER_CF, "broken unix - -\n"), "postconf -n"),
    "map line without value": (
        append("etc/postfix/virtual_aliases", "lonely@example.test\n"),
        "postmap",
    ),
    "bad whitelist network": (
        append("etc/postfix/whitelist_clients", "not-a-network OK\n"),
        "postmap",
    ),
    "bad boolean": (append(MAIN_CF, "smtputf8_enable = maybe\n"), "postmap"),
    "bad number": (append(MAIN_CF, "smtpd_recipient_limit = lots\n"), "smtpd -S"),
    "unknown dovecot setting": (append(DOVECOT_CONF, "protocolz = imap\n"), "doveconf -n"),
    "missing brace": (append(DOVECOT_CONF, "service imap {\n"), "doveconf -n"),
    "unknown plugin": (
        replace(DOVECOT_CONF, "$mail_plugins quota", "$mail_plugins quota nosuchplugin"),
        "dovecot plugins",
    ),
    "unknown password scheme": (replace(PASSWD, "{ARGON2ID}", "{ROT13}"), "passwd-file"),
    "home outside the mail root": (replace(PASSWD, "/mail/", "/elsewhere/"), "passwd-file"),
    "unknown opendkim option": (append(OPENDKIM_CONF, "NoSuchOption yes\n"), "opendkim -n"),
    "missing dkim key": (
        append(KEY_TABLE, "s._domainkey.example.test example.test:s:/nonexistent/key.pem\n"),
        "dkim keys",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_injected_fault_is_refused_at_its_step(tmp_path: Path, layout: Layout, fault: str):
    edit, step = FAULTS[fault]
    files = render(STATE, layout)
    edit(files)
    write(tmp_path / "c", files)
    report = validate_candidate(tmp_path / "c", layout)
    assert not report.ok
    assert report.step == step, report.log
    assert "FAILED" in report.log[-1]


def test_a_dkim_key_that_does_not_parse_is_refused(tmp_path: Path, layout: Layout):
    if which("openssl") is None:
        pytest.skip("openssl is not installed")
    key = layout.root / "etc/opendkim/keys/example.test.s1.pem"
    files = render(STATE, layout, [("example.test", "s1", str(key))])
    files["etc/opendkim/keys/example.test.s1.pem"] = "-----BEGIN PRIVATE KEY-----\nnope\n"
    write(tmp_path / "c", files)
    report = validate_candidate(tmp_path / "c", layout)
    assert not report.ok and report.step == "dkim keys"
