"""Small request helpers shared by the API tests."""


async def domain(client, name: str = "example.com") -> int:
    response = await client.post("/api/v1/domains", json={"name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def mailbox(client, domain_id: int, username: str = "alice", **extra) -> dict:
    body = {"domain_id": domain_id, "username": username, "password": "S3cret-pass", **extra}
    response = await client.post("/api/v1/mailboxes", json=body)
    assert response.status_code == 201, response.text
    return response.json()
