"""Real mail through the real stack, driven only through the API: `mailpanel serve` runs the
reconcile agent in sandbox mode (Postfix, Dovecot, OpenDKIM under its data dir on loopback
ports); what the API creates must be what SMTP delivers and IMAP serves."""

import asyncio
import imaplib
import shutil
import smtplib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Procs, Server, api
from workers.config import mailstack_available
from workers.nats_server import free_ports

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not mailstack_available(),
        reason="needs root and Postfix + Dovecot (make test installs them as root)",
    ),
]

PASSWORD = "S3cret-pass"


class Stack:
    def __init__(
        self, server: Server, client: httpx.AsyncClient, ports: dict[str, int], mail_root: Path
    ) -> None:
        self.server, self.client, self.ports, self.mail_root = server, client, ports, mail_root

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def live(self, timeout: float = 20.0) -> None:
        """Until the agent has applied everything written so far (lag 0, last run ok)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            status = (await self.client.get("/api/v1/system/reconcile/status")).json()
            agents = status["data"]
            if agents and agents[0]["lag"] == 0 and agents[0]["ok"]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent not caught up: {status}")

    def send(self, to: str, subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=15) as smtp:
            smtp.sendmail("sender@example.org", [to], f"Subject: {subject}\r\n\r\nbody\r\n")

    def maildir(self, domain: str, local: str) -> Path:
        return self.mail_root / domain / local / "Maildir"

    async def delivered(self, domain: str, local: str, subject: str, timeout: float = 15) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            new = self.maildir(domain, local) / "new"
            if new.is_dir() and any(subject.encode() in p.read_bytes() for p in new.iterdir()):
                return True
            await asyncio.sleep(0.1)
        return False

    def imap_login(self, user: str, password: str) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=15)
        imap.login(user, password)
        return imap


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A traversable (0755) directory: pytest's tmp chain is 0700 and the daemons' users
    could not reach their files in it."""
    root = Path(tempfile.mkdtemp(prefix="mp-e2e-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def stack(procs: Procs, data_root: Path) -> AsyncIterator[Stack]:
    names = ("smtp", "submission", "imap", "pop3", "milter", "policy", "filter", "reinject")
    wanted = (*names, "spamd", "clamd")
    ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
    env = {
        **{f"MAILPANEL_{name.upper()}_PORT": str(ports[name]) for name in ports},
        "MAILPANEL_MAILSTACK": "sandbox",
    }
    data_dir = data_root / "data"
    server = procs.serve(data_dir, None, name="serve-sandbox", env=env)
    await server.wait_healthy(timeout=60)
    async with api(server) as client:
        yield Stack(server, client, ports, data_dir / "mail")


async def test_mail_lands_for_a_mailbox_an_alias_and_a_multi_destination_alias(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    for user in ("alice", "bob"):
        await stack.post(
            "/api/v1/mailboxes", {"domain_id": domain["id"], "username": user, "password": PASSWORD}
        )
    await stack.post(
        "/api/v1/aliases", {"source": "info@example.test", "destination": "alice@example.test"}
    )
    await stack.post(
        "/api/v1/aliases",
        {"source": "team@example.test", "destination": "alice@example.test, bob@example.test"},
    )
    await stack.live()
    stack.send("alice@example.test", "to-alice")
    stack.send("info@example.test", "to-info")
    stack.send("team@example.test", "to-team")
    assert await stack.delivered("example.test", "alice", "to-alice")
    assert await stack.delivered("example.test", "alice", "to-info")
    assert await stack.delivered("example.test", "alice", "to-team")
    assert await stack.delivered("example.test", "bob", "to-team")
    imap = stack.imap_login("alice@example.test", PASSWORD)
    imap.select("INBOX")
    assert len(imap.search(None, "ALL")[1][0].split()) == 3
    imap.logout()


async def test_a_new_password_opens_imap_and_the_old_one_no_longer_does(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    box = await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "carol", "password": PASSWORD}
    )
    await stack.live()
    stack.imap_login("carol@example.test", PASSWORD).logout()
    response = await stack.client.patch(
        f"/api/v1/mailboxes/{box['id']}/password", json={"password": "another-pass-2"}
    )
    assert response.status_code == 200
    await stack.live()
    with pytest.raises(imaplib.IMAP4.error):
        stack.imap_login("carol@example.test", PASSWORD)
    stack.imap_login("carol@example.test", "another-pass-2").logout()


async def test_a_deactivated_mailbox_refuses_mail_and_logins(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    box = await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "dave", "password": PASSWORD}
    )
    await stack.client.patch(f"/api/v1/mailboxes/{box['id']}", json={"active": False})
    await stack.live()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        stack.send("dave@example.test", "to-dave")
    assert refused.value.recipients["dave@example.test"][0] == 550
    with pytest.raises(imaplib.IMAP4.error):
        stack.imap_login("dave@example.test", PASSWORD)


async def test_a_deleted_mailbox_loses_its_maildir(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    box = await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "erin", "password": PASSWORD}
    )
    await stack.live()
    assert stack.maildir("example.test", "erin").is_dir()
    for folder in (".Sent", ".Drafts", ".Trash", ".Junk"):
        assert (stack.maildir("example.test", "erin") / folder / "cur").is_dir()
    await stack.client.delete(f"/api/v1/mailboxes/{box['id']}")
    await stack.live()
    assert not stack.maildir("example.test", "erin").exists()


