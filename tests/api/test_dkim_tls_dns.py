"""DKIM keys, TLS certificates and the DNS sheet through the API (real NATS, real SQLite).

Private keys must never come back in an answer nor sit in the log in clear."""

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from commands.keys import self_signed, unseal
from core.settings import Settings
from tests.api.helpers import domain
from tests.dnsserver import LoopbackDNS

NOW = datetime.now(UTC)


async def _log_bytes(settings: Settings) -> bytes:
    """Every stored message of the stream, as raw bytes."""
    from commands.log import EventLog

    log = await EventLog.connect(settings.nats_url)
    try:
        sub = await log.js.subscribe("mp.>", ordered_consumer=True)
        out = b""
        last = await log.last_seq()
        seen = 0
        while seen < last:
            msg = await sub.next_msg(timeout=5)
            out += msg.data
            seen = msg.metadata.sequence.stream
        await sub.unsubscribe()
        return out
    finally:
        await log.close()


# ---- DKIM --------------------------------------------------------------------------------


async def test_generate_answers_the_seed_shape_with_a_default_selector(client):
    # Given a managed domain
    await domain(client, "example.com")
    # When a key is generated without a selector
    r = await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    # Then 201 with the seed's fields; the TXT text is zone style and carries the public key
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["domain"] == "example.com" and body["selector"] == "default"
    assert body["public_key"].startswith('default._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; "')
    assert body["private_key_path"].endswith("/etc/opendkim/keys/example.com/default.private")
    assert body["status"] == "active" and body["txt_value"].startswith(
        "v=DKIM1; h=sha256; k=rsa; p="
    )
    assert "PRIVATE KEY" not in r.text


async def test_the_private_key_is_sealed_in_the_log_and_opens_with_the_data_key(
    client, settings: Settings
):
    # Given a generated key
    r = await client.post("/api/v1/dkim/generate", json={"domain": "example.com", "selector": "s1"})
    assert r.status_code == 201, r.text
    # When the whole log is read
    raw = await _log_bytes(settings)
    # Then no PEM is in it, and the sealed token opens with the configured key to a key
    # whose public half is the published one
    assert b"PRIVATE KEY" not in raw
    import msgspec

    events = [
        e
        for e in (msgspec.json.decode(line) for line in _split_json(raw))
        if e["event"]["type"] == "dkim.key_generated"
    ]
    token = events[0]["event"]["private_key_sealed"]
    pem = unseal(token, {settings.data_key_id: settings.data_key}, b"dkim:example.com")
    key = serialization.load_pem_private_key(pem, None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(public).decode() == events[0]["event"]["public_key"]
    body = pem.decode().split("-----")[2].replace("\n", "")
    assert body[:60].encode() not in raw and body[-60:].encode() not in raw


def _split_json(raw: bytes) -> list[bytes]:
    """Concatenated JSON objects -> each one (the stream holds one envelope per message)."""
    import json

    out, decoder, text, i = [], json.JSONDecoder(), raw.decode(), 0
    while i < len(text):
        _, end = decoder.raw_decode(text, i)
        out.append(text[i:end].encode())
        i = end
    return out


async def test_generate_overwrites_an_existing_pair(client):
    first = (await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})).json()
    second = (await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})).json()
    assert first["txt_value"] != second["txt_value"]
    listed = (await client.get("/api/v1/dkim/list")).json()
    assert listed["meta"]["total"] == 1
    assert listed["data"][0]["dns_record"] == second["public_key"]


@pytest.mark.parametrize(
    "body",
    [
        {"domain": "not a domain"},
        {"domain": "example.com", "selector": "bad selector"},
        {"domain": "example.com", "selector": "-x"},
        {"domain": "example.com", "algorithm": "dsa"},
    ],
)
async def test_invalid_domain_selector_or_algorithm_is_a_400(client, body):
    r = await client.post("/api/v1/dkim/generate", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "detail", "code"}


async def test_get_one_key_and_404_when_absent(client):
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    r = await client.get("/api/v1/dkim", params={"domain": "example.com"})
    assert r.status_code == 200 and r.json()["selector"] == "default"
    missing = await client.get("/api/v1/dkim", params={"domain": "example.com", "selector": "x"})
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


