"""GET /api/v1/events/export: the log as NDJSON, for unrestricted admins only."""

import re
from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import Settings
from tests.api.helpers import domain, mailbox
from tests.conftest import API_KEY
from workers.export import Line

EXPORT = "/api/v1/events/export"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings)) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c


async def token(client, scope: str, domains: list[str] | None = None) -> dict[str, str]:
    body: dict[str, object] = {"name": f"t-{scope}-{len(domains or [])}", "scope": scope}
    if domains is not None:
        body["domains"] = domains
    response = await client.post("/api/v1/admin/tokens", json=body)
    assert response.status_code == 201, response.text
    return {"X-API-Key": response.json()["token"]}


async def test_an_admin_gets_every_event_as_ndjson_in_an_attachment(client) -> None:
    domain_id = await domain(client, "export.example")
    await mailbox(client, domain_id, "alice", password="Plain-Text-Pw-1")
    response = await client.get(EXPORT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="mailpanel-log-\d{8}-\d{6}\.ndjson"', disposition)
    rows = [msgspec.json.decode(raw, type=Line) for raw in response.content.splitlines()]
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == int(response.headers["x-mailpanel-events"]) >= 2
    assert rows[0].subject.startswith("mp.domain.")
    assert msgspec.json.decode(rows[0].data)["event"]["name"] == "export.example"
    assert b"Plain-Text-Pw-1" not in response.content


async def test_only_an_unrestricted_admin_may_export(client, settings: Settings) -> None:
    await domain(client, "mine.example")
    for headers in (
        await token(client, "read"),
        await token(client, "write"),
        await token(client, "admin", ["mine.example"]),
        await token(client, "write", ["mine.example"]),
    ):
        response = await client.get(EXPORT, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "FORBIDDEN"
    assert (await client.get(EXPORT, headers=await token(client, "admin"))).status_code == 200
    async with AsyncTestClient(app=create_app(settings)) as anon:
        response = await anon.get(EXPORT)
        assert response.status_code == 401
