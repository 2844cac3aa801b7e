"""Time travel: `?as_of=<seq | RFC 3339>` answers as the system was then, from a replay of the
events index through the same appliers; the replay equals a fresh rebuild stopped there."""

import stat
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.backup import time_travel
from core.settings import Settings
from projections.db import dump, open_writer
from tests.api.helpers import domain, mailbox
from tests.api.recovery import applied, ok, populate, rebuild_until
from tests.conftest import API_KEY


async def test_as_of_a_sequence_lists_what_existed_then(client):
    # Given a domain, then a second domain and a mailbox
    first = await domain(client, "example.com")
    await domain(client, "later.example")
    await mailbox(client, first, "alice")
    # When the lists are read as of the first domain's creation
    domains = await ok(await client.get("/api/v1/domains", params={"as_of": first}))
    boxes = await ok(await client.get("/api/v1/mailboxes", params={"as_of": first}))
    # Then only that domain existed, and no mailbox
    assert [d["name"] for d in domains["data"]] == ["example.com"]
    assert boxes["data"] == [] and boxes["meta"]["total"] == 0


async def test_as_of_shows_a_deleted_domain_and_its_mailbox_with_their_etag(client):
    # Given a domain with a mailbox and an alias, then deleted
    domain_id = await domain(client, "example.com")
    box = await mailbox(client, domain_id, "alice")
    alias = await ok(
        await client.post(
            "/api/v1/aliases", json={"source": "info@example.com", "destination": "a@b.example"}
        ),
        201,
    )
    before_delete = applied(client)
    await ok(await client.delete(f"/api/v1/domains/{domain_id}"))
    # When they are read as of before the deletion
    at = {"as_of": before_delete}
    one = await client.get(f"/api/v1/domains/{domain_id}", params=at)
    got_box = await client.get(f"/api/v1/mailboxes/{box['id']}", params=at)
    got_alias = await ok(await client.get(f"/api/v1/aliases/{alias['id']}", params=at))
    # Then they are there as they were (now they are 404)
    assert one.status_code == 200 and one.json()["name"] == "example.com"
    assert one.headers["etag"] == f'"{domain_id}"'
    assert got_box.status_code == 200 and got_box.json()["username"] == "alice"
    assert got_alias["source"] == "info@example.com"
    assert (await client.get(f"/api/v1/domains/{domain_id}")).status_code == 404


async def test_as_of_an_rfc3339_time_is_the_last_event_at_or_before_it(client):
    # Given a domain, a moment, then another domain
    await domain(client, "example.com")
    moment = datetime.now(UTC).isoformat()
    await domain(client, "later.example")
    # When the list is read as of that moment
    listed = await ok(await client.get("/api/v1/domains", params={"as_of": moment}))
    # Then only the first domain existed
    assert [d["name"] for d in listed["data"]] == ["example.com"]


async def test_as_of_before_any_event_is_the_empty_state(client):
    await domain(client, "example.com")
    listed = await ok(await client.get("/api/v1/domains", params={"as_of": "2000-01-01T00:00:00Z"}))
    assert listed["data"] == [] and listed["meta"]["total"] == 0


async def test_effective_views_as_of_show_the_settings_then(client):
    # Given a domain and mailbox, then an override and a changed default
    domain_id = await domain(client, "example.com")
    box = await mailbox(client, domain_id, "alice")
    then = applied(client)
    await ok(
        await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"dmarc_policy": "reject"})
    )
    await ok(await client.put("/api/v1/config/mailbox-defaults", json={"quota_bytes": 2048}))
    # When the effective views are read as of before those changes
    dom = await ok(
        await client.get(f"/api/v1/domains/{domain_id}/effective", params={"as_of": then})
    )
    mbx = await ok(
        await client.get(
            f"/api/v1/mailboxes/{box['id']}/effective", params={"as_of": then, "explain": True}
        )
    )
    # Then they show the settings of then; now they show the new ones
    assert dom["dmarc_policy"] == "none" and mbx["quota_bytes"] == 1073741824
    assert mbx["explain"]["quota_bytes"]["tier"] == "default"
    now = await ok(await client.get(f"/api/v1/domains/{domain_id}/effective"))
    assert now["dmarc_policy"] == "reject"


async def test_as_of_past_the_checkpoint_is_the_current_state(client):
    await domain(client, "example.com")
    current = await ok(await client.get("/api/v1/domains"))
    future = await ok(await client.get("/api/v1/domains", params={"as_of": 10**12}))
    assert future == current
    assert time_travel(client.app).cached == []  # answered live, nothing replayed


@pytest.mark.parametrize("value", ["yesterday", "2026-01-01", "-1", "1.5", "2026-01-01T00:00:00"])
async def test_an_invalid_as_of_is_a_400(client, value):
    response = await client.get("/api/v1/domains", params={"as_of": value})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_a_domain_scoped_token_sees_only_its_domains_as_of(client):
    # Given two domains and a token limited to one of them
    mine = await domain(client, "example.com")
    theirs = await domain(client, "other.org")
    token = await ok(
        await client.post(
            "/api/v1/admin/tokens",
            json={"name": "scoped", "scope": "read", "domains": ["example.com"]},
        ),
        201,
    )
    headers = {"X-API-Key": token["token"]}
    at = {"as_of": theirs}
    # When it reads as of a point where both existed
    listed = await ok(await client.get("/api/v1/domains", params=at, headers=headers))
    other = await client.get(f"/api/v1/domains/{theirs}", params=at, headers=headers)
    # Then it sees its own domain only
    assert [d["id"] for d in listed["data"]] == [mine]
    assert other.status_code == 404


async def test_time_travel_equals_a_rebuild_stopped_at_that_sequence(
    client, settings: Settings, tmp_path: Path
):
    # Given a history touching every table, and a point in its middle
    await populate(client)
    middle = applied(client) - 6
    await ok(await client.get("/api/v1/domains", params={"as_of": middle}))
    # When the replay is compared with a fresh rebuild fed the log up to that point
    rebuilt = tmp_path / "rebuilt.db"
    await rebuild_until(settings, rebuilt, middle)
    replayed = time_travel(client.app).files[middle]
    # Then every table is the same, row for row
    with closing(open_writer(rebuilt)) as a, closing(open_writer(replayed)) as b:
        assert dump(a) == dump(b)


async def test_replays_are_an_lru_of_four_private_files_deleted_on_shutdown(settings: Settings):
    directory = settings.data_dir / "asof"
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        # Given six events
        for i in range(6):
            await domain(client, f"d{i}.example")
        # When five different points are read
        for seq in range(1, 6):
            await ok(await client.get("/api/v1/domains", params={"as_of": seq}))
        # Then the four most recent are kept, as owner-only files
        assert time_travel(client.app).cached == [2, 3, 4, 5]
        assert len(list(directory.glob("asof-*.db"))) == 4
        for f in directory.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
    # and after shutdown none is left
    assert list(directory.glob("asof-*")) == []