async def test_ed25519_keys_publish_k_ed25519(client):
    r = await client.post(
        "/api/v1/dkim/generate",
        json={"domain": "example.com", "selector": "ed", "algorithm": "ed25519"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["txt_value"].startswith("v=DKIM1; k=ed25519; p=")


async def test_delete_removes_the_pair(client):
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    r = await client.delete("/api/v1/dkim", params={"domain": "example.com", "selector": "default"})
    assert r.status_code == 200, r.text
    assert (await client.get("/api/v1/dkim", params={"domain": "example.com"})).status_code == 404


async def test_rotation_pending_then_active_then_the_old_one_retired(client):
    # Given a domain signing with "default"
    domain_id = await domain(client, "example.com")
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    # When rotated
    rotated = await client.post("/api/v1/dkim/rotate", json={"domain": "example.com"})
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["selector"]
    assert rotated.json()["status"] == "pending" and new.startswith("s")
    # Then the DNS sheet lists both records; signing has not moved yet
    names = {
        r["name"] for r in (await client.get(f"/api/v1/domains/{domain_id}/dns")).json()["records"]
    }
    assert {"default._domainkey.example.com", f"{new}._domainkey.example.com"} <= names
    statuses = {
        k["selector"]: k["status"] for k in (await client.get("/api/v1/dkim/list")).json()["data"]
    }
    assert statuses == {"default": "active", new: "pending"}
    # When activated, the old signer becomes "previous" (still published)
    r = await client.post("/api/v1/dkim/activate", json={"domain": "example.com", "selector": new})
    assert r.status_code == 200 and r.json()["status"] == "active"
    statuses = {
        k["selector"]: k["status"] for k in (await client.get("/api/v1/dkim/list")).json()["data"]
    }
    assert statuses == {"default": "previous", new: "active"}
    # And once retired it leaves the sheet
    r = await client.post(
        "/api/v1/dkim/retire", json={"domain": "example.com", "selector": "default"}
    )
    assert r.status_code == 200 and r.json()["status"] == "retired"
    names = {
        r["name"] for r in (await client.get(f"/api/v1/domains/{domain_id}/dns")).json()["records"]
    }
    assert "default._domainkey.example.com" not in names


async def test_the_signing_key_cannot_be_retired(client):
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    r = await client.post(
        "/api/v1/dkim/retire", json={"domain": "example.com", "selector": "default"}
    )
    assert r.status_code == 409 and r.json()["code"] == "CONFLICT"


async def test_rotation_without_a_key_is_a_conflict(client):
    r = await client.post("/api/v1/dkim/rotate", json={"domain": "example.com"})
    assert r.status_code == 409, r.text


# ---- TLS ---------------------------------------------------------------------------------


def _upload(client, hostname: str, cert: str, key: str):
    return client.post(
        "/api/v1/tls/upload",
        files={"hostname": (None, hostname), "cert_pem": (None, cert), "key_pem": (None, key)},
    )


async def test_upload_registers_a_certificate_with_its_expiry(client, settings: Settings):
    # Given a valid certificate and key for mail.example.com
    cert, key = self_signed("mail.example.com", NOW, days=90)
    # When uploaded as multipart
    r = await _upload(client, "mail.example.com", cert, key)
    # Then 200 with the expiry, and the list shows it as uploaded; no key in any answer
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "certificate uploaded and applied"
    expires = datetime.fromisoformat(r.json()["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=89) < expires - NOW < timedelta(days=91)
    listed = (await client.get("/api/v1/tls/certs")).json()
    assert [c["hostname"] for c in listed["data"]] == ["mail.example.com"]
    item = listed["data"][0]
    assert item["issuer"] == "uploaded" and item["expires_at"] == r.json()["expires_at"]
    assert item["cert_path"].endswith("tls/mail.example.com/fullchain.pem")
    assert "PRIVATE" not in (await client.get("/api/v1/tls/certs")).text
    body = key.split("-----")[2].replace("\n", "")[:40].encode()
    assert body not in await _log_bytes(settings)


async def test_re_upload_for_the_same_hostname_replaces_the_record_and_keeps_its_id(client):
    cert, key = self_signed("mail.example.com", NOW)
    await _upload(client, "mail.example.com", cert, key)
    first = (await client.get("/api/v1/tls/certs")).json()["data"][0]
    cert2, key2 = self_signed("mail.example.com", NOW, days=30)
    assert (await _upload(client, "mail.example.com", cert2, key2)).status_code == 200
    listed = (await client.get("/api/v1/tls/certs")).json()["data"]
    assert len(listed) == 1 and listed[0]["id"] == first["id"]
    assert listed[0]["expires_at"] != first["expires_at"]


@pytest.mark.parametrize(
    "case",
    ["garbage", "mismatched key", "uncovered hostname", "expired", "missing field"],
)
async def test_a_bad_upload_is_a_400_and_registers_nothing(client, case):
    cert, key = self_signed("mail.example.com", NOW)
    hostname = "mail.example.com"
    if case == "garbage":
        cert = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    elif case == "mismatched key":
        key = self_signed("mail.example.com", NOW)[1]
    elif case == "uncovered hostname":
        hostname = "other.example.com"
    elif case == "expired":
        cert, key = self_signed("mail.example.com", NOW - timedelta(days=400), days=30)
    if case == "missing field":
        r = await client.post("/api/v1/tls/upload", files={"hostname": (None, hostname)})
    else:
        r = await _upload(client, hostname, cert, key)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "detail", "code"}
    assert (await client.get("/api/v1/tls/certs")).json()["meta"]["total"] == 0


async def test_delete_removes_the_record(client):
    cert, key = self_signed("mail.example.com", NOW)
    await _upload(client, "mail.example.com", cert, key)
    cert_id = (await client.get("/api/v1/tls/certs")).json()["data"][0]["id"]
    r = await client.delete(f"/api/v1/tls/certs/{cert_id}")
    assert r.status_code == 200 and r.json() == {"message": "certificate record removed"}
    assert (await client.delete(f"/api/v1/tls/certs/{cert_id}")).status_code == 404


async def test_issue_without_certbot_says_it_is_not_installed(client, settings: Settings):
    # The test settings point MAILPANEL_CERTBOT nowhere unless a test sets it.
    if settings.certbot != "certbot":
        pytest.skip("a certbot is configured")
    import shutil

    if shutil.which("certbot"):
        pytest.skip("certbot is installed here")
    r = await client.post(
        "/api/v1/tls/issue", json={"domain": "mail.example.com", "email": "ops@example.com"}
    )
    assert r.status_code == 503 and "certbot" in r.json()["error"]


# ---- DNS ---------------------------------------------------------------------------------


async def test_the_dns_sheet_lists_mx_spf_dkim_dmarc_and_a_zone_fragment(client):
    domain_id = await domain(client, "example.com")
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    sheet = (await client.get(f"/api/v1/domains/{domain_id}/dns")).json()
    by_name = {(r["type"], r["name"]): r for r in sheet["records"]}
    assert ("MX", "example.com") in by_name
    spf = next(r for r in sheet["records"] if r["value"].startswith("v=spf1"))
    assert "ip4:192.0.2.10" in spf["value"] and spf["value"].endswith("~all")
    assert ("TXT", "default._domainkey.example.com") in by_name
    assert by_name[("TXT", "_dmarc.example.com")]["value"].startswith("v=DMARC1; p=none")
    zone = await client.get(f"/api/v1/domains/{domain_id}/dns", params={"format": "zone"})
    assert zone.status_code == 200 and "example.com. 3600 IN MX 10" in zone.text


async def test_dns_verify_reports_ok_missing_and_different(client, tmp_path: Path):
    # Given a domain and a DNS server that serves its sheet except DMARC, with a wrong SPF
    domain_id = await domain(client, "example.com")
    await client.post("/api/v1/dkim/generate", json={"domain": "example.com"})
    zone = (await client.get(f"/api/v1/domains/{domain_id}/dns", params={"format": "zone"})).text
    lines = [
        ln
        for ln in zone.splitlines()
        if "_dmarc" not in ln and not (ln.startswith("example.com.") and "v=spf1" in ln)
    ]
    lines.append('example.com. 3600 IN TXT "v=spf1 -all"')
    app = client.app
    with LoopbackDNS("\n".join(lines), origin="example.com.") as server:
        rt = app.state.runtime
        import msgspec

        rt.settings = msgspec.structs.replace(rt.settings, dns_resolver=f"127.0.0.1:{server.port}")
        r = await client.post(f"/api/v1/domains/{domain_id}/dns/verify")
    # Then MX and DKIM are ok, DMARC missing, SPF different
    assert r.status_code == 200, r.text
    status = {(c["type"], c["name"]): c["status"] for c in r.json()["checks"]}
    assert status[("MX", "example.com")] == "ok"
    assert status[("TXT", "default._domainkey.example.com")] == "ok"
    assert status[("TXT", "_dmarc.example.com")] == "missing"
    spf = next(c for c in r.json()["checks"] if c["expected"].startswith("v=spf1"))
    assert spf["status"] == "different" and spf["found"] == ["v=spf1 -all"]
    assert r.json()["ok"] is False


def _certbot_stub(tmp_path: Path, script: str) -> str:
    """A stand-in for the certbot CLI (no ACME server is reachable offline): the API's
    handling of its exit status, output and files is what is under test."""
    path = tmp_path / "certbot"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def _use(client, **changes) -> None:
    import msgspec

    rt = client.app.state.runtime
    rt.settings = msgspec.structs.replace(rt.settings, **changes)


async def test_a_failing_certbot_gives_500_with_its_output_and_exit_status(client, tmp_path):
    stub = _certbot_stub(
        tmp_path, 'echo "Problem binding to port 80: Could not bind to IPv4" >&2\nexit 1\n'
    )
    _use(client, certbot=stub)
    r = await client.post(
        "/api/v1/tls/issue", json={"domain": "mail.example.com", "email": "ops@example.com"}
    )
    assert r.status_code == 500
    body = r.json()
    assert "Problem binding to port 80" in body["error"]
    assert body["detail"] == "certbot exited with status 1" and body["code"] == "INTERNAL_ERROR"
    assert (await client.get("/api/v1/tls/certs")).json()["meta"]["total"] == 0


async def test_an_issued_certificate_is_registered_as_letsencrypt(client, tmp_path):
    # Given a certbot that leaves a certificate where certbot keeps them
    live = tmp_path / "le" / "live" / "mail.example.com"
    live.mkdir(parents=True)
    cert, key = self_signed("mail.example.com", NOW, days=90)
    (tmp_path / "fullchain.pem").write_text(cert)
    (tmp_path / "privkey.pem").write_text(key)
    stub = _certbot_stub(
        tmp_path, f'cp {tmp_path}/fullchain.pem {tmp_path}/privkey.pem "{live}/"\nexit 0\n'
    )
    _use(client, certbot=stub, letsencrypt_dir=str(tmp_path / "le"))
    # When issued
    r = await client.post(
        "/api/v1/tls/issue", json={"domain": "mail.example.com", "email": "ops@example.com"}
    )
    # Then the record points at certbot's files, with the certificate's expiry
    assert r.status_code == 200 and r.json() == {"message": "certificate issued"}
    item = (await client.get("/api/v1/tls/certs")).json()["data"][0]
    assert item["issuer"] == "letsencrypt"
    assert item["cert_path"] == str(live / "fullchain.pem")
    assert item["key_path"] == str(live / "privkey.pem")
    # And renew re-registers from the same files
    r = await client.post("/api/v1/tls/renew")
    assert r.status_code == 200 and r.json() == {"message": "certificates renewed"}


async def test_issue_refuses_a_bad_domain_or_email(client):
    r = await client.post("/api/v1/tls/issue", json={"domain": "not a host", "email": "a@b.c"})
    assert r.status_code == 400
    r = await client.post("/api/v1/tls/issue", json={"domain": "mail.example.com", "email": "-x"})
    assert r.status_code == 400
