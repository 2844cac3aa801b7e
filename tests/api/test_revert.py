"""POST /api/v1/events/:seq/revert: each revertible event, reverted, leaves the state the API
shows exactly as it was before that event; what cannot be reverted is a 409 saying why."""

import sqlite3
from contextlib import closing
from typing import Any

import pytest

from projections.db import dump
from tests.api.helpers import domain, mailbox
from tests.api.recovery import applied, events, everything, ok, populate, rebuild_until

# Tier rows show when they were last set; a revert sets them (back), so that time moves.
NOT_COMPARED = ("cert_path", "key_path", "updated_at")


async def _state(client) -> Any:
    return await everything(client, NOT_COMPARED)


async def _hashes(client) -> dict[int, str]:
    doc = await ok(await client.get("/api/v1/backup"))
    return {m["id"]: m["password_hash"] for m in doc["mailboxes"]}


async def _revert(client, seq: int, status: int = 200, **kwargs: Any) -> Any:
    response = await client.post(f"/api/v1/events/{seq}/revert", **kwargs)
    assert response.status_code == status, response.text
    return response.json()


async def _round_trip(client, change) -> dict[str, Any]:
    """Given the state now, when `change` runs and its event is reverted, then the state is
    the same as before it. Returns the revert's answer."""
    before = await _state(client)
    await change()
    seq = applied(client)
    answer = await _revert(client, seq)
    assert answer["reverts"] == seq and answer["seq"] > seq
    assert await _state(client) == before
    return answer


# ---- domains ------------------------------------------------------------------------------


async def test_reverting_a_domain_creation_deletes_it(client):
    await populate(client)
    answer = await _round_trip(client, lambda: domain(client, "new.example"))
    assert answer["type"] == "domain.deleted"


async def test_reverting_a_domain_update_sets_it_back(client):
    ids = await populate(client)

    async def change() -> None:
        url = f"/api/v1/domains/{ids['example']}"
        await ok(await client.patch(url, json={"active": False, "outgoing_ip": "192.0.2.10"}))

    assert (await _round_trip(client, change))["type"] == "domain.updated"


async def test_reverting_a_domain_deletion_brings_back_everything_with_the_same_ids(client):
    # Given a domain with mailboxes (one with overrides), aliases and overrides
    ids = await populate(client)
    hashes = await _hashes(client)

    async def change() -> None:
        await ok(await client.delete(f"/api/v1/domains/{ids['example']}"))

    # When its deletion is reverted, then everything is back as it was, ids included
    assert (await _round_trip(client, change))["type"] == "domain.restored"
    assert await _hashes(client) == hashes  # password hashes too


async def test_an_undeleted_domain_and_its_mailboxes_take_writes(client):
    # Given a domain deleted and undeleted
    ids = await populate(client)
    await ok(await client.delete(f"/api/v1/domains/{ids['example']}"))
    await _revert(client, applied(client))
    # When it and its mailbox are changed
    patched = await client.patch(f"/api/v1/domains/{ids['example']}", json={"active": False})
    box = await client.patch(f"/api/v1/mailboxes/{ids['alice']}", json={"active": False})
    # Then both succeed (their versions are their subjects' real last sequences)
    assert patched.status_code == 200, patched.text
    assert box.status_code == 200, box.text


async def test_reverting_domain_overrides_sets_the_previous_ones(client):
    ids = await populate(client)

    async def change() -> None:
        url = f"/api/v1/domains/{ids['example']}/overrides"
        await ok(await client.put(url, json={"spf_policy": "-all", "max_aliases": 3}))

    await _round_trip(client, change)


# ---- mailboxes ----------------------------------------------------------------------------


async def test_reverting_a_mailbox_creation_deletes_it(client):
    ids = await populate(client)
    answer = await _round_trip(client, lambda: mailbox(client, ids["example"], "dave"))
    assert answer["type"] == "mailbox.deleted"