async def test_dry_run_shows_the_validated_diff_and_applies_nothing(stack: Stack):
    before = (await stack.client.post("/api/v1/system/reconcile?dry_run=true")).json()
    assert before["message"].startswith("dry run: 0 file")
    response = await stack.client.post("/api/v1/system/reconcile")
    assert response.status_code == 200 and response.json()["message"] == "mail config applied"


async def test_queue_routes_answer_and_never_take_all(stack: Stack):
    listed = (await stack.client.get("/api/v1/postfix/queue")).json()
    assert listed["meta"]["page"] == 1 and isinstance(listed["data"], list)
    assert (await stack.client.post("/api/v1/postfix/flush")).json() == {"message": "queue flushed"}
    for bad in ("ALL", "../x", "", "A B"):
        response = await stack.client.post("/api/v1/postfix/queue/delete", json={"message_id": bad})
        assert response.status_code == 400, bad
    missing = await stack.client.post(
        "/api/v1/postfix/queue/delete", json={"message_id": "ABCDEF1234"}
    )
    assert missing.status_code == 404


async def test_received_mail_is_counted(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "fay", "password": PASSWORD}
    )
    await stack.live()
    stack.send("fay@example.test", "count-me")
    assert await stack.delivered("example.test", "fay", "count-me")
    stats = (await stack.client.get("/api/v1/stats/mail")).json()
    assert stats["recv_1h"] >= 1 and stats["recv_24h"] >= stats["recv_1h"]


async def test_daemon_status_routes_report_running(stack: Stack):
    for name in ("postfix", "dovecot"):
        body = (await stack.client.get(f"/api/v1/{name}/status")).json()
        assert body == {"name": name, "status": "running", "message": ""}


async def test_an_authenticated_submission_is_delivered_and_counted_as_sent(stack: Stack):
    # Given a mailbox with an API-set password
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "gus", "password": PASSWORD}
    )
    await stack.live()
    # When it sends over the submission port with SASL (AUTH PLAIN through Dovecot)
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.login("gus@example.test", PASSWORD)
        smtp.sendmail(
            "gus@example.test", ["gus@example.test"], "Subject: sent-by-gus\r\n\r\nhi\r\n"
        )
    # Then the message is delivered and the stats count it as sent
    assert await stack.delivered("example.test", "gus", "sent-by-gus")
    stats = (await stack.client.get("/api/v1/stats/mail")).json()
    assert stats["sent_1h"] >= 1 and stats["sent_24h"] >= stats["sent_1h"]


async def test_submission_refuses_a_wrong_password(stack: Stack):
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "hal", "password": PASSWORD}
    )
    await stack.live()
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("hal@example.test", "not-the-password")


async def test_after_a_sigkill_a_restart_takes_over_the_left_daemons_and_mail_flows(stack: Stack):
    # Given a running sandbox, killed outright (its Postfix and Dovecot keep running)
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    await stack.live()
    stack.server.kill()
    # When it is started again on the same data dir
    stack.server.start()
    await stack.server.wait_healthy(timeout=60)
    await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "kai", "password": PASSWORD}
    )
    await stack.live()
    # Then the new agent runs the stack and a change made now is live
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        try:
            stack.send("kai@example.test", "after-sigkill")
            break
        except (OSError, smtplib.SMTPException):
            await asyncio.sleep(0.3)
    assert await stack.delivered("example.test", "kai", "after-sigkill")
    status = (await stack.client.get("/api/v1/postfix/status")).json()
    assert status["status"] == "running"
