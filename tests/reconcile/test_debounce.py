"""The agent debounces: a burst of 1,000 events after it has started gives a handful of apply
runs, not 1,000, and the last run leaves every event of the burst in the rendered files.

No daemons: MAILPANEL_MAILSTACK=none renders and applies into the data dir only (validation
uses the Postfix/Dovecot tools where installed and skips them elsewhere). A real nats-server
carries real envelopes; runs are counted twice, by wrapping Agent.reconcile and by the
`agent.reconciled` reports the agent appends to the stream. Every wait is bounded; nothing
asserts on durations.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.api import PubAck

from commands.log import EventLog
from core.events import AliasCreated, DomainCreated, Envelope, Meta, encode
from core.settings import Settings
from core.subjects import address_subject, agent_subject, domain_subject
from workers.config import load_settings
from workers.nats_server import EmbeddedNats
from workers.reconcile.agent import DEBOUNCE_S, Agent, Outcome
from workers.reconcile.layout import POSTFIX_DIR

BURST = 1_000
DOMAINS = 10  # 100 aliases each: the default cap (max_aliases 100) refuses none
CHUNK = 20
PAUSE_S = DEBOUNCE_S / 15  # well inside the debounce: the burst never goes quiet
MAX_RUNS = 5
QUIET_S = 4 * DEBOUNCE_S  # no run started or running this long: nothing is pending
WAIT_S = 30.0
META = Meta(actor="test", actor_id="test", at=datetime(2026, 5, 2, 3, 11, 42, tzinfo=UTC))


@dataclass
class Runs:
    """Agent.reconcile calls: when each started and finished, and what it reported."""

    started: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    running: int = 0

    def wrap(
        self, reconcile: Callable[[bool], Awaitable[Outcome]]
    ) -> Callable[[bool], Awaitable[Outcome]]:
        async def counted(dry_run: bool = False) -> Outcome:
            self.started.append(time.monotonic())
            self.running += 1
            try:
                outcome = await reconcile(dry_run)
            finally:
                self.running -= 1
            self.outcomes.append(outcome)
            return outcome

        return counted

    async def quiet(self, timeout: float = WAIT_S) -> None:
        """Until no run has started or been running for QUIET_S (a pending change would have
        started one by then: the debounce is shorter)."""
        deadline = time.monotonic() + timeout
        calm_since = time.monotonic()
        while time.monotonic() < deadline:
            last = self.started[-1] if self.started else 0.0
            if self.running:
                calm_since = time.monotonic()
            elif time.monotonic() - max(calm_since, last) >= QUIET_S:
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"the agent never went quiet in {timeout} s ({len(self.started)} runs)")


@dataclass
class Harness:
    settings: Settings
    event_log: EventLog
    agent: Agent
    runs: Runs
    domains: list[tuple[int, str]]

    @property
    def report_subject(self) -> str:
        return agent_subject(self.agent.host, self.event_log.prefix)

    async def reports(self) -> int:
        """How many `agent.reconciled` reports this agent has appended to the stream."""
        subject = self.report_subject
        info = await self.event_log.js.stream_info(self.event_log.stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def applied(self, seq: int, timeout: float = WAIT_S) -> Outcome:
        """Until the agent's last run applied the read model at `seq` or later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.agent.last
            if last is not None and last.applied_seq >= seq:
                return last
            await asyncio.sleep(0.02)
        pytest.fail(f"the agent did not apply up to {seq} in {timeout} s: {self.agent.last}")


