"""Per-IP rate limits, IP allow-lists, trusted proxies, security settings and refusal counts."""

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

import api.auth
from api.app import create_app
from core.settings import Settings
from tests.conftest import ADMIN_PASSWORD, API_KEY

LOGIN = {"username": "admin", "password": ADMIN_PASSWORD}


@pytest.fixture
def peer(monkeypatch) -> list[str]:
    """The socket peer address the app sees (the test client has none of its own)."""
    current = ["203.0.113.5"]
    monkeypatch.setattr(api.auth, "peer_ip", lambda scope: current[0])
    return current


@pytest.fixture
async def limited(settings: Settings, peer) -> AsyncIterator[AsyncTestClient]:
    """The seed's default limits: 5 logins and 60 API calls per minute per IP."""
    import msgspec

    app = create_app(msgspec.structs.replace(settings, rate_limit_login=5, rate_limit_api=60))
    async with AsyncTestClient(app=app) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c


async def put_security(client, **changes) -> dict:
    body = {"rate_limit_login": 1000, "rate_limit_api": 100000, **changes}
    response = await client.put("/api/v1/security/settings", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_sixth_login_in_a_minute_is_rate_limited(limited):
    for _ in range(5):
        assert (await limited.post("/auth/login", json=LOGIN)).status_code == 200
    response = await limited.post("/auth/login", json=LOGIN)
    assert response.status_code == 429
    assert response.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_failed_logins_count_towards_the_login_limit(limited):
    for _ in range(5):
        await limited.post("/auth/login", json={"username": "admin", "password": "wrong-pw"})
    assert (await limited.post("/auth/login", json=LOGIN)).status_code == 429


async def test_sixty_first_api_call_is_rate_limited(limited):
    for _ in range(60):
        assert (await limited.get("/api/v1/domains")).status_code == 200
    response = await limited.get("/api/v1/domains")
    assert response.status_code == 429
    assert "retry-after" in response.headers


async def test_every_api_answer_carries_rate_limit_headers(limited):
    response = await limited.get("/api/v1/domains")
    assert response.headers["x-ratelimit-limit"] == "60"
    assert response.headers["x-ratelimit-remaining"] == "59"
    assert 0 < int(response.headers["x-ratelimit-reset"]) <= 60


async def test_refused_calls_carry_rate_limit_headers_too(limited):
    response = await limited.get("/api/v1/domains", headers={"X-API-Key": "wrong"})
    assert response.status_code == 401
    assert "x-ratelimit-remaining" in response.headers


async def test_limits_are_per_source_ip(limited, peer):
    for _ in range(60):
        await limited.get("/api/v1/domains")
    peer[0] = "203.0.113.6"
    assert (await limited.get("/api/v1/domains")).status_code == 200


async def test_two_processes_share_one_limit(settings, peer):
    """Two apps (as two API processes would) on one NATS: 60 calls in total, not 60 each."""
    import msgspec

    limited = msgspec.structs.replace(settings, rate_limit_api=60)
    other = msgspec.structs.replace(limited, data_dir=settings.data_dir.with_name("data2"))
    async with (
        AsyncTestClient(app=create_app(limited)) as a,
        AsyncTestClient(app=create_app(other)) as b,
    ):
        codes = []
        for i in range(80):
            c = a if i % 2 else b
            codes.append(
                (await c.get("/api/v1/domains", headers={"X-API-Key": API_KEY})).status_code
            )
    assert codes.count(200) <= 60
    assert codes.count(429) >= 20


async def test_settings_change_takes_effect(client, peer):
    await put_security(client, rate_limit_api=3)
    codes = [(await client.get("/api/v1/domains")).status_code for _ in range(5)]
    assert codes.count(429) >= 2


async def test_api_key_allow_list_refuses_other_addresses(client, peer):
    await put_security(client, api_key_allowlist=["198.51.100.0/24"])
    response = await client.get("/api/v1/domains")
    assert response.status_code == 403
    assert response.json()["code"] == "IP_RESTRICTED"


async def test_api_key_allow_list_admits_listed_addresses(client, peer):
    await put_security(client, api_key_allowlist=["203.0.113.0/24"])
    assert (await client.get("/api/v1/domains")).status_code == 200


async def test_jwt_calls_bypass_the_api_key_allow_list(client, peer):
    token = (await client.post("/auth/login", json=LOGIN)).json()["token"]
    await put_security(client, api_key_allowlist=["198.51.100.0/24"])
    response = await client.get(
        "/api/v1/domains", headers={"X-API-Key": "", "Authorization": f"Bearer {token}"}
    )
    assert response.status_code in (401, 403)  # an X-API-Key header, even empty, is a key call
    del client.headers["X-API-Key"]
    response = await client.get("/api/v1/domains", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_login_allow_list_refuses_other_addresses(client, peer):
    await put_security(client, login_allowlist=["198.51.100.7"])
    response = await client.post("/auth/login", json=LOGIN)
    assert response.status_code == 403
    assert response.json()["code"] == "IP_RESTRICTED"


async def test_empty_lists_allow_everyone(client, peer):
    await put_security(client, login_allowlist=[], api_key_allowlist=[])
    assert (await client.post("/auth/login", json=LOGIN)).status_code == 200


async def test_invalid_cidr_is_a_validation_error(client):
    response = await client.put(
        "/api/v1/security/settings",
        json={"rate_limit_login": 5, "rate_limit_api": 60, "login_allowlist": ["10.0.0.300/8"]},
    )
    assert response.status_code == 400
    assert "login_allowlist" in response.json()["error"]


async def test_settings_are_shown_as_set(client, peer):
    body = await put_security(client, api_key_allowlist=["203.0.113.5", "198.51.100.0/24"])
    assert body["api_key_allowlist"] == ["203.0.113.5/32", "198.51.100.0/24"]
    assert (await client.get("/api/v1/security/settings")).json() == body


async def test_forwarded_for_is_ignored_from_untrusted_peers(client, peer):
    await put_security(client, api_key_allowlist=["198.51.100.0/24"])
    response = await client.get("/api/v1/domains", headers={"X-Forwarded-For": "198.51.100.9"})
    assert response.status_code == 403


async def test_forwarded_for_is_honoured_from_trusted_proxies(client, peer):
    await put_security(
        client, api_key_allowlist=["198.51.100.0/24"], trusted_proxies=["203.0.113.5"]
    )
    response = await client.get("/api/v1/domains", headers={"X-Forwarded-For": "198.51.100.9"})
    assert response.status_code == 200


async def test_refusals_are_counted_per_ip(client, peer):
    await client.post("/auth/login", json={"username": "admin", "password": "bad-one"})
    await client.get("/api/v1/domains", headers={"X-API-Key": "nope"})
    stats = (await client.get("/api/v1/security/stats")).json()
    assert stats["totals"]["failed_logins"] == 1 and stats["totals"]["refused_keys"] == 1
    assert stats["by_ip"]["203.0.113.5"]["failed_logins"] == 1


async def test_security_change_is_an_event(client, nats_server):
    from commands.log import EventLog

    await put_security(client, rate_limit_api=99)
    log = await EventLog.connect(nats_server.url)
    try:
        msg = await log.js.get_last_msg(log.stream, "mp.security.settings")
    finally:
        await log.close()
    assert b"security.settings_changed" in msg.data and b'"rate_limit_api":99' in msg.data
