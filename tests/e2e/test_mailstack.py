"""The real mail stack: render a MailState, apply it with validation, run Postfix + Dovecot on
free loopback ports, and check where mail lands and who may log in.

Needs root and the Debian packages (.ci/mailstack-deps). Every wait is bounded; nothing
asserts on wall-clock time. The stack is always stopped in teardown.
"""

import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from workers.reconcile.apply import apply, sha256
from workers.reconcile.layout import DOVECOT_CONF, MAIN_CF, Layout
from workers.reconcile.maildirs import ensure_maildirs
from workers.reconcile.render import render
from workers.reconcile.stack import MailStack, StackError, session_members
from workers.reconcile.state import Alias, Domain, Mailbox, MailState
from workers.reconcile.validate import which

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (which("postfix") and which("dovecot") and which("doveconf")),
        reason="Postfix/Dovecot are not installed (run .ci/mailstack-deps as root)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="running Postfix and Dovecot needs root"),
]

DELIVERY_TIMEOUT_S = 20.0
DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def box(local: str, box_id: int, domain: str = DOMAIN, **kw: object) -> Mailbox:
    password = PASSWORDS.get(local, "other-secret-9")
    return Mailbox(
        id=box_id,
        domain=domain,
        local=local,
        address=f"{local}@{domain}",
        password_hash="{ARGON2ID}" + _hasher.hash(password),
        **kw,
    )


def build_state(extra_aliases: tuple[Alias, ...] = ()) -> MailState:
    return MailState(
        domains=(Domain(id=1, name=DOMAIN), Domain(id=2, name="off.test", active=False)),
        mailboxes=MAILBOXES,
        aliases=(
            Alias(source=f"info@{DOMAIN}", destination=(f"alice@{DOMAIN}",)),
            Alias(source=f"team@{DOMAIN}", destination=(f"alice@{DOMAIN}", f"bob@{DOMAIN}")),
            Alias(source=f"@{DOMAIN}", destination=(f"alice@{DOMAIN}",)),
            *extra_aliases,
        ),
        # Loopback is not a relay network here, so an unauthenticated relay attempt is refused.
        tiers={"global": {"message_size_limit": 10485760, "relay_networks": "192.0.2.0/24"}},
    )


MAILBOXES = (
    box("alice", 10, quota_bytes=10485760),
    box("bob", 11),
    box("bob+list", 12),  # a mailbox whose name holds the recipient delimiter
    box("carol", 13, active=False),
    box("dave", 14, domain="off.test"),
)


@dataclass
class Env:
    layout: Layout
    stack: MailStack
    state: MailState

    def maildir(self, local: str, domain: str = DOMAIN) -> Path:
        return self.layout.mail_root / domain / local / "Maildir"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="mailpanel-", dir="/tmp"))
    os.chmod(root, 0o755)  # postfix, dovecot and vmail must traverse it
    layout = Layout(
        root=root,
        smtp_port=free_port(),
        submission_port=free_port(),
        imap_port=free_port(),
        pop3_port=free_port(),
        milter_port=free_port(),
    )
    state = build_state()
    report = apply(render(state, layout), layout)
    assert report.ok, report.log
    ensure_maildirs(layout.mail_root, [(m.domain, m.local) for m in state.mailboxes])
    stack = MailStack(layout)
    try:
        stack.start()
        yield Env(layout=layout, stack=stack, state=state)
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def message(token: str, sender: str = "sender@elsewhere.example") -> str:
    return f"From: {sender}\r\nSubject: {token}\r\nMessage-ID: <{token}@test>\r\n\r\n{token}\r\n"


def send(env: Env, rcpts: list[str], token: str, sender: str = "sender@elsewhere.example") -> None:
    with smtplib.SMTP("127.0.0.1", env.layout.smtp_port, timeout=30) as smtp:
        refused = smtp.sendmail(sender, rcpts, message(token, sender))
    assert refused == {}


def rcpt(env: Env, address: str, port: int | None = None) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port or env.layout.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@elsewhere.example")
        code, text = smtp.rcpt(address)
        smtp.rset()
    return code, text.decode()


def find(maildir: Path, token: str) -> list[Path]:
    hits = []
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir() if (maildir / sub).is_dir() else []:
            if token.encode() in path.read_bytes():
                hits.append(path)
    return hits


def wait_for(maildir: Path, token: str) -> Path:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        hits = find(maildir, token)
        if hits:
            return hits[0]
        time.sleep(0.05)
    pytest.fail(f"message {token} did not reach {maildir} within {DELIVERY_TIMEOUT_S} s")


