"""Given a running app, when the seed's first requests are sent, then they behave as documented."""


async def test_created_domain_is_listed(client):
    created = await client.post("/api/v1/domains", json={"name": "example.com"})
    assert created.status_code == 201
    listed = await client.get("/api/v1/domains")
    assert listed.json() == {
        "data": [created.json()],
        "meta": {"page": 1, "limit": 50, "total": 1},
    }
