"""Seed section 1: X-API-Key or a 24 h JWT from /auth/login; X-API-Key wins when both are sent."""

from tests.conftest import ADMIN_PASSWORD, API_KEY


async def login(anon) -> str:
    response = await anon.post(
        "/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200
    return response.json()["token"]


async def test_missing_credentials_are_unauthorized_in_the_flat_shape(anon):
    response = await anon.get("/api/v1/domains")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert set(response.json()) == {"error", "detail", "code"}


async def test_wrong_api_key_is_unauthorized(anon):
    response = await anon.get("/api/v1/domains", headers={"X-API-Key": "nope"})
    assert response.status_code == 401


async def test_static_api_key_is_accepted(anon):
    response = await anon.get("/api/v1/domains", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200


async def test_login_returns_a_bearer_token_that_works(anon):
    token = await login(anon)
    response = await anon.get("/api/v1/domains", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_login_token_expires_in_24_hours(anon):
    from datetime import UTC, datetime

    response = await anon.post(
        "/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    expires = datetime.strptime(response.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    hours = (expires.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds() / 3600
    assert 23.9 < hours <= 24


async def test_wrong_password_is_unauthorized(anon):
    response = await anon.post("/auth/login", json={"username": "admin", "password": "wrong-pw"})
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"


async def test_unknown_user_is_unauthorized(anon):
    response = await anon.post("/auth/login", json={"username": "root", "password": ADMIN_PASSWORD})
    assert response.status_code == 401


async def test_tampered_token_is_unauthorized(anon):
    token = await login(anon)
    response = await anon.get("/api/v1/domains", headers={"Authorization": f"Bearer {token}x"})
    assert response.status_code == 401


async def test_api_key_wins_over_a_valid_bearer(anon):
    token = await login(anon)
    response = await anon.get(
        "/api/v1/domains", headers={"X-API-Key": "wrong", "Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


async def test_valid_api_key_wins_over_a_bad_bearer(anon):
    response = await anon.get(
        "/api/v1/domains", headers={"X-API-Key": API_KEY, "Authorization": "Bearer junk"}
    )
    assert response.status_code == 200


async def test_verify_accepts_a_valid_bearer(anon):
    token = await login(anon)
    response = await anon.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["valid"] is True
    assert response.json()["username"] == "admin"


async def test_verify_accepts_a_token_in_the_body(anon):
    token = await login(anon)
    response = await anon.post("/auth/verify", json={"token": token})
    assert response.json()["valid"] is True


async def test_verify_refuses_a_bad_token(anon):
    response = await anon.post("/auth/verify", json={"token": "a.b.c"})
    assert response.status_code == 401


async def test_health_is_open(anon):
    response = await anon.get("/health")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == {"status": "ok"}
