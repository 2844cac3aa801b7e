# ruff: noqa: F811  (the stack fixture is imported from the mail e2e module and used by name)
"""Mail policy through the API on the real sandbox stack: each setting changed through the
API changes what Postfix and Dovecot do (login services, Sieve vacation and forwarding)."""

import asyncio
import contextlib
import imaplib
import poplib
import smtplib
import ssl
from pathlib import Path

import pytest

from tests.e2e.test_mail_through_api import PASSWORD, Stack, data_root, stack  # noqa: F401
from workers.config import mailstack_available
from workers.reconcile.agent import SIEVE_PLUGIN
from workers.reconcile.validate import which

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not mailstack_available(),
        reason="needs root and Postfix + Dovecot (make test installs them as root)",
    ),
]
needs_sieve = pytest.mark.skipif(not SIEVE_PLUGIN.exists(), reason="dovecot-sieve not installed")


async def mailboxes(stack: Stack, *names: str) -> dict[str, int]:
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    out = {}
    for name in names:
        body = {"domain_id": domain["id"], "username": name, "password": PASSWORD}
        out[name] = (await stack.post("/api/v1/mailboxes", body))["id"]
    return out


async def override(stack: Stack, mailbox_id: int, **values: object) -> None:
    r = await stack.client.put(f"/api/v1/mailboxes/{mailbox_id}/overrides", json=values)
    assert r.status_code == 200, r.text
    await stack.live()


def submit(stack: Stack, sender: str, to: str, subject: str) -> None:
    message = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.login(sender, PASSWORD)
        smtp.sendmail(sender, [to], message)


async def listening(port: int, timeout: float = 60.0) -> None:
    """Until something accepts connections on the port (the agent starts Postfix last)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def arrived(new: Path, text: str, timeout: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if new.is_dir() and any(text.encode() in p.read_bytes() for p in new.iterdir()):
            return True
        await asyncio.sleep(0.1)
    return False


async def count(stack: Stack, local: str, text: str, timeout: float = 10.0) -> int:
    """Messages in local's INBOX containing text, once the count has been stable for 1 s."""
    deadline = asyncio.get_running_loop().time() + timeout
    last, stable_since = -1, asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() < deadline:
        new = stack.maildir("example.test", local) / "new"
        n = sum(1 for p in new.iterdir() if text.encode() in p.read_bytes()) if new.is_dir() else 0
        if n != last:
            last, stable_since = n, asyncio.get_running_loop().time()
        elif n and asyncio.get_running_loop().time() - stable_since > 1.0:
            return n
        await asyncio.sleep(0.1)
    return last


async def test_imap_is_refused_when_enabled_imap_is_false(stack: Stack):
    # Given a mailbox that logs in over IMAP
    ids = await mailboxes(stack, "amy")
    await stack.live()
    stack.imap_login("amy@example.test", PASSWORD).logout()
    # When its enabled_imap is set to false
    await override(stack, ids["amy"], enabled_imap=False)
    # Then IMAP refuses it, with the right password
    with pytest.raises(imaplib.IMAP4.error):
        stack.imap_login("amy@example.test", PASSWORD)


async def test_pop3_follows_enabled_pop3(stack: Stack):
    # Given the default (enabled_pop3 false): POP3 refuses the mailbox
    ids = await mailboxes(stack, "pat")
    await stack.live()

    def pop_login() -> None:
        pop = poplib.POP3("127.0.0.1", stack.ports["pop3"], timeout=15)
        try:
            pop.user("pat@example.test")
            pop.pass_(PASSWORD)
        finally:
            pop.quit()

    with pytest.raises(poplib.error_proto):
        pop_login()
    # When enabled for this mailbox, the same login works
    await override(stack, ids["pat"], enabled_pop3=True)
    pop_login()


async def test_submission_is_refused_when_enabled_smtp_is_false(stack: Stack):
    ids = await mailboxes(stack, "sam")
    await override(stack, ids["sam"], enabled_smtp=False)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(stack, "sam@example.test", "sam@example.test", "not-sent")