async def test_reverting_a_quota_change_makes_the_mailbox_inherit_the_default_again(client):
    # Given a mailbox created without a quota (it follows the mailbox default)
    ids = await populate(client)

    async def change() -> None:
        url = f"/api/v1/mailboxes/{ids['bob']}"
        await ok(await client.patch(url, json={"quota": 9_000, "active": True}))

    await _round_trip(client, change)
    # Then it follows the default again
    await ok(await client.put("/api/v1/config/mailbox-defaults", json={"quota_bytes": 4096}))
    assert (await ok(await client.get(f"/api/v1/mailboxes/{ids['bob']}")))["quota"] == 4096


async def test_reverting_a_password_change_brings_the_old_hash_back(client):
    ids = await populate(client)
    hashes = await _hashes(client)

    async def change() -> None:
        url = f"/api/v1/mailboxes/{ids['alice']}/password"
        await ok(await client.patch(url, json={"password": "Changed-pw-1"}))

    await _round_trip(client, change)
    assert await _hashes(client) == hashes


async def test_reverting_a_mailbox_deletion_brings_it_back_with_its_id_hash_and_overrides(
    client,
):
    ids = await populate(client)
    hashes = await _hashes(client)

    async def change() -> None:
        await ok(await client.delete(f"/api/v1/mailboxes/{ids['alice']}"))

    assert (await _round_trip(client, change))["type"] == "mailbox.restored"
    assert await _hashes(client) == hashes
    patched = await client.patch(f"/api/v1/mailboxes/{ids['alice']}", json={"active": False})
    assert patched.status_code == 200, patched.text


async def test_reverting_mailbox_overrides_sets_the_previous_ones(client):
    ids = await populate(client)

    async def change() -> None:
        url = f"/api/v1/mailboxes/{ids['alice']}/overrides"
        await ok(await client.put(url, json={"vacation_enabled": True}))

    await _round_trip(client, change)


# ---- aliases ------------------------------------------------------------------------------


async def test_reverting_an_alias_creation_deletes_it(client):
    await populate(client)

    async def change() -> None:
        body = {"source": "sales@example.com", "destination": "alice@example.com"}
        await ok(await client.post("/api/v1/aliases", json=body), 201)

    await _round_trip(client, change)


async def test_reverting_an_alias_update_sets_the_old_destination(client):
    ids = await populate(client)

    async def change() -> None:
        url = f"/api/v1/aliases/{ids['info']}"
        await ok(await client.patch(url, json={"destination": "carol@other.org"}))

    await _round_trip(client, change)


async def test_reverting_an_alias_deletion_brings_it_back_with_its_id(client):
    ids = await populate(client)

    async def change() -> None:
        await ok(await client.delete(f"/api/v1/aliases/{ids['info']}"))

    assert (await _round_trip(client, change))["type"] == "alias.restored"


# ---- tiers, whitelist, restore ------------------------------------------------------------


@pytest.mark.parametrize(
    "url,body",
    [
        ("/api/v1/config/global", {"message_size_limit": 1000}),  # was set before
        ("/api/v1/config/domain-defaults", {"dmarc_policy": "quarantine"}),  # never set
        ("/api/v1/config/antispam", {"dnsbl_enabled": True, "dnsbl_zones": "zen.example"}),
    ],
)
async def test_reverting_a_tier_change_sets_the_previous_tier(client, url, body):
    await populate(client)

    async def change() -> None:
        current = await ok(await client.get(url))
        await ok(await client.put(url, json={**current, **body}))

    await _round_trip(client, change)


async def test_reverting_a_whitelist_addition_removes_it(client):
    await populate(client)

    async def change() -> None:
        body = {"entry_type": "cidr", "value": "198.51.100.0/24"}
        await ok(await client.post("/api/v1/antispam/whitelist", json=body))

    await _round_trip(client, change)


