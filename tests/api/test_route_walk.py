"""Every route in the OpenAPI schema, walked: credentials, scopes and domain limits hold."""

import re

from tests.api.helpers import domain, mailbox

OPEN = {"/health", "/auth/login", "/auth/verify"}
BODIES = {"post", "put", "patch"}


async def routes(client) -> list[tuple[str, str]]:
    spec = (await client.get("/schema/openapi.json")).json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def concrete(path: str, value: str = "1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


async def call(client, method: str, path: str, headers: dict[str, str]):
    kwargs = {"json": {}} if method.lower() in BODIES else {}
    return await client.request(method, path, headers=headers, **kwargs)


async def test_every_route_but_the_open_ones_needs_credentials(anon):
    walked = await routes(anon)
    assert len(walked) > 20
    for method, path in walked:
        if path in OPEN:
            continue
        response = await call(anon, method, concrete(path), {})
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json()["code"] == "UNAUTHORIZED"


async def test_a_read_token_may_not_call_any_non_get_route(client):
    token = (await client.post("/api/v1/admin/tokens", json={"name": "ro", "scope": "read"})).json()
    headers = {"X-API-Key": token["token"]}
    for method, path in await routes(client):
        if method in ("GET", "HEAD") or not path.startswith("/api/"):
            continue
        response = await call(client, method, concrete(path), headers)
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.json()["code"] == "FORBIDDEN"


async def test_a_domain_token_reaches_no_object_of_another_domain(client):
    mine = await domain(client, "mine.example")
    other = await domain(client, "other.example")
    await mailbox(client, mine, "a")
    victim_box = await mailbox(client, other, "b")
    victim_alias = (
        await client.post(
            "/api/v1/aliases", json={"source": "x@other.example", "destination": "b@other.example"}
        )
    ).json()
    token = (
        await client.post(
            "/api/v1/admin/tokens",
            json={"name": "dom", "scope": "write", "domains": ["mine.example"]},
        )
    ).json()
    headers = {"X-API-Key": token["token"]}
    ids = {"domain_id": other, "mailbox_id": victim_box["id"], "alias_id": victim_alias["id"]}
    for method, path in await routes(client):
        match = re.search(r"\{(domain_id|mailbox_id|alias_id)\}", path)
        if not match:
            continue
        response = await call(client, method, concrete(path, str(ids[match.group(1)])), headers)
        assert response.status_code in (400, 404), (method, path, response.status_code)
    assert (await client.get(f"/api/v1/mailboxes/{victim_box['id']}")).status_code == 200
    assert (await client.get(f"/api/v1/aliases/{victim_alias['id']}")).status_code == 200
    assert (await client.get(f"/api/v1/domains/{other}")).json()["active"] is True