@needs_sieve
async def test_a_vacation_reply_is_sent_once_per_sender(stack: Stack):
    # Given alice on vacation and bob writing to her twice
    ids = await mailboxes(stack, "alice", "bob")
    await override(
        stack, ids["alice"], vacation_enabled=True, vacation_message="Back on Monday.\nAlice"
    )
    submit(stack, "bob@example.test", "alice@example.test", "question-one")
    assert await stack.delivered("example.test", "alice", "question-one")
    submit(stack, "bob@example.test", "alice@example.test", "question-two")
    assert await stack.delivered("example.test", "alice", "question-two")
    # Then bob got exactly one reply with the message
    assert await count(stack, "bob", "Back on Monday.") == 1


@needs_sieve
@pytest.mark.parametrize("keep", [True, False])
async def test_a_forward_is_delivered_with_or_without_a_local_copy(stack: Stack, keep: bool):
    # Given carol forwarding to dora, keeping a copy or not
    ids = await mailboxes(stack, "carol", "dora", "eve")
    await override(stack, ids["carol"], forward_to="dora@example.test", forward_keep_copy=keep)
    # When eve writes to carol
    submit(stack, "eve@example.test", "carol@example.test", f"forward-me-{keep}")
    # Then dora has it, and carol has it only when keeping a copy
    assert await stack.delivered("example.test", "dora", f"forward-me-{keep}")
    assert await count(stack, "carol", f"forward-me-{keep}", timeout=3.0) == (1 if keep else 0)


# ---- the policy service ------------------------------------------------------------------


def inbound(stack: Stack, sender: str, to: list[str], body: str, tls: bool = False) -> dict:
    """Send over the port-25 smtpd; returns smtplib's refused-recipients dict."""
    message = f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: inbound\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as smtp:
        if tls:
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            smtp.starttls(context=ctx)
        return smtp.sendmail(sender, to, message)


async def domain_override(stack: Stack, **values: object) -> None:
    domains = (await stack.client.get("/api/v1/domains")).json()["data"]
    r = await stack.client.put(f"/api/v1/domains/{domains[0]['id']}/overrides", json=values)
    assert r.status_code == 200, r.text
    await stack.live()


async def test_a_domain_size_override_refuses_bigger_mail_and_accepts_smaller(stack: Stack):
    # Given a domain whose message_size_limit is 4000 bytes (the global cap is 25 MB)
    await mailboxes(stack, "fay")
    await domain_override(stack, message_size_limit=4000)
    # When a 6000-byte message arrives, then it is refused with 552 (at RCPT from the SIZE=
    # the client announces, else at the end of data)
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)) as refused:
        inbound(stack, "x@sender.example", ["fay@example.test"], "a" * 6000)
    assert "552" in str(refused.value) and "4000" in str(refused.value)
    # And a small one is delivered
    inbound(stack, "x@sender.example", ["fay@example.test"], "small-enough")
    assert await stack.delivered("example.test", "fay", "small-enough")


async def test_the_recipient_after_the_cap_is_refused(stack: Stack):
    # Given a mailbox allowed 2 recipients per message
    ids = await mailboxes(stack, "gil", "r1", "r2", "r3")
    await override(stack, ids["gil"], max_recipients_per_message=2)
    # When it submits to 3
    to = ["r1@example.test", "r2@example.test", "r3@example.test"]
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.login("gil@example.test", PASSWORD)
        refused = smtp.sendmail("gil@example.test", to, "Subject: many\r\n\r\nhi\r\n")
    # Then the third is refused and the first two get it
    assert list(refused) == ["r3@example.test"]
    assert await stack.delivered("example.test", "r2", "many")


async def test_the_daily_send_cap_holds_across_an_agent_restart(stack: Stack):
    # Given a mailbox allowed 2 messages a day that sent 2
    ids = await mailboxes(stack, "hal")
    await override(stack, ids["hal"], max_send_per_day=2)
    for n in range(2):
        submit(stack, "hal@example.test", "hal@example.test", f"daily-{n}")
    # When it sends a third, then it is refused
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)):
        submit(stack, "hal@example.test", "hal@example.test", "daily-2")
    # And after a restart of the server (and its agent) it still is
    stack.server.terminate()
    stack.server.start()
    await stack.server.wait_healthy(timeout=60)
    await stack.live()
    await listening(stack.ports["submission"])
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)):
        submit(stack, "hal@example.test", "hal@example.test", "daily-3")


