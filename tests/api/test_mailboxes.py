"""Seed section 3: mailboxes. The password is hashed before the decision and never returned."""

from commands.log import EventLog
from core.events import decode
from core.subjects import address_subject
from tests.api.helpers import domain, mailbox


async def test_create_answers_201_with_the_mailbox(client):
    domain_id = await domain(client)
    body = await mailbox(client, domain_id, quota=1073741824)
    assert body["domain_id"] == domain_id and body["username"] == "alice"
    assert body["quota"] == 1073741824 and body["active"] is True
    assert "password" not in body


async def test_omitted_quota_reads_as_the_default_quota(client):
    assert (await mailbox(client, await domain(client)))["quota"] == 1073741824


async def test_explicit_zero_quota_means_unlimited(client):
    assert (await mailbox(client, await domain(client), quota=0))["quota"] == 0


async def test_username_with_matching_domain_is_accepted(client):
    body = await mailbox(client, await domain(client), "alice@example.com")
    assert body["username"] == "alice"


async def test_username_with_other_domain_is_refused_with_the_seed_message(client):
    domain_id = await domain(client)
    response = await client.post(
        "/api/v1/mailboxes",
        json={"domain_id": domain_id, "username": "alice@other.org", "password": "S3cret-pass"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == (
        f'username domain "other.org" does not match domain_id ({domain_id})'
    )


async def test_username_with_dotdot_is_refused(client):
    response = await client.post(
        "/api/v1/mailboxes",
        json={"domain_id": await domain(client), "username": "a..b", "password": "S3cret-pass"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_unknown_domain_is_not_found(client):
    response = await client.post(
        "/api/v1/mailboxes", json={"domain_id": 999, "username": "alice", "password": "S3cret-pass"}
    )
    assert response.status_code == 404
    assert response.json()["error"] == "domain not found"


async def test_missing_password_is_a_validation_error(client):
    response = await client.post(
        "/api/v1/mailboxes", json={"domain_id": await domain(client), "username": "alice"}
    )
    assert response.status_code == 400


async def test_negative_quota_is_a_validation_error(client):
    response = await client.post(
        "/api/v1/mailboxes",
        json={
            "domain_id": await domain(client),
            "username": "a",
            "password": "S3cret-pass",
            "quota": -1,
        },
    )
    assert response.status_code == 400


async def test_duplicate_mailbox_conflicts(client):
    domain_id = await domain(client)
    await mailbox(client, domain_id)
    response = await client.post(
        "/api/v1/mailboxes",
        json={"domain_id": domain_id, "username": "ALICE", "password": "S3cret-pass"},
    )
    assert response.status_code == 409


async def test_event_holds_an_argon2id_hash_never_the_password(client, nats_server):
    body = await mailbox(client, await domain(client))
    log = await EventLog.connect(nats_server.url)
    try:
        msg = await log.js.get_last_msg(log.stream, address_subject("alice@example.com"))
    finally:
        await log.close()
    assert b"S3cret-pass" not in msg.data
    event = decode(msg.data).event
    assert event.password_hash.startswith("{ARGON2ID}$argon2id$")
    assert msg.seq == body["id"]


async def test_password_change_answers_the_seed_message(client):
    body = await mailbox(client, await domain(client))
    response = await client.patch(
        f"/api/v1/mailboxes/{body['id']}/password", json={"password": "new-strong-password"}
    )
    assert response.status_code == 200
    assert response.json() == {"message": "password updated"}


async def test_password_change_of_unknown_mailbox_is_not_found(client):
    response = await client.patch("/api/v1/mailboxes/77/password", json={"password": "abcdefgh"})
    assert response.status_code == 404


async def test_too_short_password_is_a_validation_error(client):
    body = await mailbox(client, await domain(client))
    response = await client.patch(
        f"/api/v1/mailboxes/{body['id']}/password", json={"password": "abc"}
    )
    assert response.status_code == 400


async def test_patch_sets_active_and_quota(client):
    body = await mailbox(client, await domain(client))
    response = await client.patch(
        f"/api/v1/mailboxes/{body['id']}", json={"active": False, "quota": 5000}
    )
    assert response.status_code == 200
    assert (response.json()["active"], response.json()["quota"]) == (False, 5000)


async def test_list_filters_by_domain(client):
    first, second = await domain(client, "a.example"), await domain(client, "b.example")
    await mailbox(client, first, "x")
    await mailbox(client, second, "y")
    body = (await client.get(f"/api/v1/mailboxes?domain_id={second}")).json()
    assert [m["username"] for m in body["data"]] == ["y"]
    assert body["meta"]["total"] == 1


async def test_list_shows_every_mailbox(client):
    await mailbox(client, await domain(client, "a.example"), "x")
    await mailbox(client, await domain(client, "b.example"), "y")
    assert (await client.get("/api/v1/mailboxes")).json()["meta"]["total"] == 2


async def test_delete_answers_the_seed_message(client):
    body = await mailbox(client, await domain(client))
    response = await client.delete(f"/api/v1/mailboxes/{body['id']}")
    assert response.json() == {"message": "mailbox deleted"}
    assert (await client.get(f"/api/v1/mailboxes/{body['id']}")).status_code == 404


async def test_deleted_mailbox_address_can_be_reused(client):
    domain_id = await domain(client)
    first = await mailbox(client, domain_id)
    await client.delete(f"/api/v1/mailboxes/{first['id']}")
    assert (await mailbox(client, domain_id))["id"] > first["id"]
