"""Conventions & errors: the flat error shape on every failure path, idempotency, audit context."""

from commands.log import EventLog
from core.events import decode
from core.subjects import domain_subject

FLAT = {"error", "detail", "code"}


async def test_malformed_json_is_a_flat_validation_error(client):
    response = await client.post(
        "/api/v1/domains", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert set(response.json()) == FLAT and response.json()["code"] == "VALIDATION_FAILED"


async def test_wrong_type_is_a_flat_validation_error(client):
    response = await client.post("/api/v1/domains", json={"name": 5})
    assert response.status_code == 400
    assert set(response.json()) == FLAT and "name" in response.json()["detail"]


async def test_unknown_field_is_a_validation_error(client):
    response = await client.post("/api/v1/domains", json={"name": "a.example", "extra": 1})
    assert response.status_code == 400


async def test_empty_body_is_a_validation_error(client):
    response = await client.post("/api/v1/domains")
    assert response.status_code == 400
    assert response.json()["detail"] == "request body is required"


async def test_unknown_route_is_a_flat_not_found(client):
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()) == FLAT and response.json()["code"] == "NOT_FOUND"


async def test_wrong_method_is_a_flat_405(client):
    response = await client.put("/api/v1/domains")
    assert response.status_code == 405
    assert set(response.json()) == FLAT


async def test_dead_nats_answers_503_and_reads_still_work(client, nats_server):
    nats_server.stop()
    response = await client.post("/api/v1/domains", json={"name": "a.example"})
    assert response.status_code == 503
    assert response.json()["code"] == "DEPENDENCY_UNAVAILABLE"
    assert (await client.get("/api/v1/domains")).status_code == 200


async def test_dead_nats_makes_health_503(client, nats_server):
    nats_server.stop()
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["nats"]["status"] == "error"


async def test_unhandled_error_is_500_without_a_trace(client, monkeypatch):
    from commands.service import Commands

    async def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Commands, "create_domain", boom)
    response = await client.post("/api/v1/domains", json={"name": "a.example"})
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert "secret internals" not in response.text and "Traceback" not in response.text


async def test_idempotency_key_creates_once_and_answers_the_same(client):
    headers = {"Idempotency-Key": "create-a-1"}
    first = await client.post("/api/v1/domains", json={"name": "a.example"}, headers=headers)
    again = await client.post("/api/v1/domains", json={"name": "a.example"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()
    assert (await client.get("/api/v1/domains")).json()["meta"]["total"] == 1


async def test_event_records_actor_source_ip_and_request_id(client, nats_server):
    await client.post(
        "/api/v1/domains", json={"name": "a.example"}, headers={"X-Request-ID": "req-42"}
    )
    log = await EventLog.connect(nats_server.url)
    try:
        msg = await log.js.get_last_msg(log.stream, domain_subject("a.example"))
    finally:
        await log.close()
    meta = decode(msg.data).meta
    assert (meta.actor, meta.request_id) == ("api-key", "req-42")
    assert meta.source_ip != ""


async def test_request_id_is_echoed(client):
    response = await client.get("/api/v1/domains", headers={"X-Request-ID": "abc-1"})
    assert response.headers["x-request-id"] == "abc-1"


async def test_openapi_documents_every_route(client):
    spec = (await client.get("/schema/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/domains",
        "/api/v1/domains/{domain_id}",
        "/api/v1/mailboxes",
        "/api/v1/mailboxes/{mailbox_id}/password",
        "/api/v1/aliases/{alias_id}",
        "/auth/login",
        "/auth/verify",
        "/health",
        "/api/v1/system/about",
    ):
        assert path in paths
    create = paths["/api/v1/domains"]["post"]
    assert "requestBody" in create and "201" in create["responses"]
    assert "409" in create["responses"]


async def test_about_reports_versions(client):
    body = (await client.get("/api/v1/system/about")).json()
    assert body["app"] == "mailpanel" and body["postfix"] and body["dovecot"]
