"""Seed section 4: aliases."""

from tests.api.helpers import domain, mailbox


async def create(client, source: str, destination: str):
    return await client.post("/api/v1/aliases", json={"source": source, "destination": destination})


async def test_create_answers_201_with_the_alias(client):
    domain_id = await domain(client)
    response = await create(client, "info@example.com", "alice@example.com")
    assert response.status_code == 201
    body = response.json()
    assert (body["domain_id"], body["source"], body["destination"]) == (
        domain_id,
        "info@example.com",
        "alice@example.com",
    )


async def test_several_destinations_are_kept_in_order(client):
    await domain(client)
    response = await create(client, "team@example.com", "a@example.com,b@example.org")
    assert response.json()["destination"] == "a@example.com, b@example.org"


async def test_source_domain_must_be_managed(client):
    response = await create(client, "info@other.org", "a@example.com")
    assert response.status_code == 400
    assert response.json()["error"] == "source domain other.org is not managed by this server"


async def test_source_must_be_an_address(client):
    response = await create(client, "info", "a@example.com")
    assert response.status_code == 400
    assert response.json()["error"] == "source must be of the form local@domain"


async def test_invalid_destination_is_a_validation_error(client):
    await domain(client)
    response = await create(client, "info@example.com", "not an address")
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def test_catch_all_source_is_accepted(client):
    await domain(client)
    assert (await create(client, "@example.com", "alice@example.com")).status_code == 201


async def test_duplicate_source_conflicts(client):
    await domain(client)
    await create(client, "info@example.com", "a@example.com")
    assert (await create(client, "Info@Example.com", "b@example.com")).status_code == 409


async def test_source_that_is_a_mailbox_conflicts(client):
    await mailbox(client, await domain(client), "alice")
    response = await create(client, "alice@example.com", "b@example.org")
    assert response.status_code == 409


async def test_patch_changes_the_destination(client):
    await domain(client)
    alias_id = (await create(client, "info@example.com", "a@example.com")).json()["id"]
    response = await client.patch(f"/api/v1/aliases/{alias_id}", json={"destination": "z@x.org"})
    assert response.status_code == 200
    assert response.json()["destination"] == "z@x.org"


async def test_list_filters_by_domain(client):
    await domain(client, "a.example")
    second = await domain(client, "b.example")
    await create(client, "x@a.example", "z@x.org")
    await create(client, "y@b.example", "z@x.org")
    body = (await client.get(f"/api/v1/aliases?domain_id={second}")).json()
    assert [a["source"] for a in body["data"]] == ["y@b.example"]


async def test_delete_answers_the_seed_message(client):
    await domain(client)
    alias_id = (await create(client, "info@example.com", "a@example.com")).json()["id"]
    response = await client.delete(f"/api/v1/aliases/{alias_id}")
    assert response.json() == {"message": "alias deleted"}
    assert (await client.get(f"/api/v1/aliases/{alias_id}")).status_code == 404
