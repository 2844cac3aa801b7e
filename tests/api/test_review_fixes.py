"""Second-read findings, each pinned by a test: idempotency replays, domain-admin limits,
file modes."""

import asyncio
import stat

from tests.api.helpers import domain


async def test_a_retried_token_create_does_not_show_a_different_secret(client):
    headers = {"Idempotency-Key": "tok-1"}
    first = await client.post(
        "/api/v1/admin/tokens", json={"name": "ci", "scope": "read"}, headers=headers
    )
    again = await client.post(
        "/api/v1/admin/tokens", json={"name": "ci", "scope": "read"}, headers=headers
    )
    assert first.status_code == 201 and again.status_code == 409
    assert "shown only once" in again.json()["detail"]


async def test_a_key_reused_for_another_request_is_refused(client):
    headers = {"Idempotency-Key": "k-1"}
    await client.post("/api/v1/domains", json={"name": "a.example"}, headers=headers)
    other = await client.post("/api/v1/domains", json={"name": "b.example"}, headers=headers)
    assert other.status_code == 409
    assert (await client.get("/api/v1/domains")).json()["meta"]["total"] == 1


async def test_a_retried_creation_that_hit_a_cap_is_refused_again(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"max_mailboxes": 1})
    bodies = [
        {"domain_id": domain_id, "username": f"u{i}", "password": "S3cret-pass"} for i in range(6)
    ]
    answers = await asyncio.gather(
        *(
            client.post("/api/v1/mailboxes", json=body, headers={"Idempotency-Key": f"m-{i}"})
            for i, body in enumerate(bodies)
        )
    )
    refused = [i for i, r in enumerate(answers) if r.status_code == 409]
    assert refused
    i = refused[0]
    retry = await client.post(
        "/api/v1/mailboxes", json=bodies[i], headers={"Idempotency-Key": f"m-{i}"}
    )
    assert retry.status_code == 409 and retry.json()["code"] == "LIMIT_EXCEEDED"


async def domain_admin(client, name: str = "mine.example") -> dict[str, str]:
    await domain(client, name)
    token = (
        await client.post(
            "/api/v1/admin/tokens", json={"name": "dom", "scope": "write", "domains": [name]}
        )
    ).json()
    return {"X-API-Key": token["token"]}


async def test_a_domain_admin_cannot_lift_its_caps(client):
    headers = await domain_admin(client)
    await client.put("/api/v1/domains/1/overrides", json={"max_mailboxes": 3})
    lifted = await client.put(
        "/api/v1/domains/1/overrides", json={"max_mailboxes": 0}, headers=headers
    )
    assert lifted.status_code == 403


async def test_a_domain_admin_keeps_the_caps_when_tuning_other_fields(client):
    headers = await domain_admin(client)
    await client.put("/api/v1/domains/1/overrides", json={"max_mailboxes": 3})
    tuned = await client.put(
        "/api/v1/domains/1/overrides", json={"dmarc_policy": "reject"}, headers=headers
    )
    assert tuned.status_code == 200
    overrides = (await client.get("/api/v1/domains/1/overrides")).json()
    assert (overrides["max_mailboxes"], overrides["dmarc_policy"]) == (3, "reject")


async def test_a_domain_admin_cannot_change_the_outgoing_ip(client):
    headers = await domain_admin(client)
    response = await client.patch(
        "/api/v1/domains/1", json={"outgoing_ip": "192.0.2.99"}, headers=headers
    )
    assert response.status_code == 403


async def test_a_domain_admin_sees_no_global_lists(client):
    headers = await domain_admin(client)
    for path in (
        "/api/v1/antispam/whitelist",
        "/api/v1/system/reconcile/status",
        "/api/v1/postfix/queue",
    ):
        assert (await client.get(path, headers=headers)).status_code == 403, path


async def test_an_empty_domain_list_is_refused(client):
    response = await client.post(
        "/api/v1/admin/tokens", json={"name": "x", "scope": "write", "domains": []}
    )
    assert response.status_code == 400


async def test_the_read_model_is_readable_by_its_owner_only(client, settings):
    await domain(client)
    for suffix in ("", "-wal"):
        path = settings.read_db.with_name(settings.read_db.name + suffix)
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
