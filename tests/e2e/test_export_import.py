"""Disaster recovery end to end: a log written through a real `mailpanel serve` is exported
(`mailpanel export`, and GET /api/v1/events/export), imported into a fresh data dir with its
own embedded nats-server (`mailpanel import`), and a `mailpanel serve` there answers every GET
exactly as the original does, ids included; `--until` gives the state at that point."""

import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.events import EventsController
from core.settings import Settings
from tests.conftest import ADMIN_PASSWORD, API_KEY
from tests.e2e.conftest import (
    Procs,
    Server,
    api,
    base_env,
    list_all,
    mailpanel_binary,
    stream_last_seq,
)
from workers.export import EXPECTED_LAST_SEQUENCE, Line
from workers.nats_server import EmbeddedNats

pytestmark = pytest.mark.slow

PASSWORDS = ("Alice-Plain-Pw-1", "Bob-Plain-Pw-22", "Carol-Plain-Pw-333", "Alice-Changed-Pw-4444")
LISTS = ("domains", "mailboxes", "aliases", "antispam/whitelist", "admin/tokens", "dkim/list")
SINGLES = (
    "/api/v1/config/global",
    "/api/v1/config/domain-defaults",
    "/api/v1/config/mailbox-defaults",
    "/api/v1/config/antispam",
    "/api/v1/security/settings",
)
CLI_TIMEOUT_S = 120.0
decoder = msgspec.json.Decoder(Line)