async def test_plaintext_inbound_to_a_tls_only_domain_is_refused(stack: Stack):
    await mailboxes(stack, "ida")
    await domain_override(stack, require_tls_inbound=True)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        inbound(stack, "x@sender.example", ["ida@example.test"], "plain")
    inbound(stack, "x@sender.example", ["ida@example.test"], "over-starttls", tls=True)
    assert await stack.delivered("example.test", "ida", "over-starttls")


async def test_greylisting_defers_the_first_attempt_and_takes_the_retry(stack: Stack):
    # Given greylisting on for the domain with a 2 s delay
    await mailboxes(stack, "jan")
    r = await stack.client.put("/api/v1/config/global", json={"greylist_delay_seconds": 2})
    assert r.status_code == 200, r.text
    await domain_override(stack, greylisting_enabled=True)
    # When a new sender tries, then 450; a retry after the delay is accepted
    with pytest.raises(smtplib.SMTPRecipientsRefused) as first:
        inbound(stack, "new@sender.example", ["jan@example.test"], "grey")
    assert first.value.recipients["jan@example.test"][0] == 450
    await asyncio.sleep(2.5)
    inbound(stack, "new@sender.example", ["jan@example.test"], "grey-retry")
    assert await stack.delivered("example.test", "jan", "grey-retry")


async def test_a_whitelisted_sender_is_not_greylisted(stack: Stack):
    await mailboxes(stack, "kim")
    await domain_override(stack, greylisting_enabled=True)
    r = await stack.client.post(
        "/api/v1/antispam/whitelist", json={"entry_type": "domain", "value": "friend.example"}
    )
    assert r.status_code == 200, r.text
    await stack.live()
    inbound(stack, "pal@friend.example", ["kim@example.test"], "white-listed")
    assert await stack.delivered("example.test", "kim", "white-listed")


# ---- spam and virus ----------------------------------------------------------------------

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
needs_spamd = pytest.mark.skipif(
    not (which("spamd") and which("clamd")), reason="spamd/clamd not installed"
)


@needs_spamd
@pytest.mark.parametrize("action", ["tag", "quarantine", "reject"])
async def test_gtube_is_tagged_quarantined_or_rejected_per_spam_action(stack: Stack, action: str):
    # Given a domain whose spam_action is `action`, and the scanners up
    await mailboxes(stack, "lea")
    await domain_override(stack, spam_action=action)
    await listening(stack.ports["spamd"])
    await listening(stack.ports["filter"])
    # When GTUBE arrives over port 25
    if action == "reject":
        with pytest.raises(smtplib.SMTPDataError) as refused:
            inbound(stack, "x@sender.example", ["lea@example.test"], GTUBE)
        # Then it is refused on the spot
        assert refused.value.smtp_code == 550
        return
    inbound(stack, "x@sender.example", ["lea@example.test"], f"gtube-{action}\r\n{GTUBE}")
    if action == "tag":
        # Then it is delivered, flagged, and Sieve files it into Junk (auto_junk_threshold 7)
        junk = stack.maildir("example.test", "lea") / ".Junk" / "new"
        assert await arrived(junk, f"gtube-{action}")
        raw = b"".join(p.read_bytes() for p in junk.iterdir())
        assert b"X-Spam-Flag: YES" in raw
        return
    # Then it is held: listed in the quarantine, not delivered; release delivers it
    held = (await stack.client.get("/api/v1/quarantine")).json()
    assert held["meta"]["total"] == 1 and held["data"][0]["recipients"] == ["lea@example.test"]
    assert not await stack.delivered("example.test", "lea", f"gtube-{action}", timeout=2)
    qid = held["data"][0]["id"]
    r = await stack.client.post(f"/api/v1/quarantine/{qid}/release")
    assert r.status_code == 200, r.text
    maildir = stack.maildir("example.test", "lea")
    assert await arrived(maildir / "new", f"gtube-{action}") or await arrived(
        maildir / ".Junk" / "new", f"gtube-{action}"
    )
    assert (await stack.client.get("/api/v1/quarantine")).json()["meta"]["total"] == 0


