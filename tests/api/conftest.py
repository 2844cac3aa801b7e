"""API tests: the real app through Litestar's AsyncTestClient against a real nats-server."""

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import Settings
from tests.conftest import API_KEY


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(settings)
    async with AsyncTestClient(app=app) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c


@pytest.fixture
async def anon(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(settings)
    async with AsyncTestClient(app=app) as c:
        yield c