def token() -> str:
    return "t" + uuid.uuid4().hex


def test_mail_to_each_mailbox_lands_in_its_own_maildir(env: Env):
    to_alice, to_bob = token(), token()
    send(env, [f"alice@{DOMAIN}"], to_alice)
    send(env, [f"bob@{DOMAIN}"], to_bob)
    assert wait_for(env.maildir("alice"), to_alice).parent.name == "new"
    wait_for(env.maildir("bob"), to_bob)
    assert find(env.maildir("alice"), to_bob) == []  # the catch-all did not swallow bob


def test_an_alias_and_a_multi_destination_alias_deliver_to_their_targets(env: Env):
    to_info, to_team = token(), token()
    send(env, [f"info@{DOMAIN}"], to_info)
    send(env, [f"team@{DOMAIN}"], to_team)
    wait_for(env.maildir("alice"), to_info)
    wait_for(env.maildir("alice"), to_team)
    wait_for(env.maildir("bob"), to_team)


def test_the_catch_all_takes_unknown_addresses(env: Env):
    tok = token()
    send(env, [f"nobody-{tok}@{DOMAIN}"], tok)
    wait_for(env.maildir("alice"), tok)


def test_plus_addressing_reaches_the_base_mailbox_but_never_steals_a_plus_named_one(env: Env):
    to_tag, to_list = token(), token()
    send(env, [f"bob+tag@{DOMAIN}"], to_tag)
    send(env, [f"bob+list@{DOMAIN}"], to_list)
    wait_for(env.maildir("bob"), to_tag)
    wait_for(env.maildir("bob+list"), to_list)
    assert find(env.maildir("bob"), to_list) == []


def test_imap_login_sees_the_message_the_folders_and_the_quota(env: Env):
    tok = token()
    send(env, [f"alice@{DOMAIN}"], tok)
    wait_for(env.maildir("alice"), tok)
    imap = imaplib.IMAP4("127.0.0.1", env.layout.imap_port, timeout=30)
    try:
        imap.login(f"alice@{DOMAIN}", PASSWORDS["alice"])
        status, _ = imap.select("INBOX")
        assert status == "OK"
        status, found = imap.search(None, "SUBJECT", tok)
        assert status == "OK" and found[0].split()
        _, folders = imap.list()
        listed = b" ".join(f for f in folders if isinstance(f, bytes))
        for flag in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk"):
            assert flag in listed
        _, quota = imap.getquotaroot("INBOX")
        assert b"STORAGE" in b" ".join(q for q in quota[1] if isinstance(q, bytes))
        assert b" 10240)" in b" ".join(q for q in quota[1] if isinstance(q, bytes))
    finally:
        imap.logout()


def test_pop3_login_works_and_a_wrong_password_does_not(env: Env):
    tok = token()
    send(env, [f"bob@{DOMAIN}"], tok)
    wait_for(env.maildir("bob"), tok)
    pop = poplib.POP3("127.0.0.1", env.layout.pop3_port, timeout=30)
    try:
        pop.user(f"bob@{DOMAIN}")
        pop.pass_(PASSWORDS["bob"])
        count, _ = pop.stat()
        assert count >= 1
    finally:
        pop.quit()
    pop = poplib.POP3("127.0.0.1", env.layout.pop3_port, timeout=30)
    try:
        pop.user(f"bob@{DOMAIN}")
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong-password")
    finally:
        pop.close()


def test_an_inactive_mailbox_is_refused_at_rcpt_and_cannot_log_in(env: Env):
    code, text = rcpt(env, f"carol@{DOMAIN}")
    assert code == 550 and "5.1.1" in text
    code, _ = rcpt(env, f"carol+tag@{DOMAIN}")
    assert code == 550
    imap = imaplib.IMAP4("127.0.0.1", env.layout.imap_port, timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="disabled"):
            imap.login(f"carol@{DOMAIN}", PASSWORDS["carol"])
    finally:
        imap.shutdown()


def test_every_address_of_an_inactive_domain_is_refused(env: Env):
    for address in ("dave@off.test", "anyone@off.test"):
        code, text = rcpt(env, address)
        assert code == 550 and "5.1.2" in text


def test_relaying_for_an_unauthenticated_client_is_refused(env: Env):
    code, _ = rcpt(env, "someone@foreign.example")
    assert code == 554


def test_submission_needs_authentication_and_then_delivers(env: Env):
    code, _ = rcpt(env, f"bob@{DOMAIN}", port=env.layout.submission_port)
    assert code == 554
    tok = token()
    with smtplib.SMTP("127.0.0.1", env.layout.submission_port, timeout=30) as smtp:
        smtp.login(f"alice@{DOMAIN}", PASSWORDS["alice"])
        assert smtp.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], message(tok)) == {}
    wait_for(env.maildir("bob"), tok)