@needs_spamd
async def test_an_eicar_attachment_follows_clamav_action(stack: Stack):
    # Given the default clamav_action (quarantine)
    await mailboxes(stack, "max")
    await stack.live()
    await listening(stack.ports["clamd"])
    await listening(stack.ports["filter"])
    # When a message carrying the EICAR test signature arrives
    inbound(stack, "x@sender.example", ["max@example.test"], f"virus-test\r\n{EICAR}")
    # Then it is held as a virus and can be deleted
    held = (await stack.client.get("/api/v1/quarantine")).json()["data"]
    assert held and held[0]["reason"] == "virus" and "Eicar" in (held[0]["virus"] or "")
    r = await stack.client.delete(f"/api/v1/quarantine/{held[0]['id']}")
    assert r.status_code == 200
    assert (await stack.client.get("/api/v1/quarantine")).json()["meta"]["total"] == 0


# ---- global transport settings ---------------------------------------------------------


def _tls_client(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


async def set_global(stack: Stack, **values: object) -> None:
    current = (await stack.client.get("/api/v1/config/global")).json()
    current.pop("updated_at", None)
    r = await stack.client.put("/api/v1/config/global", json={**current, **values})
    assert r.status_code == 200, r.text
    await stack.live()


async def test_submission_without_starttls_is_refused_when_require_tls_client(stack: Stack):
    # Given a mailbox that must use TLS to submit
    ids = await mailboxes(stack, "nia")
    await override(stack, ids["nia"], require_tls_client=True)
    message = "Subject: tls-only\r\n\r\nhi\r\n"
    # When it submits in plaintext, then it is refused
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.login("nia@example.test", PASSWORD)
        with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)):
            smtp.sendmail("nia@example.test", ["nia@example.test"], message)
    # And after STARTTLS the same message goes through
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.starttls(context=_tls_client())
        smtp.login("nia@example.test", PASSWORD)
        smtp.sendmail("nia@example.test", ["nia@example.test"], message)
    assert await stack.delivered("example.test", "nia", "tls-only")


async def test_tls_min_version_refuses_an_older_protocol(stack: Stack):
    await mailboxes(stack, "oli")
    await stack.live()
    # Given TLS 1.2 allowed, a TLS 1.2-only client negotiates
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=15) as smtp:
        smtp.starttls(context=_tls_client(ssl.TLSVersion.TLSv1_2))
    # When the floor is raised to TLS 1.3, then the same client fails the handshake
    await set_global(stack, tls_min_version="TLSv1.3")
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=15) as smtp:
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            smtp.starttls(context=_tls_client(ssl.TLSVersion.TLSv1_2))
    imap = imaplib.IMAP4("127.0.0.1", stack.ports["imap"], timeout=15)
    try:
        with pytest.raises((ssl.SSLError, imaplib.IMAP4.abort, ConnectionError, OSError)):
            imap.starttls(ssl_context=_tls_client(ssl.TLSVersion.TLSv1_2))
    finally:
        with contextlib.suppress(Exception):
            imap.shutdown()


async def test_relay_networks_decide_who_may_relay(stack: Stack):
    def relay_reply() -> str:
        with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=15) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("a@client.test")
            code, text = smtp.rcpt("someone@elsewhere.example")
            return f"{code} {text.decode()}"

    # Given loopback among the relay networks (the default), relaying passes the relay check
    # (the sandbox then refuses outbound delivery itself; a production host would send it)
    await mailboxes(stack, "pia")
    await stack.live()
    assert "outbound delivery is disabled in the sandbox" in relay_reply()
    # When loopback is taken out, then the relay check refuses it
    await set_global(stack, relay_networks="192.0.2.0/24")
    assert "Relay access denied" in relay_reply()


async def test_the_connection_count_limit_turns_away_an_extra_client(stack: Stack):
    # Given at most 2 connections per client (and loopback not exempt as a relay network)
    await mailboxes(stack, "quin")
    await set_global(stack, max_smtpd_connections=2, relay_networks="192.0.2.0/24")
    # When a third connection arrives while two are open
    held = [smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=15) for _ in range(2)]
    try:
        with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=15) as third:
            code, _ = third.ehlo("client.test")
        refused = code == 421
    except smtplib.SMTPServerDisconnected:
        refused = True
    except smtplib.SMTPConnectError as exc:
        refused = exc.smtp_code == 421
    finally:
        for smtp in held:
            with contextlib.suppress(Exception):
                smtp.close()
    # Then it is turned away
    assert refused