async def test_reverting_a_whitelist_removal_brings_the_entry_back_with_its_id(client):
    await populate(client)
    entry = (await ok(await client.get("/api/v1/antispam/whitelist")))["data"][0]

    async def change() -> None:
        await ok(await client.delete(f"/api/v1/antispam/whitelist/{entry['id']}"))

    await _round_trip(client, change)


async def test_reverting_a_restore_brings_back_the_state_before_it(client):
    # Given a state, a backup of an older one, and that backup restored over the newer one
    ids = await populate(client)
    doc = await ok(await client.get("/api/v1/backup"))
    await ok(await client.delete(f"/api/v1/domains/{ids['other']}"))
    await domain(client, "newer.example")

    async def change() -> None:
        await ok(await client.post("/api/v1/backup/restore", json=doc))

    # When the restore is reverted, then the newer state is back
    assert (await _round_trip(client, change))["type"] == "system.restored"
    created = await client.post("/api/v1/domains", json={"name": "third.example"})
    assert created.status_code == 201, created.text


# ---- what cannot be reverted --------------------------------------------------------------


async def test_a_later_change_of_the_same_resource_is_a_409_naming_its_sequence(client):
    # Given a domain updated twice
    domain_id = await domain(client, "example.com")
    await ok(await client.patch(f"/api/v1/domains/{domain_id}", json={"active": False}))
    first = applied(client)
    await ok(await client.patch(f"/api/v1/domains/{domain_id}", json={"active": True}))
    second = applied(client)
    # When the first update is reverted
    body = await _revert(client, first, 409)
    # Then 409 CONFLICT names the later change
    assert body["code"] == "CONFLICT" and f"sequence {second}" in body["detail"]


async def test_reverting_the_same_event_twice_is_a_409(client):
    domain_id = await domain(client, "example.com")
    await ok(await client.patch(f"/api/v1/domains/{domain_id}", json={"active": False}))
    seq = applied(client)
    revert = await _revert(client, seq)
    body = await _revert(client, seq, 409)
    assert f"sequence {revert['seq']}" in body["detail"]


async def test_a_domain_with_mailboxes_made_since_cannot_be_uncreated(client):
    domain_id = await domain(client, "example.com")
    await mailbox(client, domain_id, "alice")
    body = await _revert(client, domain_id, 409)
    assert body["code"] == "CONFLICT" and "mailbox" in body["detail"]


async def test_an_undelete_whose_name_is_taken_again_is_a_409(client):
    # Given a domain deleted, then created again under the same name
    domain_id = await domain(client, "example.com")
    await ok(await client.delete(f"/api/v1/domains/{domain_id}"))
    deleted = applied(client)
    await domain(client, "example.com")
    state = await _state(client)
    # When the deletion is reverted: 409, and nothing changed
    body = await _revert(client, deleted, 409)
    assert "exists again" in body["detail"]
    assert await _state(client) == state


async def test_a_mailbox_undelete_whose_domain_is_gone_is_a_409(client):
    domain_id = await domain(client, "example.com")
    box = await mailbox(client, domain_id, "alice")
    await ok(await client.delete(f"/api/v1/mailboxes/{box['id']}"))
    deleted = applied(client)
    await ok(await client.delete(f"/api/v1/domains/{domain_id}"))
    body = await _revert(client, deleted, 409)
    assert "no longer exists" in body["detail"]


async def test_events_without_a_compensating_command_are_a_409(client):
    await ok(await client.post("/api/v1/admin/tokens", json={"name": "ops", "scope": "read"}), 201)
    body = await _revert(client, applied(client), 409)
    assert body["error"] == "event cannot be reverted" and "token.created" in body["detail"]


async def test_an_unknown_sequence_is_a_404(client):
    body = await _revert(client, 424242, 404)
    assert body["code"] == "NOT_FOUND"


# ---- the audit trail and who may revert ---------------------------------------------------


