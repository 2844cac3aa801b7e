"""The web UI in a real browser: Playwright for Python driving Debian's Chromium against a real
`mailpanel serve` (embedded NATS, MAILPANEL_MAILSTACK=off).

Skipped, with the reason, when /usr/bin/chromium (`.ci/ui-deps`) or the playwright package is
missing. Screenshots go to a temporary directory, or to $MAILPANEL_UI_SCREENSHOTS (for the
README: MAILPANEL_UI_SCREENSHOTS=docs/screenshots .venv/bin/pytest tests/ui/test_browser.py).
"""

import asyncio
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from commands.keys import self_signed
from tests.conftest import ADMIN_PASSWORD
from tests.e2e.conftest import Procs, Server

CHROMIUM = Path("/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]


def _skip_reason() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: run .ci/ui-deps (apt-get install chromium) as root"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ui")
    procs = Procs(root)
    try:
        srv = procs.serve(root / "data", None)
        asyncio.run(srv.wait_healthy())
        yield srv
    finally:
        procs.cleanup()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator["Browser"]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("MAILPANEL_UI_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_page(browser: "Browser", server: Server, viewport: dict[str, int] = DESKTOP) -> "Page":
    context = browser.new_context(base_url=server.url, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(15000)
    page.on("dialog", lambda dialog: dialog.accept())  # our confirmations: say yes
    return page


def sign_in(page: "Page", password: str = ADMIN_PASSWORD) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def sign_in_with_token(page: "Page", token: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def snap(page: "Page", shots: Path, name: str, full: bool = False) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=full)


def no_horizontal_scroll(page: "Page") -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    assert width <= viewport + 1, f"{page.url}: {width}px wide in a {viewport}px window"


def test_admin_manages_mail_through_the_browser(browser: Any, server: Server, shots: Path):
    page = new_page(browser, server)

    # keyboard: the first Tab reaches the skip link
    page.goto("/ui/login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").strip() == "Skip to content"

    # a wrong password is shown next to the field
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password", exact=True).fill("wrong-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#login-password-error")).to_contain_text("Wrong user name or password")
    snap(page, shots, "login")

    sign_in(page)

    # a domain through the form; an invalid one is refused in place
    page.goto("/ui/domains")
    page.get_by_label("Domain name").fill("not a domain")
    page.get_by_role("button", name="Add domain").click()
    expect(page.locator("#create-name-error")).to_be_visible()
    expect(page.get_by_label("Domain name")).to_have_value("not a domain")
    page.get_by_label("Domain name").fill("example.test")
    page.get_by_role("button", name="Add domain").click()
    expect(page.get_by_role("heading", name="example.test")).to_be_visible()
    expect(page.locator(".flash.ok")).to_contain_text("Domain example.test created")
    page.goto("/ui/domains")
    expect(page.get_by_role("link", name="example.test")).to_be_visible()
    page.get_by_label("Search domains").fill("exam")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="example.test")).to_be_visible()
    snap(page, shots, "domains")
    page.get_by_role("link", name="example.test").click()
    snap(page, shots, "domain")

    # a mailbox through the domain's Mailboxes tab
    page.get_by_role("navigation", name="Domain sections").get_by_role(
        "link", name="Mailboxes"
    ).click()
    page.get_by_label("User name (local part)").fill("alice")
    page.get_by_label("Password").fill("S3cret-pass")
    page.get_by_label("Quota").fill("2G")
    page.get_by_role("button", name="Add mailbox").click()
    expect(page.get_by_role("link", name="alice@example.test")).to_be_visible()
    snap(page, shots, "mailboxes")
    page.get_by_role("link", name="alice@example.test").click()
    expect(page.get_by_role("heading", name="alice@example.test")).to_be_visible()
    snap(page, shots, "mailbox")

    # an alias, listed, then edited
    page.goto("/ui/aliases")
    page.get_by_label("Source address").fill("info@example.test")
    page.get_by_label("Destination(s)").fill("alice@example.test")
    page.get_by_role("button", name="Add alias").click()
    expect(page.get_by_role("link", name="info@example.test")).to_be_visible()
    snap(page, shots, "aliases")
    page.get_by_role("link", name="info@example.test").click()
    page.get_by_label("Destination(s)").fill("alice@example.test, ops@example.org")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".facts")).to_contain_text("ops@example.org")

    # an override changes the effective view, with its provenance
    page.goto("/ui/domains")
    page.get_by_role("link", name="example.test").click()
    page.get_by_role("link", name="Effective").click()
    expect(page.locator("#eff-dmarc_policy")).to_contain_text("none")
    page.get_by_role("link", name="Overrides").click()
    page.get_by_label("DMARC policy").select_option("reject")
    page.get_by_role("button", name="Save overrides").click()
    expect(page.get_by_role("link", name="Effective")).to_have_attribute("aria-current", "page")
    row = page.locator("#eff-dmarc_policy")
    expect(row).to_contain_text("reject")
    expect(row).to_contain_text("domain_override")
    expect(row).to_contain_text("admin")
    snap(page, shots, "effective")
    page.get_by_role("link", name="Overrides").click()
    snap(page, shots, "overrides")
    page.get_by_role("link", name="DNS").click()
    expect(page.get_by_role("button", name="Copy value").first).to_be_visible()  # JS: copy
    snap(page, shots, "dns")
    page.get_by_role("link", name="History").click()
    expect(page.locator("article.event").first).to_contain_text("domain.overrides_set")

    # the audit log shows the events; revert the alias edit when the API can
    page.goto("/ui/audit")
    for kind in ("domain.created", "mailbox.created", "alias.created", "alias.updated"):
        expect(page.locator("article.event", has_text=kind).first).to_be_visible()
    page.get_by_label("Type").fill("alias.")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("article.event", has_text="mailbox.created")).to_have_count(0)
    snap(page, shots, "audit")
    edit = page.locator("article.event", has_text="alias.updated").first
    expect(edit).to_contain_text("ops@example.org")
    revert = edit.get_by_role("button", name="Revert")
    if revert.count():
        revert.click()
        expect(page.locator(".flash.ok")).to_contain_text("reverted")
        page.goto("/ui/aliases")
        expect(page.locator("td", has_text="alice@example.test")).to_be_visible()
        expect(page.locator("td", has_text="ops@example.org")).to_have_count(0)

    # a certificate upload (multipart)
    cert_pem, key_pem = self_signed("mail.example.test", datetime.now(UTC))
    page.goto("/ui/tls")
    page.get_by_label("Host name").first.fill("mail.example.test")
    page.get_by_label("Certificate chain (PEM, leaf first)").set_input_files(
        {"name": "cert.pem", "mimeType": "application/x-pem-file", "buffer": cert_pem.encode()}
    )
    page.get_by_label("Private key (PEM)").set_input_files(
        {"name": "key.pem", "mimeType": "application/x-pem-file", "buffer": key_pem.encode()}
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".flash.ok")).to_contain_text("certificate uploaded")
    expect(page.locator("tr", has_text="mail.example.test")).to_contain_text("uploaded")
    snap(page, shots, "tls")

    # DKIM, config, queue, tokens, security, backup, dashboard
    page.goto("/ui/dkim")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("tr", has_text="example.test")).to_contain_text("active")
    snap(page, shots, "dkim")
    page.goto("/ui/config")
    snap(page, shots, "config")
    page.goto("/ui/queue")
    snap(page, shots, "queue")
    page.goto("/ui/tokens")
    page.get_by_label("Name").fill("monitoring")
    page.get_by_label("Scope").select_option("read")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#secret-value").input_value()
    assert secret.startswith("mp_")
    snap(page, shots, "tokens")
    page.goto("/ui/security")
    snap(page, shots, "security")
    page.goto("/ui/backup")
    snap(page, shots, "backup")
    page.goto("/ui/")
    expect(page.locator("#live")).to_contain_text("Reconcile agents")
    snap(page, shots, "dashboard", full=True)

    # sign out: the pages want a sign-in again
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator(".flash.ok")).to_contain_text("Signed out")
    page.goto("/ui/domains")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))

    # a read token sees the same pages with no form (sign-out aside) and cannot post
    reader = new_page(browser, server)
    sign_in_with_token(reader, secret)
    for path in (
        "/ui/",
        "/ui/domains",
        "/ui/mailboxes",
        "/ui/aliases",
        "/ui/config",
        "/ui/dkim",
        "/ui/tls",
        "/ui/audit",
    ):
        reader.goto(path)
        forms = reader.locator("form[method=post]")
        expect(forms).to_have_count(1)
        assert forms.first.get_attribute("action") == "/ui/logout"
    reader.get_by_role("link", name="Domains", exact=True).click()
    reader.get_by_role("link", name="example.test").click()
    expect(reader.get_by_role("button", name="Delete domain")).to_have_count(0)
    csrf = reader.locator("input[name=csrf]").first.input_value()
    refused = reader.request.post("/ui/domains", form={"csrf": csrf, "name": "no.example"})
    assert refused.status == 403
    reader.context.close()
    page.context.close()


def test_pages_are_readable_at_375_px(browser: Any, server: Server, shots: Path):
    page = new_page(browser, server, PHONE)
    sign_in(page)
    no_horizontal_scroll(page)
    snap(page, shots, "dashboard-375", full=True)
    page.goto("/ui/domains")
    if not page.get_by_role("link", name="phone.example").count():
        page.get_by_label("Domain name").fill("phone.example")
        page.get_by_role("button", name="Add domain").click()
        expect(page.get_by_role("heading", name="phone.example")).to_be_visible()
    for path in ("/ui/domains", "/ui/aliases", "/ui/config", "/ui/audit", "/ui/tokens"):
        page.goto(path)
        no_horizontal_scroll(page)
    page.goto("/ui/domains")
    snap(page, shots, "domains-375", full=True)
    page.get_by_role("link", name="phone.example").click()
    no_horizontal_scroll(page)
    snap(page, shots, "domain-375", full=True)
    page.context.close()
