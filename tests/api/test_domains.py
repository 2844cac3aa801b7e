"""Seed section 2: domains."""

import re

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def create(client, name: str, **extra) -> dict:
    response = await client.post("/api/v1/domains", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_answers_201_with_the_domain(client):
    body = await create(client, "example.com")
    assert body["name"] == "example.com" and body["active"] is True
    assert body["outgoing_ip"] == "" and isinstance(body["id"], int)
    assert RFC3339_Z.match(body["created_at"])


async def test_created_domain_is_readable_at_once(client):
    body = await create(client, "example.com")
    response = await client.get(f"/api/v1/domains/{body['id']}")
    assert response.json() == body


async def test_single_get_carries_an_etag(client):
    body = await create(client, "example.com")
    response = await client.get(f"/api/v1/domains/{body['id']}")
    assert response.headers["etag"] == f'"{body["id"]}"'


async def test_name_is_normalised_to_lowercase_a_label(client):
    assert (await create(client, "Bücher.Example."))["name"] == "xn--bcher-kva.example"


async def test_duplicate_name_conflicts(client):
    await create(client, "example.com")
    response = await client.post("/api/v1/domains", json={"name": "EXAMPLE.com"})
    assert response.status_code == 409
    assert response.json()["code"] == "CONFLICT"


async def test_missing_name_is_a_validation_error(client):
    response = await client.post("/api/v1/domains", json={"outgoing_ip": "auto"})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_invalid_name_is_a_validation_error(client):
    response = await client.post("/api/v1/domains", json={"name": "not a domain"})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_explicit_outgoing_ip_is_kept(client):
    assert (await create(client, "a.example", outgoing_ip="203.0.113.7"))["outgoing_ip"] == (
        "203.0.113.7"
    )


async def test_invalid_outgoing_ip_is_a_validation_error(client):
    response = await client.post("/api/v1/domains", json={"name": "a.example", "outgoing_ip": "x"})
    assert response.status_code == 400


async def test_auto_picks_the_least_used_host_ip(client):
    first = await create(client, "a.example", outgoing_ip="auto")
    second = await create(client, "b.example", outgoing_ip="auto")
    third = await create(client, "c.example", outgoing_ip="auto")
    assert [first["outgoing_ip"], second["outgoing_ip"], third["outgoing_ip"]] == [
        "192.0.2.10",
        "192.0.2.11",
        "192.0.2.10",
    ]


async def test_list_pages_with_total(client):
    for i in range(3):
        await create(client, f"d{i}.example")
    response = await client.get("/api/v1/domains?page=2&limit=2")
    body = response.json()
    assert [d["name"] for d in body["data"]] == ["d2.example"]
    assert body["meta"] == {"page": 2, "limit": 2, "total": 3}


async def test_page_past_the_end_is_empty_with_total(client):
    await create(client, "a.example")
    body = (await client.get("/api/v1/domains?page=9")).json()
    assert body == {"data": [], "meta": {"page": 9, "limit": 50, "total": 1}}


async def test_limit_over_500_is_a_validation_error(client):
    response = await client.get("/api/v1/domains?limit=501")
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_page_zero_is_a_validation_error(client):
    assert (await client.get("/api/v1/domains?page=0")).status_code == 400


async def test_patch_deactivates_and_answers_the_domain(client):
    body = await create(client, "a.example")
    response = await client.patch(f"/api/v1/domains/{body['id']}", json={"active": False})
    assert response.status_code == 200
    assert response.json()["active"] is False
    assert (await client.get(f"/api/v1/domains/{body['id']}")).json()["active"] is False


async def test_patch_with_stale_if_match_conflicts(client):
    body = await create(client, "a.example")
    await client.patch(f"/api/v1/domains/{body['id']}", json={"active": False})
    response = await client.patch(
        f"/api/v1/domains/{body['id']}",
        json={"active": True},
        headers={"If-Match": f'"{body["id"]}"'},
    )
    assert response.status_code == 409


async def test_delete_answers_the_seed_message(client):
    body = await create(client, "a.example")
    response = await client.delete(f"/api/v1/domains/{body['id']}")
    assert response.status_code == 200
    assert response.json() == {"message": "domain deleted"}
    assert (await client.get(f"/api/v1/domains/{body['id']}")).status_code == 404


async def test_delete_cascades_to_mailboxes_and_aliases(client):
    body = await create(client, "a.example")
    await client.post(
        "/api/v1/mailboxes",
        json={"domain_id": body["id"], "username": "alice", "password": "S3cret-pass"},
    )
    await client.post(
        "/api/v1/aliases", json={"source": "info@a.example", "destination": "alice@a.example"}
    )
    await client.delete(f"/api/v1/domains/{body['id']}")
    assert (await client.get("/api/v1/mailboxes")).json()["meta"]["total"] == 0
    assert (await client.get("/api/v1/aliases")).json()["meta"]["total"] == 0


async def test_delete_of_unknown_domain_is_not_found(client):
    response = await client.delete("/api/v1/domains/999")
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


async def test_invalid_id_is_a_validation_error(client):
    response = await client.delete("/api/v1/domains/abc")
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_recreated_domain_gets_a_new_id(client):
    first = await create(client, "a.example")
    await client.delete(f"/api/v1/domains/{first['id']}")
    second = await create(client, "a.example")
    assert second["id"] > first["id"]
