"""System mode: the agent writes the configured system directories and reloads daemons that
already run there; it never starts or stops them.

The "system" here is a Postfix + Dovecot instance the test starts itself (MailStack) on loopback
ports, with every directory the agent writes pointed into a temporary tree (MAILPANEL_POSTFIX_DIR,
MAILPANEL_DOVECOT_DIR, MAILPANEL_OPENDKIM_DIR, MAILPANEL_VMAIL_DIR), so the host's /etc stays
untouched. Needs root and the mail-stack packages, like the other e2e tests.
"""

import asyncio
import os
import shutil
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from commands.log import EventLog
from core.events import DomainCreated, Envelope, MailboxCreated, Meta, encode
from core.subjects import address_subject, domain_subject
from workers.config import load_settings
from workers.nats_server import EmbeddedNats, free_ports
from workers.reconcile.agent import Agent, Outcome, layout_for
from workers.reconcile.layout import Layout
from workers.reconcile.stack import MailStack
from workers.reconcile.validate import which

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (which("postfix") and which("dovecot") and which("doveconf")),
        reason="Postfix/Dovecot are not installed (run .ci/mailstack-deps as root)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="running Postfix and Dovecot needs root"),
]

META = Meta(actor="test", actor_id="test", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))
WAIT_S = 30.0
SERVICES = ("POLICY", "FILTER", "REINJECT", "SPAMD", "CLAMD")
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class System:
    root: Path
    layout: Layout
    agent: Agent
    stack: MailStack
    event_log: EventLog

    async def applied(self, seq: int) -> Outcome:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            last = self.agent.last
            if last is not None and last.applied_seq >= seq:
                return last
            await asyncio.sleep(0.05)
        pytest.fail(f"the agent did not apply up to {seq}: {self.agent.last}")

    async def rcpt(self, address: str) -> int:
        """In a thread: the agent's policy service answers Postfix from this event loop."""
        return await asyncio.to_thread(self._rcpt, address)

    def _rcpt(self, address: str) -> int:
        with smtplib.SMTP("127.0.0.1", self.layout.smtp_port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("sender@client.test")
            code, _ = smtp.rcpt(address)
            return int(code)


@pytest.fixture
async def system(nats_server: EmbeddedNats) -> AsyncIterator[System]:
    root = Path(tempfile.mkdtemp(prefix="mp-sys-", dir="/tmp"))
    picked = free_ports(10)
    service_ports, stack_ports = picked[:5], picked[5:]
    os.chmod(root, 0o755)
    env = {
        "MAILPANEL_NATS_URL": nats_server.url,
        "MAILPANEL_MAILSTACK": "system",
        "MAILPANEL_API_KEY": "test-api-key-0123456789",
        "MAILPANEL_ADMIN_PASSWORD": "admin-pass-123",
        "MAILPANEL_AGENT_HOST": "system-test",
        "MAILPANEL_POSTFIX_DIR": str(root / "etc-postfix"),
        "MAILPANEL_DOVECOT_DIR": str(root / "etc-dovecot"),
        "MAILPANEL_OPENDKIM_DIR": str(root / "etc-opendkim"),
        "MAILPANEL_VMAIL_DIR": str(root / "vmail"),
        "MAILPANEL_MAIL_HOSTNAME": "mx.system.test",
        **{
            f"MAILPANEL_{name}_PORT": str(port)
            for name, port in zip(SERVICES, service_ports, strict=True)
        },
    }
    settings = load_settings(str(root / "data"), "127.0.0.1:0", env=env, announce=False)
    # The daemons' own state (queue, pid files, sockets) stays in the temporary tree too, and
    # they listen on free loopback ports instead of 25/587/143/110.
    base = layout_for(settings)
    layout = replace(
        base,
        listen="127.0.0.1",
        smtp_port=stack_ports[0],
        submission_port=stack_ports[1],
        imap_port=stack_ports[2],
        pop3_port=stack_ports[3],
        milter_port=stack_ports[4],
        vmail_uid=5000,
        vmail_gid=5000,
        paths={
            **base.paths,
            "queue_dir": root / "spool",
            "data_dir": root / "lib-postfix",
            "log_dir": root / "log",
            "dovecot_base_dir": root / "run-dovecot",
            "dovecot_state_dir": root / "lib-dovecot",
            "opendkim_run_dir": root / "run-opendkim",
        },
    )
    event_log = await EventLog.connect(nats_server.url)
    agent = Agent(settings, layout=layout)
    stack = MailStack(layout)
    try:
        await asyncio.wait_for(agent.start(event_log), WAIT_S)
        await asyncio.to_thread(stack.start)  # "the system's daemons", started by someone else
        yield System(root, layout, agent, stack, event_log)
    finally:
        await agent.stop()
        await asyncio.to_thread(stack.stop)
        await event_log.close()
        shutil.rmtree(root, ignore_errors=True)


async def publish(event_log: EventLog, subject: str, event: object) -> int:
    ack = await event_log.js.publish(subject, encode(Envelope(meta=META, event=event)))  # type: ignore[arg-type]
    return int(ack.seq)


async def test_system_mode_writes_the_configured_directories_not_the_data_dir(system: System):
    # Given an agent in system mode with its directories configured
    # Then the rendered files are where the daemons read them, and nothing is under the root
    assert (system.root / "etc-postfix" / "main.cf").is_file()
    assert (system.root / "etc-dovecot" / "dovecot.conf").is_file()
    assert (system.root / "etc-opendkim" / "opendkim.conf").is_file()
    assert not (system.layout.root / "etc").exists()
    assert system.agent.mode == "system"


async def test_a_new_mailbox_is_live_after_a_reload_of_the_running_daemons(system: System):
    # Given running daemons the agent did not start, and a domain
    seq = await publish(
        system.event_log, domain_subject("system.test"), DomainCreated(name="system.test")
    )
    await system.applied(seq)
    assert await system.rcpt("alice@system.test") >= 500
    # When a mailbox is created
    seq = await publish(
        system.event_log,
        address_subject("alice@system.test"),
        MailboxCreated(
            domain_id=seq,
            username="alice",
            address="alice@system.test",
            password_hash="{ARGON2ID}" + _hasher.hash("alice-pass-1"),
        ),
    )
    outcome = await system.applied(seq)
    # Then the agent reloaded Postfix and Postfix accepts the address, and its maildir exists
    assert any("reloaded postfix: reloaded" in line for line in outcome.log), outcome.log
    assert await system.rcpt("alice@system.test") == 250
    assert (system.root / "vmail" / "system.test" / "alice" / "Maildir" / "new").is_dir()


async def test_stopping_the_agent_leaves_the_system_daemons_running(system: System):
    # Given the agent in system mode with the daemons running
    # When the agent stops
    await system.agent.stop()
    system.agent.stop = _noop  # type: ignore[method-assign]  # the fixture stops it again
    # Then Postfix and Dovecot are still running
    status = system.stack.status()
    assert status["postfix"].running and status["dovecot"].running


async def _noop() -> None:
    return None