def test_a_new_alias_is_live_right_after_apply_and_reload(env: Env):
    state = build_state((Alias(source=f"sales@{DOMAIN}", destination=(f"bob@{DOMAIN}",)),))
    report = apply(render(state, env.layout), env.layout)
    assert report.ok, report.log
    assert list(report.changed) == ["etc/postfix/virtual_aliases"]
    assert env.stack.reload(report.daemons) == {"postfix": "reloaded"}
    tok = token()
    send(env, [f"sales@{DOMAIN}"], tok)
    wait_for(env.maildir("bob"), tok)
    assert find(env.maildir("alice"), tok) == []  # not the catch-all any more


@pytest.mark.parametrize(
    ("rel", "fault", "step"),
    [
        (MAIN_CF, "smtpd_recipient_limit = lots\n", "smtpd -S"),
        (DOVECOT_CONF, "protocolz = imap\n", "doveconf -n"),
    ],
)
def test_a_broken_candidate_is_refused_and_mail_still_flows(
    env: Env, rel: str, fault: str, step: str
):
    live_before = {p: sha256((env.layout.root / p).read_text()) for p in (MAIN_CF, DOVECOT_CONF)}
    files = render(build_state(), env.layout)
    files[rel] += fault
    report = apply(files, env.layout)
    assert not report.ok
    assert report.step == step, report.log
    assert {p: sha256((env.layout.root / p).read_text()) for p in live_before} == live_before
    # Reloading now reloads the still-valid live config.
    assert set(env.stack.reload(["postfix", "dovecot"]).values()) == {"reloaded"}
    tok = token()
    send(env, [f"alice@{DOMAIN}"], tok)
    wait_for(env.maildir("alice"), tok)
    imap = imaplib.IMAP4("127.0.0.1", env.layout.imap_port, timeout=30)
    try:
        assert imap.login(f"alice@{DOMAIN}", PASSWORDS["alice"])[0] == "OK"
    finally:
        imap.logout()


def dkim_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_a_second_stack_signs_reports_status_and_stops_without_leftovers():
    """Its own root and ports, OpenDKIM too when installed (a key in the rendered tables)."""
    root = Path(tempfile.mkdtemp(prefix="mailpanel-", dir="/tmp"))
    os.chmod(root, 0o755)
    layout = Layout(
        root=root,
        smtp_port=free_port(),
        submission_port=free_port(),
        imap_port=free_port(),
        pop3_port=free_port(),
        milter_port=free_port(),
        dkim=bool(which("opendkim")),
    )
    state = MailState(domains=(Domain(id=1, name=DOMAIN),), mailboxes=(MAILBOXES[0],))
    key_rel = f"etc/opendkim/keys/{DOMAIN}.s1.pem"
    files = render(state, layout, [(DOMAIN, "s1", str(root / key_rel))] if layout.dkim else [])
    if layout.dkim:
        files[key_rel] = dkim_key()
    stack = MailStack(layout)
    pids: list[int | None] = []
    try:
        report = apply(files, layout)
        assert report.ok, report.log
        stack.start()
        status = stack.status()
        wanted = ["dovecot", "postfix"] + (["opendkim"] if layout.dkim else [])
        assert all(status[name].running for name in wanted), status
        pids = [status[name].pid for name in wanted]
        tok = token()
        with smtplib.SMTP("127.0.0.1", layout.smtp_port, timeout=30) as smtp:
            sender = f"alice@{DOMAIN}"
            assert smtp.sendmail(sender, [f"alice@{DOMAIN}"], message(tok, sender)) == {}
        delivered = wait_for(layout.mail_root / DOMAIN / "alice" / "Maildir", tok).read_text()
        if layout.dkim:  # signed by the From: domain, from the rendered KeyTable/SigningTable
            assert f"d={DOMAIN}; s=s1;" in delivered.replace("\n\t", " ")
        with pytest.raises(StackError, match="already running"):
            stack.start()
        # A fresh object (an agent restarted) finds the daemons by their pid files.
        other = MailStack(layout)
        running = {name: s.pid for name, s in other.status().items() if s.running}
        assert running == dict(zip(wanted, pids, strict=True))
        other.stop()
        assert not any(s.running for s in other.status().values())
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not any(s.running for s in stack.status().values())
    assert all(session_members(pid) == [] for pid in pids if pid is not None)
