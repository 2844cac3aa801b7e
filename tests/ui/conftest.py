"""UI tests. test_pages_*: the app in-process (Litestar's test client, a real nats-server), no
browser. test_browser_*: a real `mailpanel serve` driven by Playwright in Debian's Chromium
(`.ci/ui-deps` installs it); they skip, saying why, when Chromium or Playwright is missing."""

import re
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import Settings
from tests.conftest import ADMIN_PASSWORD, API_KEY

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def sign_in(client: AsyncTestClient, token: str | None = None) -> str:  # type: ignore[type-arg]
    """Sign in through the login form; returns a CSRF token of the session."""
    page = await client.get("/ui/login")
    assert page.status_code == 200, page.text
    form = {"csrf": csrf_of(page.text), "next": "/ui/"}
    if token is None:
        form |= {"mode": "password", "username": "admin", "password": ADMIN_PASSWORD}
    else:
        form |= {"mode": "token", "token": token}
    answer = await client.post("/ui/login", data=form, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    home = await client.get("/ui/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)


@pytest.fixture
async def ui(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """A browser-like client: no API key, cookies kept."""
    app = create_app(settings)
    async with AsyncTestClient(app=app) as c:
        yield c


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(settings)
    async with AsyncTestClient(app=app) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c