@pytest.fixture
async def harness(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """A started agent in none mode, with DOMAINS domains applied and the agent quiet."""
    env = {
        "MAILPANEL_NATS_URL": nats_server.url,
        "MAILPANEL_MAILSTACK": "none",
        "MAILPANEL_API_KEY": "test-api-key-0123456789",
        "MAILPANEL_ADMIN_PASSWORD": "admin-pass-123",
        "MAILPANEL_HOST_IPS": "192.0.2.10",
        "MAILPANEL_AGENT_HOST": "debounce-test",
    }
    settings = load_settings(str(tmp_path / "data"), "127.0.0.1:0", env=env, announce=False)
    assert settings.mailstack == "none"
    event_log = await EventLog.connect(nats_server.url)
    agent: Agent | None = None
    try:
        domains = []
        for i in range(DOMAINS):
            name = f"d{i}.debounce.example.com"
            envelope = Envelope(meta=META, event=DomainCreated(name=name))
            ack = await event_log.js.publish(domain_subject(name), encode(envelope))
            domains.append((int(ack.seq), name))
        agent = Agent(settings)
        runs = Runs()
        monkeypatch.setattr(agent, "reconcile", runs.wrap(agent.reconcile))
        await asyncio.wait_for(agent.start(event_log), WAIT_S)
        h = Harness(settings, event_log, agent, runs, domains)
        await h.applied(domains[-1][0])
        await runs.quiet()
        yield h
    finally:
        if agent is not None:
            await asyncio.wait_for(agent.stop(), WAIT_S)
        await event_log.close()


async def publish_burst(event_log: EventLog, domains: list[tuple[int, str]]) -> tuple[int, str]:
    """BURST AliasCreated envelopes in chunks of CHUNK, a pause far shorter than the debounce
    between chunks (as a client creating aliases back to back would send them), so the agent's
    projector applies them in many batches; (last seq, last source)."""
    last_seq, source = 0, ""
    for start in range(0, BURST, CHUNK):
        pending: list[asyncio.Future[PubAck]] = []
        for n in range(start, min(start + CHUNK, BURST)):
            domain_id, name = domains[n % len(domains)]
            source = f"burst{n}@{name}"
            event = AliasCreated(domain_id=domain_id, source=source, destination="x@example.org")
            payload = encode(Envelope(meta=META, event=event))
            pending.append(await event_log.js.publish_async(address_subject(source), payload))
        # An ack answered with an error never resolves (nats-py 2.16): every wait is bounded.
        acks = await asyncio.wait_for(asyncio.gather(*pending), WAIT_S)
        last_seq = max(last_seq, *(int(ack.seq) for ack in acks))
        await asyncio.sleep(PAUSE_S)
    return last_seq, source


async def test_given_a_started_agent_when_1000_events_burst_in_then_a_few_runs_apply_all(
    harness: Harness,
):
    # given: the agent is up, has applied its domains and is idle
    runs_before = len(harness.runs.started)
    reports_before = await harness.reports()
    batches: list[set[str]] = []

    async def applied_batch(tags: set[str]) -> None:
        batches.append(tags)

    harness.agent.projector.listeners.append(applied_batch)

    # when: a burst of 1,000 alias creations arrives
    last_seq, last_source = await publish_burst(harness.event_log, harness.domains)
    final = await harness.applied(last_seq)
    await harness.runs.quiet()

    # then: the agent heard of the burst many times (one per batch its projector applied) ...
    alias_batches = sum(1 for tags in batches if "alias.created" in tags)
    assert alias_batches > MAX_RUNS, f"the burst reached the agent in {alias_batches} batches"
    # ... but ran a handful of times, not once per event or batch, each run reported
    burst_runs = harness.runs.outcomes[runs_before:]
    assert 1 <= len(burst_runs) <= MAX_RUNS, [(o.applied_seq, o.step) for o in burst_runs]
    assert len(burst_runs) < BURST // 100
    assert all(o.ok for o in burst_runs), [(o.step, o.error) for o in burst_runs]
    assert await harness.reports() - reports_before == len(burst_runs)

    # and then: the last run saw the whole burst, and the rendered map holds the last alias
    # (>=: the agent's own reports share the stream and may follow the burst's last event)
    assert harness.runs.outcomes[-1].applied_seq >= final.applied_seq >= last_seq
    virtual_aliases = harness.settings.data_dir / "mailstack" / POSTFIX_DIR / "virtual_aliases"
    lines = virtual_aliases.read_text().splitlines()
    assert f"{last_source} x@example.org" in lines
    assert sum(1 for line in lines if line.startswith("burst")) == BURST