def cli(args: list[str], nats_url: str | None) -> subprocess.CompletedProcess[str]:
    """One `mailpanel` command to completion (bounded); its exit code and output."""
    return subprocess.run(
        [mailpanel_binary(), *args],
        env=base_env(nats_url),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


async def state(server: Server) -> dict[str, Any]:
    """Every list and every single GET of what the log holds; the server's data dir (in file
    paths such as a DKIM key's) reads as <DIR>, as it is the deployment's, not the log's."""
    seen: dict[str, Any] = {}
    async with api(server) as c:
        for what in LISTS:
            seen[what] = await list_all(c, what)
        for path in SINGLES:
            response = await c.get(path)
            assert response.status_code == 200, (path, response.text)
            seen[path] = response.json()
        for what, extra in (
            ("domains", ("", "/overrides", "/effective")),
            ("mailboxes", ("", "/overrides", "/effective")),
            ("aliases", ("",)),
        ):
            for row in seen[what]:
                for suffix in extra:
                    path = f"/api/v1/{what}/{row['id']}{suffix}"
                    response = await c.get(path)
                    assert response.status_code == 200, (path, response.text)
                    seen[path] = response.json()
        for key in seen["dkim/list"]:
            params = {"domain": key["domain"], "selector": key["selector"]}
            response = await c.get("/api/v1/dkim", params=params)
            assert response.status_code == 200, response.text
            seen[f"dkim {key['domain']} {key['selector']}"] = response.json()
    text = msgspec.json.encode(seen).decode().replace(str(server.data_dir), "<DIR>")
    result: dict[str, Any] = msgspec.json.decode(text)
    return result


async def call(c: httpx.AsyncClient, method: str, path: str, body: object = None) -> Any:
    response = await c.request(method, path, json=body)
    assert response.status_code in (200, 201), f"{method} {path}: {response.text}"
    return response.json()


async def first_half(c: httpx.AsyncClient) -> None:
    one = await call(c, "POST", "/api/v1/domains", {"name": "one.example"})
    two = await call(c, "POST", "/api/v1/domains", {"name": "two.example"})
    for domain, user, password in ((one, "alice", PASSWORDS[0]), (two, "bob", PASSWORDS[1])):
        body = {"domain_id": domain["id"], "username": user, "password": password}
        await call(c, "POST", "/api/v1/mailboxes", body)
    await call(
        c,
        "POST",
        "/api/v1/aliases",
        {"source": "info@one.example", "destination": "alice@one.example"},
    )
    await call(c, "PUT", "/api/v1/config/domain-defaults", {"spam_threshold": 7.5})


async def second_half(c: httpx.AsyncClient) -> None:
    domains = {d["name"]: d for d in await list_all(c, "domains")}
    one, two = domains["one.example"], domains["two.example"]
    boxes = {b["username"]: b for b in await list_all(c, "mailboxes")}
    carol = await call(
        c,
        "POST",
        "/api/v1/mailboxes",
        {"domain_id": two["id"], "username": "carol", "password": PASSWORDS[2]},
    )
    await call(
        c, "PATCH", f"/api/v1/mailboxes/{boxes['alice']['id']}/password", {"password": PASSWORDS[3]}
    )
    await call(c, "PATCH", f"/api/v1/mailboxes/{carol['id']}", {"quota": 4096})
    doomed = await call(
        c,
        "POST",
        "/api/v1/aliases",
        {"source": "sales@two.example", "destination": "bob@two.example"},
    )
    kept = await call(
        c, "POST", "/api/v1/aliases", {"source": "@two.example", "destination": "bob@two.example"}
    )
    await call(c, "PATCH", f"/api/v1/aliases/{kept['id']}", {"destination": "carol@two.example"})
    await call(c, "DELETE", f"/api/v1/aliases/{doomed['id']}")
    await call(c, "DELETE", f"/api/v1/mailboxes/{boxes['bob']['id']}")
    await call(c, "PATCH", f"/api/v1/domains/{one['id']}", {"active": False})
    await call(c, "PUT", f"/api/v1/domains/{two['id']}/overrides", {"dmarc_policy": "reject"})
    await call(c, "PUT", f"/api/v1/mailboxes/{carol['id']}/overrides", {"enabled_pop3": False})
    await call(c, "PUT", "/api/v1/config/mailbox-defaults", {"quota_bytes": 1 << 30})
    glob = await call(c, "GET", "/api/v1/config/global")
    glob = {k: v for k, v in glob.items() if k != "updated_at"}
    await call(c, "PUT", "/api/v1/config/global", {**glob, "message_size_limit": 31457280})
    await call(
        c,
        "POST",
        "/api/v1/antispam/whitelist",
        {"entry_type": "domain", "value": "partner.example"},
    )
    await call(
        c, "POST", "/api/v1/dkim/generate", {"domain": "two.example", "algorithm": "ed25519"}
    )
    await call(c, "POST", "/api/v1/admin/tokens", {"name": "backup-reader", "scope": "read"})
    await call(
        c,
        "PUT",
        "/api/v1/security/settings",
        {"rate_limit_login": 0, "rate_limit_api": 0, "trusted_proxies": ["127.0.0.1"]},
    )
    # An Idempotency-Key makes the event's Nats-Msg-Id; it must survive the round trip too.
    response = await c.post(
        "/api/v1/domains", json={"name": "three.example"}, headers={"Idempotency-Key": "k-1"}
    )
    assert response.status_code == 201, response.text


def read_lines(path: Path) -> list[Line]:
    return [decoder.decode(raw) for raw in path.read_bytes().splitlines()]


def without_import_header(line: Line) -> tuple[Any, ...]:
    headers = {k: v for k, v in (line.headers or {}).items() if k != EXPECTED_LAST_SEQUENCE}
    return line.seq, line.subject, headers, bytes(line.data), line.data_b64


async def test_export_import_gives_an_identical_deployment_and_until_gives_a_past_one(
    nats_server: EmbeddedNats, procs: Procs, tmp_path: Path, settings: Settings
) -> None:
    # Given a deployment built through the API (on an external nats-server)...
    source = procs.serve(tmp_path / "source", nats_server.url, name="serve-source")
    await source.wait_healthy()
    async with api(source) as c:
        await first_half(c)
        mid = await state(source)
        mid_seq = await stream_last_seq(nats_server.url)
        await second_half(c)
    full = await state(source)
    assert full != mid

    # ... when it is exported while it runs, by the CLI and by the API route ...
    exported = tmp_path / "export.ndjson"
    out = ok(
        cli(
            ["export", "--data-dir", str(tmp_path / "source"), "--out", str(exported)],
            nats_server.url,
        )
    )
    rows = read_lines(exported)
    assert f"exported {len(rows):,} events" in out
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert exported.stat().st_mode & 0o777 == 0o600
    assert any(r.headers and r.headers.get("Nats-Msg-Id", "").startswith("idem-") for r in rows)
    app = create_app(settings)
    if not any(route.path == "/api/v1/events/export" for route in app.routes):
        app.register(EventsController)  # until api/app.py lists it
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/api/v1/events/export", headers={"X-API-Key": API_KEY})
        assert response.status_code == 200, response.text
        assert response.content == exported.read_bytes()
    for secret in (*PASSWORDS, ADMIN_PASSWORD, API_KEY):
        assert secret.encode() not in exported.read_bytes(), secret
    assert "ok:" in ok(cli(["verify", "--data-dir", str(tmp_path / "source")], nats_server.url))

    # ... and imported into a fresh data dir with its own embedded nats-server ...
    restored = tmp_path / "restored"
    out = ok(cli(["import", "--data-dir", str(restored), "--in", str(exported)], None))
    assert f"imported {len(rows):,} events" in out
    assert "ok:" in ok(cli(["verify", "--data-dir", str(restored)], None))

    # ... then a serve there answers every GET the same way, ids included.
    copy = procs.serve(restored, None, name="serve-restored")
    await copy.wait_healthy()
    assert await state(copy) == full

    # An export of the copy (read from the running serve's embedded nats-server) is the same
    # log: times are the import's, and each message carries the import's expected-sequence.
    again = tmp_path / "again.ndjson"
    ok(cli(["export", "--data-dir", str(restored), "--out", str(again)], None))
    assert [without_import_header(r) for r in read_lines(again)] == [
        without_import_header(r) for r in rows
    ]

    # Importing where there already is a log is refused: while serve holds the data dir...
    refused = cli(["import", "--data-dir", str(restored), "--in", str(exported)], None)
    assert refused.returncode != 0 and "in use by another mailpanel process" in refused.stderr
    # ... and once it is stopped, because the stream is not empty.
    assert copy.terminate() == 0
    refused = cli(["import", "--data-dir", str(restored), "--in", str(exported)], None)
    assert refused.returncode != 0 and "already holds" in refused.stderr, refused.stderr

    # --until SEQ: the deployment as it was at that sequence.
    past = tmp_path / "past"
    ok(
        cli(
            ["import", "--data-dir", str(past), "--in", str(exported), "--until", str(mid_seq)],
            None,
        )
    )
    then = procs.serve(past, None, name="serve-past")
    await then.wait_healthy()
    assert await state(then) == mid
    assert then.terminate() == 0

    # --until TIME (the stored time of event mid_seq): the same point in time.
    at = rows[mid_seq - 1].time
    by_time = tmp_path / "by-time"
    out = ok(
        cli(["import", "--data-dir", str(by_time), "--in", str(exported), "--until", at], None)
    )
    assert f"imported {mid_seq:,} events" in out
    assert f"{mid_seq:,} events" in ok(cli(["verify", "--data-dir", str(by_time)], None))
