"""Managed tokens: shown once, stored hashed, scoped, domain-limited, rotatable, revocable."""

from datetime import UTC, datetime, timedelta

from commands.log import EventLog
from tests.api.helpers import domain, mailbox


async def mint(client, name: str = "ci", scope: str = "write", **extra) -> dict:
    response = await client.post(
        "/api/v1/admin/tokens", json={"name": name, "scope": scope, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()


def as_token(token: dict) -> dict:
    return {"X-API-Key": token["token"]}


async def test_create_shows_the_secret_once(client):
    token = await mint(client)
    assert token["token"].startswith("mp_") and len(token["token"]) > 40
    listed = (await client.get("/api/v1/admin/tokens")).json()["data"]
    assert [t["name"] for t in listed] == ["ci"]
    assert "token" not in listed[0] and token["token"] not in str(listed)


async def test_secret_is_stored_only_as_its_sha256(client, nats_server):
    token = await mint(client)
    log = await EventLog.connect(nats_server.url)
    try:
        msg = await log.js.get_msg(log.stream, token["id"])
    finally:
        await log.close()
    assert token["token"].encode() not in msg.data
    assert b"secret_sha256" in msg.data


async def test_token_authenticates_and_names_the_actor(client, nats_server):
    token = await mint(client)
    response = await client.post(
        "/api/v1/domains", json={"name": "a.example"}, headers=as_token(token)
    )
    assert response.status_code == 201
    log = await EventLog.connect(nats_server.url)
    try:
        msg = await log.js.get_msg(log.stream, response.json()["id"])
    finally:
        await log.close()
    assert b'"actor":"ci"' in msg.data and f'"actor_id":"token:{token["id"]}"'.encode() in msg.data


async def test_last_used_at_is_set_after_use(client):
    token = await mint(client)
    await client.get("/api/v1/domains", headers=as_token(token))
    listed = (await client.get(f"/api/v1/admin/tokens/{token['id']}")).json()
    assert listed["last_used_at"] is not None


async def test_read_token_can_get(client):
    token = await mint(client, scope="read")
    assert (await client.get("/api/v1/domains", headers=as_token(token))).status_code == 200


async def test_read_token_cannot_write(client):
    token = await mint(client, scope="read")
    response = await client.post(
        "/api/v1/domains", json={"name": "a.example"}, headers=as_token(token)
    )
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


async def test_write_token_cannot_administer_tokens(client):
    token = await mint(client, scope="write")
    response = await client.get("/api/v1/admin/tokens", headers=as_token(token))
    assert response.status_code == 403


async def test_write_token_cannot_change_security_settings(client):
    token = await mint(client, scope="write")
    response = await client.put(
        "/api/v1/security/settings",
        headers=as_token(token),
        json={"rate_limit_login": 5, "rate_limit_api": 60},
    )
    assert response.status_code == 403


async def test_revoked_token_is_unauthorized(client):
    token = await mint(client)
    assert (await client.delete(f"/api/v1/admin/tokens/{token['id']}")).json() == {
        "message": "token revoked"
    }
    response = await client.get("/api/v1/domains", headers=as_token(token))
    assert response.status_code == 401


async def test_rotation_invalidates_the_old_secret(client):
    token = await mint(client)
    rotated = (await client.post(f"/api/v1/admin/tokens/{token['id']}/rotate")).json()
    assert rotated["id"] == token["id"] and rotated["token"] != token["token"]
    assert (await client.get("/api/v1/domains", headers=as_token(token))).status_code == 401
    assert (await client.get("/api/v1/domains", headers=as_token(rotated))).status_code == 200


async def test_expired_token_is_unauthorized(client, monkeypatch):
    soon = datetime.now(UTC) + timedelta(seconds=30)
    token = await mint(client, expires_at=soon.isoformat())
    import api.auth

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return soon + timedelta(seconds=1)

    monkeypatch.setattr(api.auth, "datetime", Later)
    response = await client.get("/api/v1/domains", headers=as_token(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "token has expired"


async def test_expiry_in_the_past_is_refused(client):
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = await client.post(
        "/api/v1/admin/tokens", json={"name": "old", "scope": "read", "expires_at": past}
    )
    assert response.status_code == 400


async def test_unknown_scope_is_refused(client):
    response = await client.post("/api/v1/admin/tokens", json={"name": "x", "scope": "root"})
    assert response.status_code == 400


async def test_duplicate_live_name_conflicts(client):
    await mint(client)
    response = await client.post("/api/v1/admin/tokens", json={"name": "ci", "scope": "read"})
    assert response.status_code == 409


async def test_unknown_domain_in_restriction_is_refused(client):
    response = await client.post(
        "/api/v1/admin/tokens", json={"name": "x", "scope": "write", "domains": ["nope.example"]}
    )
    assert response.status_code == 400


async def test_domain_token_sees_only_its_domains(client):
    mine, other = await domain(client, "mine.example"), await domain(client, "other.example")
    await mailbox(client, mine, "a")
    await mailbox(client, other, "b")
    token = await mint(client, domains=["mine.example"])
    headers = as_token(token)
    assert [
        d["name"] for d in (await client.get("/api/v1/domains", headers=headers)).json()["data"]
    ] == ["mine.example"]
    boxes = (await client.get("/api/v1/mailboxes", headers=headers)).json()
    assert [m["username"] for m in boxes["data"]] == ["a"] and boxes["meta"]["total"] == 1
    assert (await client.get(f"/api/v1/domains/{other}", headers=headers)).status_code == 404


async def test_domain_token_cannot_change_other_domains(client):
    await domain(client, "mine.example")
    other = await domain(client, "other.example")
    victim = await mailbox(client, other, "b")
    token = await mint(client, domains=["mine.example"])
    headers = as_token(token)
    assert (
        await client.delete(f"/api/v1/mailboxes/{victim['id']}", headers=headers)
    ).status_code == 404
    assert (
        await client.patch(f"/api/v1/domains/{other}", json={"active": False}, headers=headers)
    ).status_code == 404
    created = await client.post(
        "/api/v1/mailboxes",
        headers=headers,
        json={"domain_id": other, "username": "x", "password": "S3cret-pass"},
    )
    assert created.status_code == 404
    alias = await client.post(
        "/api/v1/aliases",
        headers=headers,
        json={"source": "x@other.example", "destination": "a@mine.example"},
    )
    assert alias.status_code == 400
    assert (await client.get(f"/api/v1/mailboxes/{victim['id']}")).status_code == 200


async def test_domain_token_manages_its_own_domain(client):
    mine = await domain(client, "mine.example")
    token = await mint(client, domains=["mine.example"])
    response = await client.post(
        "/api/v1/mailboxes",
        headers=as_token(token),
        json={"domain_id": mine, "username": "x", "password": "S3cret-pass"},
    )
    assert response.status_code == 201


async def test_domain_token_cannot_add_domains(client):
    await domain(client, "mine.example")
    token = await mint(client, scope="admin", domains=["mine.example"])
    response = await client.post(
        "/api/v1/domains", json={"name": "new.example"}, headers=as_token(token)
    )
    assert response.status_code == 403


async def test_domain_limited_admin_cannot_mint_tokens(client):
    await domain(client, "mine.example")
    token = await mint(client, scope="admin", domains=["mine.example"])
    response = await client.post(
        "/api/v1/admin/tokens", json={"name": "y", "scope": "admin"}, headers=as_token(token)
    )
    assert response.status_code == 403
