"""Helpers of the backup / restore / time-travel / revert tests: a second install, a state that
touches every table a backup holds, and everything the API shows of it."""

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from api.app import create_app
from commands.keys import self_signed
from commands.log import EventLog
from core.settings import Settings
from projections.runner import Projector
from tests.api.helpers import domain, mailbox
from tests.conftest import ADMIN_PASSWORD, API_KEY
from workers.nats_server import EmbeddedNats

PASSWORDS = ("S3cret-pass", "Bob-s3cret-2", "N3w-carol-pw")


def settings_for(tmp_path: Path, nats_url: str, name: str) -> Settings:
    from workers.config import load_settings

    env = {
        "MAILPANEL_NATS_URL": nats_url,
        "MAILPANEL_API_KEY": API_KEY,
        "MAILPANEL_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MAILPANEL_HOST_IPS": "192.0.2.10,192.0.2.11",
        "MAILPANEL_RATE_LIMIT_API": "100000",
        "MAILPANEL_MAILSTACK": "off",
        "MAILPANEL_RATE_LIMIT_LOGIN": "1000",
    }
    return load_settings(str(tmp_path / name), "127.0.0.1:0", env=env, announce=False)


@contextlib.asynccontextmanager
async def fresh_install(tmp_path: Path, name: str = "fresh") -> AsyncIterator[Any]:
    """Another install: its own nats-server (empty stream) and data dir."""
    server = EmbeddedNats(tmp_path / f"{name}-nats", port=0)
    server.start()
    try:
        app = create_app(settings_for(tmp_path, server.url, name))
        async with AsyncTestClient(app=app) as client:
            client.headers["X-API-Key"] = API_KEY
            yield client
    finally:
        server.stop()


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def populate(client: Any) -> dict[str, int]:
    """Domains (one deleted, leaving gaps in the ids), mailboxes with and without a quota and
    a changed password, aliases (a catch-all), all three tiers, domain and mailbox overrides,
    whitelist entries, a DKIM key and an uploaded TLS certificate."""
    gone = await domain(client, "gone.example")
    await mailbox(client, gone, "zed")
    example = await domain(client, "example.com")
    other = await domain(client, "other.org")
    await ok(await client.delete(f"/api/v1/domains/{gone}"))
    await ok(await client.patch(f"/api/v1/domains/{other}", json={"outgoing_ip": "192.0.2.11"}))
    alice = await mailbox(client, example, "alice", quota=5_000_000)
    bob = await mailbox(client, example, "bob", password=PASSWORDS[1])
    carol = await mailbox(client, other, "carol")
    await ok(
        await client.patch(
            f"/api/v1/mailboxes/{carol['id']}/password", json={"password": PASSWORDS[2]}
        )
    )
    await ok(await client.patch(f"/api/v1/mailboxes/{bob['id']}", json={"active": False}))
    info = await ok(
        await client.post(
            "/api/v1/aliases",
            json={"source": "info@example.com", "destination": "alice@example.com, bob@x.test"},
        ),
        201,
    )
    await ok(
        await client.post(
            "/api/v1/aliases", json={"source": "@other.org", "destination": "carol@other.org"}
        ),
        201,
    )
    await ok(await client.put("/api/v1/config/global", json={"message_size_limit": 12345678}))
    await ok(await client.put("/api/v1/config/mailbox-defaults", json={"quota_bytes": 2048}))
    await ok(
        await client.put(
            f"/api/v1/domains/{example}/overrides",
            json={"dmarc_policy": "reject", "max_mailboxes": 10},
        )
    )
    await ok(
        await client.put(
            f"/api/v1/mailboxes/{alice['id']}/overrides", json={"spam_action": "reject"}
        )
    )
    await ok(
        await client.post(
            "/api/v1/antispam/whitelist", json={"entry_type": "ip", "value": "192.0.2.99"}
        )
    )
    await ok(
        await client.post(
            "/api/v1/antispam/whitelist",
            json={"entry_type": "domain", "value": "trusted.example", "note": "partner"},
        )
    )
    await ok(await client.post("/api/v1/dkim/generate", json={"domain": "example.com"}), 201)
    cert, key = self_signed("mail.example.com", datetime.now(UTC), days=90)
    await ok(
        await client.post(
            "/api/v1/tls/upload",
            files={
                "hostname": (None, "mail.example.com"),
                "cert_pem": (None, cert),
                "key_pem": (None, key),
            },
        )
    )
    return {
        "example": example,
        "other": other,
        "gone": gone,
        "alice": alice["id"],
        "bob": bob["id"],
        "carol": carol["id"],
        "info": info["id"],
    }


def _without(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


async def everything(client: Any, ignore: tuple[str, ...] = ("cert_path", "key_path")) -> Any:
    """Every list and single GET of what a backup holds (key file paths, which name the
    install's own data dir, left out by default)."""
    out: dict[str, Any] = {}
    for what in ("domains", "mailboxes", "aliases"):
        body = await ok(await client.get(f"/api/v1/{what}", params={"limit": 500}))
        out[what] = body
        for row in body["data"]:
            out[f"{what}/{row['id']}"] = await ok(await client.get(f"/api/v1/{what}/{row['id']}"))
            if what != "aliases":
                for view in ("overrides", "effective"):
                    url = f"/api/v1/{what}/{row['id']}/{view}"
                    out[url] = await ok(await client.get(url))
    for url in (
        "/api/v1/config/global",
        "/api/v1/config/domain-defaults",
        "/api/v1/config/mailbox-defaults",
        "/api/v1/config/antispam",
        "/api/v1/antispam/whitelist",
        "/api/v1/tls/certs",
        "/api/v1/dkim/list",
    ):
        out[url] = await ok(await client.get(url))
    return _without(out, ignore)


async def events(client: Any, **params: Any) -> list[dict[str, Any]]:
    body = await ok(await client.get("/api/v1/events", params={"limit": 500, **params}))
    rows: list[dict[str, Any]] = body["data"]
    return rows


def applied(client: Any) -> int:
    """The read model's checkpoint of the install behind `client`."""
    return int(client.app.state.runtime.projector.applied)


async def rebuild_until(settings: Settings, path: Path, upto: int) -> None:
    """A fresh projector fed the log's first `upto` messages straight from NATS."""
    event_log = await EventLog.connect(settings.nats_url)
    projector = Projector(path)
    try:
        raw = []
        for seq in range(1, upto + 1):
            msg = await event_log.js.get_msg(event_log.stream, seq)
            assert msg.data is not None and msg.subject is not None
            raw.append((seq, msg.subject, msg.data))
        await projector.apply_raw(raw)
    finally:
        await projector.stop()
        await event_log.close()