async def test_the_compensating_event_records_what_it_reverted(client):
    domain_id = await domain(client, "example.com")
    await ok(await client.patch(f"/api/v1/domains/{domain_id}", json={"active": False}))
    seq = applied(client)
    answer = await _revert(client, seq)
    item = await ok(await client.get(f"/api/v1/events/{answer['seq']}"))
    assert item["reverts"] == seq and item["type"] == "domain.updated"
    assert item["before"] == {"active": False} and item["after"] == {"active": True}
    assert all(e["reverts"] == 0 for e in await events(client) if e["seq"] != answer["seq"])


async def test_an_undeleted_mailbox_shows_in_its_history_with_its_hash_redacted(client):
    # Given a mailbox deleted and undeleted
    ids = await populate(client)
    await ok(await client.delete(f"/api/v1/mailboxes/{ids['alice']}"))
    await _revert(client, applied(client))
    # When its history is read
    history = await client.get(f"/api/v1/mailboxes/{ids['alice']}/history")
    # Then the undelete is a creation with the hash redacted, never in clear
    assert "$argon2" not in history.text
    last = history.json()["data"][-1]
    assert last["type"] == "mailbox.restored" and last["action"] == "created"
    assert last["after"]["password_hash"] == "[redacted]"


async def _token(client, name: str, scope: str, domains: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"name": name, "scope": scope}
    if domains:
        body["domains"] = domains
    token = await ok(await client.post("/api/v1/admin/tokens", json=body), 201)
    return {"X-API-Key": token["token"]}


async def test_a_domain_scoped_token_reverts_only_its_own_domains_changes(client):
    # Given changes in two domains and in a global tier, and a token for one domain
    ids = await populate(client)
    headers = await _token(client, "example-admin", "write", ["example.com"])
    await ok(await client.patch(f"/api/v1/mailboxes/{ids['alice']}", json={"active": False}))
    mine = applied(client)
    await ok(await client.patch(f"/api/v1/mailboxes/{ids['carol']}", json={"active": False}))
    theirs = applied(client)
    await ok(await client.put("/api/v1/config/global", json={"message_size_limit": 5}))
    tier = applied(client)
    # When it reverts each: its own domain's change, another domain's, the global tier
    own = await client.post(f"/api/v1/events/{mine}/revert", headers=headers)
    other = await client.post(f"/api/v1/events/{theirs}/revert", headers=headers)
    glob = await client.post(f"/api/v1/events/{tier}/revert", headers=headers)
    # Then only its own is reverted; the other domain's is not found, the tier forbidden
    assert own.status_code == 200, own.text
    assert other.status_code == 404 and glob.status_code == 403


async def test_a_read_scope_token_cannot_revert(client):
    domain_id = await domain(client, "example.com")
    headers = await _token(client, "reader", "read")
    response = await client.post(f"/api/v1/events/{domain_id}/revert", headers=headers)
    assert response.status_code == 403


async def test_a_rebuild_after_restores_and_reverts_equals_the_live_read_model(
    client, settings, tmp_path
):
    # Given restores, undeletes and reverts in the log
    ids = await populate(client)
    doc = await ok(await client.get("/api/v1/backup"))
    await ok(await client.delete(f"/api/v1/domains/{ids['example']}"))
    await _revert(client, applied(client))
    await ok(await client.post("/api/v1/backup/restore", json=doc))
    await _revert(client, applied(client))
    await ok(await client.patch(f"/api/v1/mailboxes/{ids['alice']}", json={"active": False}))
    # When the whole log is replayed into a fresh read model
    rebuilt = tmp_path / "rebuilt.db"
    await rebuild_until(settings, rebuilt, applied(client))
    # Then it equals the live one, row for row (versions included)
    with closing(sqlite3.connect(f"file:{settings.read_db}?mode=ro", uri=True)) as live:
        with closing(sqlite3.connect(rebuilt)) as fresh:
            assert dump(fresh) == dump(live)
