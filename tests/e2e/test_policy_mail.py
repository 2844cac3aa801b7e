# ruff: noqa: F811  (the stack fixture is imported from the mail e2e module and used by name)
"""Mail policy through the API on the real sandbox stack: each setting changed through the
API changes what Postfix and Dovecot do (login services, Sieve vacation and forwarding)."""

import asyncio
import imaplib
import poplib
import smtplib

import pytest

from tests.e2e.test_mail_through_api import PASSWORD, Stack, data_root, stack  # noqa: F401
from workers.config import mailstack_available
from workers.reconcile.agent import SIEVE_PLUGIN

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
