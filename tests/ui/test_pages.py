"""The web UI over HTTP, in-process (no browser): sign-in and its cookie, CSRF, scopes, rate
limits, errors shown next to their field, and the pages running the API's own code."""

import re

from tests.conftest import API_KEY
from tests.ui.conftest import csrf_of, sign_in

POST_FORM = re.compile(r'<form[^>]*method="post"[^>]*action="([^"]+)"')


def post_forms(html: str) -> list[str]:
    return POST_FORM.findall(html)


async def test_root_redirects_to_the_ui_and_pages_need_a_sign_in(ui):
    root = await ui.get("/", follow_redirects=False)
    assert root.status_code == 302 and root.headers["location"] == "/ui/"
    page = await ui.get("/ui/domains?q=x", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=/ui/domains%3Fq%3Dx"
    login = await ui.get("/ui/login")
    assert 'for="login-password"' in login.text and 'for="token-token"' in login.text


async def test_the_session_cookie_is_the_login_jwt_httponly_and_strict(ui, settings):
    await sign_in(ui)
    cookie = next(c for c in ui.cookies.jar if c.name == "mailpanel_session")
    assert cookie.path == "/ui"
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
    assert not cookie.secure  # plain http here; https below
    from api.auth import verify_jwt
    from api.ui.web import decode_credential

    cred = decode_credential(cookie.value)
    assert cred is not None and cred.kind == "jwt"
    assert verify_jwt(settings, cred.secret)["sub"] == "admin"


async def test_secure_cookie_over_https(settings):
    from litestar.testing import AsyncTestClient

    from api.app import create_app

    async with AsyncTestClient(app=create_app(settings), base_url="https://testserver.local") as c:
        await sign_in(c)
        cookie = next(k for k in c.cookies.jar if k.name == "mailpanel_session")
        assert cookie.secure


async def test_wrong_password_is_shown_next_to_the_field(ui):
    page = await ui.get("/ui/login")
    answer = await ui.post(
        "/ui/login",
        data={
            "csrf": csrf_of(page.text),
            "mode": "password",
            "username": "admin",
            "password": "nope-nope",
        },
    )
    assert answer.status_code == 401
    assert 'id="login-password-error"' in answer.text
    assert "Wrong user name or password" in answer.text
    assert 'value="admin"' in answer.text  # the user's input stays


async def test_login_needs_the_login_forms_csrf_token(ui):
    await ui.get("/ui/login")
    answer = await ui.post(
        "/ui/login",
        data={"csrf": "0" * 64, "mode": "password", "username": "admin", "password": "x"},
    )
    assert answer.status_code == 403
    assert "expired" in answer.text


async def test_every_post_needs_the_sessions_csrf_token(ui, api):
    csrf = await sign_in(ui)
    for token in ("", "f" * 64):
        answer = await ui.post("/ui/domains", data={"csrf": token, "name": "csrf.example"})
        assert answer.status_code == 403, answer.text
        assert "CSRF" in answer.text
    domains = (await api.get("/api/v1/domains")).json()["data"]
    assert domains == []
    created = await ui.post("/ui/domains", data={"csrf": csrf, "name": "csrf.example"})
    assert created.status_code == 200 and "Domain csrf.example created" in created.text


async def test_errors_from_the_command_layer_are_shown_in_place(ui, api):
    csrf = await sign_in(ui)
    bad = await ui.post(
        "/ui/domains", data={"csrf": csrf, "name": "not a domain", "outgoing_ip": ""}
    )
    assert bad.status_code == 400
    assert 'id="create-name-error"' in bad.text
    assert 'value="not a domain"' in bad.text
    await ui.post("/ui/domains", data={"csrf": csrf, "name": "dup.example"})
    dup = await ui.post("/ui/domains", data={"csrf": csrf, "name": "dup.example"})
    assert dup.status_code == 409
    domain_id = (await api.get("/api/v1/domains")).json()["data"][0]["id"]
    weak = await ui.post(
        "/ui/mailboxes",
        data={
            "csrf": csrf,
            "domain_id": str(domain_id),
            "username": "bob",
            "password": "123",
            "quota": "",
            "scoped": str(domain_id),
        },
    )
    assert weak.status_code == 400
    assert 'id="create-password-error"' in weak.text
    assert 'value="bob"' in weak.text and "123" not in re.findall(r'value="([^"]*)"', weak.text)
    override = await ui.post(
        f"/ui/domains/{domain_id}/overrides",
        data={"csrf": csrf, "max_mailboxes": "-3"},
    )
    assert override.status_code == 400
    assert 'id="ov-max_mailboxes-error"' in override.text
    assert 'value="-3"' in override.text
    confirm = await ui.post(
        f"/ui/domains/{domain_id}/delete", data={"csrf": csrf, "confirm": "wrong.example"}
    )
    assert confirm.status_code == 400 and 'id="delete-confirm-error"' in confirm.text
    assert (await api.get(f"/api/v1/domains/{domain_id}")).status_code == 200


async def test_forms_change_what_the_api_shows(ui, api):
    csrf = await sign_in(ui)
    await ui.post("/ui/domains", data={"csrf": csrf, "name": "forms.example"})
    domain = (await api.get("/api/v1/domains")).json()["data"][0]
    did = domain["id"]
    await ui.post(
        "/ui/mailboxes",
        data={
            "csrf": csrf,
            "domain_id": str(did),
            "username": "alice",
            "password": "S3cret-pass",
            "quota": "2G",
            "scoped": str(did),
        },
    )
    box = (await api.get(f"/api/v1/mailboxes?domain_id={did}")).json()["data"][0]
    assert box["username"] == "alice" and box["quota"] == 2 * 1024**3
    await ui.post(
        "/ui/aliases",
        data={"csrf": csrf, "source": "info@forms.example", "destination": "alice@forms.example"},
    )
    alias = (await api.get("/api/v1/aliases")).json()["data"][0]
    assert alias["destination"] == "alice@forms.example"
    before = (await api.get(f"/api/v1/domains/{did}/effective")).json()
    assert before["dmarc_policy"] == "none"
    saved = await ui.post(
        f"/ui/domains/{did}/overrides", data={"csrf": csrf, "dmarc_policy": "reject"}
    )
    assert saved.status_code == 200 and 'id="eff-dmarc_policy"' in saved.text
    row = re.search(r'id="eff-dmarc_policy">(.*?)</tr>', saved.text, re.S)
    assert row and "reject" in row.group(1) and "domain_override" in row.group(1)
    after = (await api.get(f"/api/v1/domains/{did}/effective?explain=true")).json()
    assert after["dmarc_policy"] == "reject"
    assert after["explain"]["dmarc_policy"]["actor"] == "admin"
    await ui.post(f"/ui/domains/{did}/active", data={"csrf": csrf, "active": "false"})
    assert (await api.get(f"/api/v1/domains/{did}")).json()["active"] is False
    await ui.post(
        f"/ui/mailboxes/{box['id']}/update", data={"csrf": csrf, "quota": "0", "active": "true"}
    )
    assert (await api.get(f"/api/v1/mailboxes/{box['id']}")).json()["quota"] == 0
    history = await ui.get(f"/ui/domains/{did}/history")
    assert "domain.overrides_set" in history.text and "domain.updated" in history.text
    audit = await ui.get("/ui/audit?actor=admin&type=mailbox.")
    assert "mailbox.created" in audit.text and "domain.created" not in audit.text
    events = (await api.get("/api/v1/events?type=alias.created")).json()["data"]
    assert events[0]["actor"] == "admin"  # the UI's principal is the events' actor
    deleted = await ui.post(
        f"/ui/domains/{did}/delete", data={"csrf": csrf, "confirm": "forms.example"}
    )
    assert deleted.status_code == 200 and "deleted" in deleted.text
    assert (await api.get(f"/api/v1/domains/{did}")).status_code == 404


async def test_a_read_token_sees_no_forms_and_cannot_post(ui, api):
    await api.post("/api/v1/domains", json={"name": "ro.example"})
    token = (await api.post("/api/v1/admin/tokens", json={"name": "ro", "scope": "read"})).json()
    csrf = await sign_in(ui, token["token"])
    pages = [
        "/ui/",
        "/ui/domains",
        "/ui/domains/1",
        "/ui/domains/1/overrides",
        "/ui/domains/1/dns",
        "/ui/mailboxes",
        "/ui/aliases",
        "/ui/config",
        "/ui/dkim",
        "/ui/tls",
        "/ui/queue",
        "/ui/audit",
    ]
    domain_id = (await api.get("/api/v1/domains")).json()["data"][0]["id"]
    pages = [p.replace("/1", f"/{domain_id}") for p in pages]
    for path in pages:
        page = await ui.get(path)
        assert page.status_code == 200, (path, page.text[-500:])
        assert post_forms(page.text) == ["/ui/logout"], (path, post_forms(page.text))
    for path, form in [
        ("/ui/domains", {"name": "nope.example"}),
        (f"/ui/domains/{domain_id}/delete", {"confirm": "ro.example"}),
        (f"/ui/domains/{domain_id}/overrides", {"dmarc_policy": "reject"}),
        ("/ui/config/global", {}),
        ("/ui/dkim/generate", {"domain": "ro.example"}),
        ("/ui/audit/1/revert", {}),
    ]:
        answer = await ui.post(path, data={"csrf": csrf, **form})
        assert answer.status_code == 403, (path, answer.status_code)
    assert len((await api.get("/api/v1/domains")).json()["data"]) == 1
    assert (await ui.get("/ui/tokens")).status_code == 403  # admin pages stay admin


async def test_a_domain_token_sees_only_its_domain(ui, api):
    await api.post("/api/v1/domains", json={"name": "mine.example"})
    other = (await api.post("/api/v1/domains", json={"name": "other.example"})).json()
    token = (
        await api.post(
            "/api/v1/admin/tokens",
            json={"name": "dom", "scope": "write", "domains": ["mine.example"]},
        )
    ).json()
    await sign_in(ui, token["token"])
    listing = await ui.get("/ui/domains")
    assert "mine.example" in listing.text and "other.example" not in listing.text
    assert "other.example" not in (await ui.get("/ui/domains?q=example")).text
    assert (await ui.get(f"/ui/domains/{other['id']}")).status_code == 404
    assert 'href="/ui/tokens"' not in listing.text


async def test_logout_ends_the_session(ui):
    csrf = await sign_in(ui)
    out = await ui.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert "mailpanel_session" not in {c.name for c in ui.cookies.jar if c.value}
    again = await ui.get("/ui/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


async def test_the_apis_rate_limit_applies_to_pages(ui, api):
    await sign_in(ui)
    await api.put("/api/v1/security/settings", json={"rate_limit_login": 100, "rate_limit_api": 3})
    statuses = [(await ui.get("/ui/domains")).status_code for _ in range(6)]
    assert 429 in statuses, statuses
    limited = await ui.get("/ui/domains")
    assert limited.status_code == 429 and "Too many requests" in limited.text


async def test_the_ip_allow_list_applies_to_token_sign_in(ui, api):
    token = (await api.post("/api/v1/admin/tokens", json={"name": "t", "scope": "read"})).json()
    await api.put(
        "/api/v1/security/settings",
        json={
            "rate_limit_login": 100,
            "rate_limit_api": 1000,
            "api_key_allowlist": ["192.0.2.0/24"],
        },
    )
    page = await ui.get("/ui/login")
    answer = await ui.post(
        "/ui/login", data={"csrf": csrf_of(page.text), "mode": "token", "token": token["token"]}
    )
    assert answer.status_code == 403 and "allow-list" in answer.text


async def test_token_secret_is_shown_once(ui, api):
    csrf = await sign_in(ui)
    created = await ui.post(
        "/ui/tokens",
        data={
            "csrf": csrf,
            "name": "monitor",
            "scope": "read",
            "domains": "",
            "expires_at": "2099-01-01T00:00",
        },
    )
    assert created.status_code == 201
    secret = re.search(r'id="secret-value"[^>]*value="(mp_[^"]+)"', created.text)
    assert secret
    listed = await ui.get("/ui/tokens")
    assert secret.group(1) not in listed.text and "monitor" in listed.text
    check = await api.get("/api/v1/domains", headers={"X-API-Key": secret.group(1)})
    assert check.status_code == 200
    tokens = (await api.get("/api/v1/admin/tokens")).json()["data"]
    assert tokens[0]["expires_at"] == "2099-01-01T00:00:00Z"


async def test_audit_revert_when_the_api_has_it(ui, api):
    csrf = await sign_in(ui)
    await ui.post("/ui/domains", data={"csrf": csrf, "name": "revert.example"})
    seq = (await api.get("/api/v1/events?type=domain.created")).json()["data"][0]["seq"]
    page = await ui.get("/ui/audit")
    if (await api.post(f"/api/v1/events/{10**9}/revert")).status_code == 404 and (
        'action="/ui/audit/' not in page.text
    ):
        assert "does not have yet" in page.text
        return
    assert f'action="/ui/audit/{seq}/revert"' in page.text
    answer = await ui.post(f"/ui/audit/{seq}/revert", data={"csrf": csrf})
    assert answer.status_code == 200, answer.text
    assert (await api.get("/api/v1/domains")).json()["data"] == []


async def test_static_files_and_security_headers(ui):
    css = await ui.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert (await ui.get("/ui/static/../../README.md")).status_code == 404
    page = await ui.get("/ui/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and " style=" not in page.text


async def test_backup_preview_and_restore_when_the_api_has_them(ui, api):
    csrf = await sign_in(ui)
    page = await ui.get("/ui/backup")
    if 'href="/ui/backup/download"' not in page.text:
        assert "no backup route" in page.text
        return
    await ui.post("/ui/domains", data={"csrf": csrf, "name": "kept.example"})
    backup = await ui.get("/ui/backup/download")
    assert backup.status_code == 200
    assert "attachment" in backup.headers["content-disposition"]
    await ui.post("/ui/domains", data={"csrf": csrf, "name": "later.example"})
    bad = await ui.post(
        "/ui/backup/preview",
        data={"csrf": csrf},
        files={"file": ("b.json", b'{"nope": 1}', "application/json")},
    )
    assert bad.status_code == 400 and 'id="rs-file-error"' in bad.text
    preview = await ui.post(
        "/ui/backup/preview",
        data={"csrf": csrf},
        files={"file": ("b.json", backup.content, "application/json")},
    )
    assert preview.status_code == 200, preview.text[-2000:]
    upload = re.search(r'name="upload" value="([0-9a-f]{32})"', preview.text)
    assert upload and "domains" in preview.text
    assert (await api.get("/api/v1/domains")).json()["meta"]["total"] == 2  # nothing yet
    done = await ui.post("/ui/backup/restore", data={"csrf": csrf, "upload": upload.group(1)})
    assert done.status_code == 200 and "Backup restored" in done.text
    names = [d["name"] for d in (await api.get("/api/v1/domains")).json()["data"]]
    assert names == ["kept.example"]


async def test_the_api_key_still_works_beside_the_ui(api):
    assert (await api.get("/api/v1/domains")).status_code == 200
    assert (await api.get("/api/v1/domains", headers={"X-API-Key": "wrong"})).status_code == 401
    assert API_KEY
