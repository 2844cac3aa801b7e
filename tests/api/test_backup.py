"""Snapshot backup and restore through the API (real NATS, real SQLite): a backup restored into
a fresh install answers every GET the same, with the same ids; the restored rows stay
writable; an invalid document changes nothing."""

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.api.recovery import (
    PASSWORDS,
    applied,
    events,
    everything,
    fresh_install,
    ok,
    populate,
)


async def _backup(client) -> dict[str, Any]:
    response = await client.get("/api/v1/backup")
    assert response.status_code == 200, response.text
    return response.json()


async def _token(client, scope: str, domains: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": f"t-{scope}-{bool(domains)}", "scope": scope}
    if domains:
        body["domains"] = domains
    return (await ok(await client.post("/api/v1/admin/tokens", json=body), 201))["token"]


# ---- GET /api/v1/backup -------------------------------------------------------------------


async def test_backup_is_a_json_attachment_named_after_the_utc_time(client):
    # When a backup is downloaded
    response = await client.get("/api/v1/backup")
    # Then it is a JSON attachment named mailpanel-backup-YYYYMMDD-HHMMSS.json
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="mailpanel-backup-\d{8}-\d{6}\.json"', disposition)
    assert response.json()["schema_version"] == 1


async def test_backup_holds_every_table_with_ids_and_the_checkpoint(client):
    # Given a state touching every table a backup covers
    ids = await populate(client)
    # When a backup is taken
    doc = await _backup(client)
    # Then it names the checkpoint it reflects and holds each resource with its id
    assert doc["log_sequence"] == applied(client)
    assert [d["id"] for d in doc["domains"]] == [ids["example"], ids["other"]]
    assert {m["id"] for m in doc["mailboxes"]} == {ids["alice"], ids["bob"], ids["carol"]}
    assert {a["source"] for a in doc["aliases"]} == {"info@example.com", "@other.org"}
    assert doc["config"]["global"]["message_size_limit"] == 12345678
    assert set(doc["config"]["updated_at"]) == {"global", "mailbox_defaults"}
    assert doc["domain_overrides"][0]["overrides"]["dmarc_policy"] == "reject"
    assert doc["mailbox_overrides"][0]["mailbox_id"] == ids["alice"]
    assert [w["value"] for w in doc["whitelist"]] == ["192.0.2.99", "trusted.example"]
    assert doc["dkim_keys"][0]["domain"] == "example.com" and doc["tls_certs"][0]["id"]


async def test_backup_has_hashes_and_sealed_keys_never_a_secret_in_clear(client):
    # Given mailboxes with known passwords, a DKIM key and an uploaded certificate's key
    await populate(client)
    # When a backup is taken
    text = (await client.get("/api/v1/backup")).text
    # Then no password and no PEM private key is in it: only hashes and sealed tokens
    for password in PASSWORDS:
        assert password not in text
    assert "PRIVATE KEY" not in text
    doc = json.loads(text)
    assert all(m["password_hash"].startswith("{ARGON2ID}") for m in doc["mailboxes"])
    assert doc["dkim_keys"][0]["private_key_sealed"] and doc["tls_certs"][0]["key_sealed"]


@pytest.mark.parametrize("scope,domains", [("write", None), ("admin", ["example.com"])])
async def test_backup_and_restore_need_an_unrestricted_admin(client, scope, domains):
    # Given a write-scope token, and an admin token limited to one domain
    await ok(await client.post("/api/v1/domains", json={"name": "example.com"}), 201)
    secret = await _token(client, scope, domains)
    doc = await _backup(client)
    headers = {"X-API-Key": secret}
    # When either asks for a backup or a restore
    download = await client.get("/api/v1/backup", headers=headers)
    restore = await client.post("/api/v1/backup/restore", json=doc, headers=headers)
    # Then both are refused with 403
    assert download.status_code == 403 and download.json()["code"] == "FORBIDDEN"
    assert restore.status_code == 403 and restore.json()["code"] == "FORBIDDEN"


# ---- restore into a fresh install ---------------------------------------------------------


async def test_restore_into_a_fresh_install_answers_every_get_the_same(client, tmp_path: Path):
    # Given a populated install and its backup
    await populate(client)
    doc = await _backup(client)
    original = await everything(client)
    async with fresh_install(tmp_path) as other:
        # When the backup is restored into a fresh install
        response = await other.post("/api/v1/backup/restore", json=doc)
        # Then it answers with the counts, and every list and single GET is the same, ids too
        assert response.status_code == 200, response.text
        assert response.json() == {
            "message": "backup restored",
            "domains": 2,
            "mailboxes": 3,
            "aliases": 2,
        }
        assert await everything(other) == original


async def test_restore_as_multipart_with_a_file_field(client, tmp_path: Path):
    # Given a backup file
    await populate(client)
    raw = (await client.get("/api/v1/backup")).content
    async with fresh_install(tmp_path) as other:
        # When it is uploaded as the `file` field of a form
        files = {"file": ("mailpanel-backup.json", raw, "application/json")}
        response = await other.post("/api/v1/backup/restore", files=files)
        # Then it is restored like a JSON body
        assert response.status_code == 200, response.text
        assert response.json()["mailboxes"] == 3


async def test_after_a_restore_a_new_domain_gets_a_fresh_id(client, tmp_path: Path):
    # Given a backup whose ids run past anything a fresh stream has
    ids = await populate(client)
    doc = await _backup(client)
    biggest = max(r["id"] for t in ("domains", "mailboxes", "aliases") for r in doc[t])
    async with fresh_install(tmp_path) as other:
        await ok(await other.post("/api/v1/backup/restore", json=doc))
        # When a domain is created there
        created = await ok(await other.post("/api/v1/domains", json={"name": "new.example"}), 201)
        # Then its id is new: above every restored id, and the restored rows are untouched
        assert created["id"] > biggest
        assert (await ok(await other.get(f"/api/v1/domains/{ids['example']}")))["name"] == (
            "example.com"
        )
        # and the stream was padded with fillers up to the largest restored id
        fillers = await events(other, type="system.sequence_reserved")
        assert fillers and max(f["seq"] for f in fillers) >= biggest


async def test_restored_rows_can_be_updated_and_deleted(client, tmp_path: Path):
    # Given a backup restored into a fresh install (whose log never wrote those subjects)
    ids = await populate(client)
    doc = await _backup(client)
    async with fresh_install(tmp_path) as other:
        await ok(await other.post("/api/v1/backup/restore", json=doc))
        domain_url = f"/api/v1/domains/{ids['example']}"
        mailbox_url = f"/api/v1/mailboxes/{ids['alice']}"
        # When restored rows are changed, twice, and one is deleted
        first = await other.patch(domain_url, json={"active": False})
        second = await other.patch(domain_url, json={"active": True})
        box = await other.patch(mailbox_url, json={"quota": 7_000_000})
        password = await other.patch(f"{mailbox_url}/password", json={"password": "An0ther-pw"})
        overrides = await other.put(f"{domain_url}/overrides", json={"spf_policy": "-all"})
        alias = await other.delete(f"/api/v1/aliases/{ids['info']}")
        # Then every write succeeds (the expected subject sequences are the real ones)
        for response in (first, second, box, password, overrides, alias):
            assert response.status_code == 200, response.text
        assert (await ok(await other.get(mailbox_url)))["quota"] == 7_000_000


async def test_restore_in_place_brings_back_the_backed_up_state(client):
    # Given a backup, then changes: a domain deleted, another created, a tier changed
    ids = await populate(client)
    doc = await _backup(client)
    original = await everything(client)
    await ok(await client.delete(f"/api/v1/domains/{ids['example']}"))
    await ok(await client.post("/api/v1/domains", json={"name": "later.example"}), 201)
    await ok(await client.put("/api/v1/config/global", json={"message_size_limit": 1}))
    # When the backup is restored into the same install
    await ok(await client.post("/api/v1/backup/restore", json=doc))
    # Then the state is the backup's again, and its rows take writes
    assert await everything(client) == original
    patched = await client.patch(f"/api/v1/domains/{ids['example']}", json={"active": False})
    assert patched.status_code == 200, patched.text
    recreated = await client.post("/api/v1/domains", json={"name": "later.example"})
    assert recreated.status_code == 201, recreated.text


async def test_the_restore_is_one_event_recording_the_previous_checkpoint(client, tmp_path):
    # Given a populated install's backup
    await populate(client)
    doc = await _backup(client)
    async with fresh_install(tmp_path) as other:
        await ok(await other.post("/api/v1/domains", json={"name": "before.example"}), 201)
        before = applied(other)
        # When it is restored
        await ok(await other.post("/api/v1/backup/restore", json=doc))
        # Then one system.restored event carries it, on <prefix>.system.restore
        restored = await events(other, type="system.restored")
        assert len(restored) == 1 and restored[0]["resource"] == "system:restore"
        envelope = other.app.state.runtime.reader
        rows = await envelope.execute_fetchall(
            "SELECT subject, data FROM events WHERE seq = ?", (restored[0]["seq"],)
        )
        subject, data = next(iter(rows))
        event = json.loads(data)["event"]
        assert subject == "mp.system.restore"
        assert event["previous_seq"] >= before and event["counts"]["domains"] == 2
        assert event["backup_log_sequence"] == doc["log_sequence"]


# ---- refused documents --------------------------------------------------------------------


def _break(doc: dict[str, Any], how: str) -> Any:
    bad = copy.deepcopy(doc)
    match how:
        case "wrong type":
            bad["domains"][0]["id"] = "one"
        case "missing field":
            del bad["mailboxes"]
        case "missing row field":
            del bad["aliases"][0]["destination"]
        case "duplicate id":
            bad["aliases"][0]["id"] = bad["domains"][0]["id"]
        case "duplicate name":
            bad["domains"][1]["name"] = bad["domains"][0]["name"]
        case "alias domain not in the document":
            bad["aliases"][0]["domain_id"] = 999_999
        case "mailbox address not its domain's":
            bad["mailboxes"][0]["address"] = "alice@elsewhere.example"
        case "bad domain name":
            bad["domains"][0]["name"] = "not a domain"
        case "plain password":
            bad["mailboxes"][0]["password_hash"] = "S3cret-pass"
        case "clear private key":
            bad["dkim_keys"][0]["private_key_sealed"] = "-----BEGIN PRIVATE KEY-----"
        case "unknown top-level field":
            bad["tokens"] = []
        case "negative quota":
            bad["mailboxes"][0]["quota"] = -1
        case "not an object":
            bad = [bad]
    return bad


@pytest.mark.parametrize(
    "how",
    [
        "wrong type",
        "missing field",
        "missing row field",
        "duplicate id",
        "duplicate name",
        "alias domain not in the document",
        "mailbox address not its domain's",
        "bad domain name",
        "plain password",
        "clear private key",
        "unknown top-level field",
        "negative quota",
        "not an object",
    ],
)
async def test_an_invalid_document_is_a_400_and_changes_nothing(client, how):
    # Given a state and a backup of it made invalid in one way
    await populate(client)
    doc = await _backup(client)
    await ok(await client.post("/api/v1/domains", json={"name": "after.example"}), 201)
    state, seq = await everything(client), applied(client)
    # When it is restored
    response = await client.post("/api/v1/backup/restore", json=_break(doc, how))
    # Then 400 VALIDATION_FAILED, and nothing changed (no event either)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "VALIDATION_FAILED"
    assert await everything(client) == state and applied(client) == seq


async def test_ids_too_far_ahead_of_this_log_are_a_400_and_change_nothing(client):
    # Given a backup with an id a billion sequences past this log's end
    await populate(client)
    doc = await _backup(client)
    doc["whitelist"][0]["id"] = 10**12
    seq = applied(client)
    # When it is restored
    response = await client.post("/api/v1/backup/restore", json=doc)
    # Then 400, and not a single filler event was appended
    assert response.status_code == 400 and "filler" in response.json()["detail"]
    assert applied(client) == seq


async def test_a_body_that_is_not_json_is_a_400(client):
    response = await client.post(
        "/api/v1/backup/restore",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["code"] == "VALIDATION_FAILED"


async def test_an_unknown_schema_version_is_a_500_and_changes_nothing(client):
    # Given a backup from a newer format
    await populate(client)
    doc = await _backup(client)
    doc["schema_version"] = 2
    state, seq = await everything(client), applied(client)
    # When it is restored
    response = await client.post("/api/v1/backup/restore", json=doc)
    # Then 500 INTERNAL_ERROR saying which version it cannot read; nothing changed
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "INTERNAL_ERROR" and "schema_version 2" in body["error"]
    assert await everything(client) == state and applied(client) == seq
