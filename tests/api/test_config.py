"""Seed sections 5-7 and 10: tiers, overrides, effective views with provenance, anti-spam."""

import asyncio
import random
import sqlite3

import msgspec

from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
    resolve_domain,
    resolve_mailbox,
)
from projections.db import dump
from tests.api.helpers import domain, mailbox

SEED_GLOBAL = {
    "message_size_limit": 26214400,
    "max_smtpd_connections": 100,
    "max_smtpd_rate_per_min": 600,
    "relay_networks": "127.0.0.0/8 [::1]/128",
    "tls_min_version": "TLSv1.2",
    "cipher_policy": "high",
    "spam_remote_host": "",
    "spam_remote_port": 783,
    "spam_remote_network": "",
    "dnsbl_enabled": False,
    "dnsbl_zones": "",
    "greylist_enabled": False,
    "greylist_delay_seconds": 300,
    "greylist_max_age_days": 35,
}
SEED_DOMAIN_DEFAULTS = {
    "quota_total_bytes": 10737418240,
    "max_mailboxes": 100,
    "max_aliases": 100,
    "message_size_limit": None,
    "dkim_enabled": True,
    "spf_policy": "~all",
    "dmarc_policy": "none",
    "spam_threshold": 5.0,
    "spam_action": "tag",
    "clamav_action": "quarantine",
    "greylisting_enabled": False,
    "require_tls_inbound": False,
}
SEED_MAILBOX_DEFAULTS = {
    "quota_bytes": 1073741824,
    "enabled_smtp": True,
    "enabled_imap": True,
    "enabled_pop3": False,
    "max_send_per_day": 1000,
    "max_recipients_per_message": 100,
    "message_size_limit": None,
    "spam_threshold": None,
    "spam_action": None,
    "auto_junk_threshold": 7.0,
    "vacation_enabled": False,
    "vacation_message": "",
    "forward_to": "",
    "forward_keep_copy": True,
    "require_tls_client": False,
}


def without_updated_at(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "updated_at"}


async def test_new_install_has_the_seed_defaults(client):
    assert without_updated_at((await client.get("/api/v1/config/global")).json()) == SEED_GLOBAL
    assert (
        without_updated_at((await client.get("/api/v1/config/domain-defaults")).json())
        == SEED_DOMAIN_DEFAULTS
    )
    assert (
        without_updated_at((await client.get("/api/v1/config/mailbox-defaults")).json())
        == SEED_MAILBOX_DEFAULTS
    )


async def test_put_replaces_the_row_and_answers_reconciling(client):
    body = {**SEED_GLOBAL, "message_size_limit": 1000}
    response = await client.put("/api/v1/config/global", json=body)
    assert response.json() == {"message": "global config saved; reconciling…"}
    got = (await client.get("/api/v1/config/global")).json()
    assert got["message_size_limit"] == 1000 and got["updated_at"].endswith("Z")


async def test_a_get_body_can_be_put_back(client):
    body = (await client.get("/api/v1/config/domain-defaults")).json()
    assert (await client.put("/api/v1/config/domain-defaults", json=body)).status_code == 200


async def test_invalid_enum_names_the_field(client):
    response = await client.put("/api/v1/config/domain-defaults", json={"spf_policy": "+all"})
    assert response.status_code == 400 and "spf_policy" in response.json()["detail"]


async def test_negative_size_names_the_field(client):
    response = await client.put("/api/v1/config/global", json={"message_size_limit": -1})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"
    assert "message_size_limit" in response.json()["error"]


async def test_bad_relay_network_names_the_field(client):
    response = await client.put("/api/v1/config/global", json={"relay_networks": "10.0.0.0/40"})
    assert response.status_code == 400 and "relay_networks" in response.json()["error"]


async def test_bad_forward_address_names_the_field(client):
    response = await client.put("/api/v1/config/mailbox-defaults", json={"forward_to": "nope"})
    assert response.status_code == 400 and "forward_to" in response.json()["error"]


async def test_domain_effective_matches_the_seed_example(client):
    domain_id = (
        await client.post(
            "/api/v1/domains", json={"name": "example.com", "outgoing_ip": "203.0.113.10"}
        )
    ).json()["id"]
    await client.put(
        f"/api/v1/domains/{domain_id}/overrides",
        json={
            "quota_total_bytes": 53687091200,
            "message_size_limit": 52428800,
            "dmarc_policy": "reject",
            "require_tls_inbound": True,
        },
    )
    assert (await client.get(f"/api/v1/domains/{domain_id}/effective")).json() == {
        "domain_id": domain_id,
        "domain_name": "example.com",
        "outgoing_ip": "203.0.113.10",
        "quota_total_bytes": 53687091200,
        "max_mailboxes": 100,
        "max_aliases": 100,
        "message_size_limit": 52428800,
        "dkim_enabled": True,
        "spf_policy": "~all",
        "dmarc_policy": "reject",
        "spam_threshold": 5.0,
        "spam_action": "tag",
        "clamav_action": "quarantine",
        "greylisting_enabled": False,
        "require_tls_inbound": True,
        "active": True,
    }


async def test_mailbox_effective_matches_the_seed_example(client):
    domain_id = await domain(client)
    await client.put(
        f"/api/v1/domains/{domain_id}/overrides",
        json={
            "message_size_limit": 52428800,
            "dmarc_policy": "reject",
            "require_tls_inbound": True,
        },
    )
    box = await mailbox(client, domain_id, quota=1073741824)
    await client.put(
        f"/api/v1/mailboxes/{box['id']}/overrides",
        json={
            "enabled_pop3": True,
            "max_send_per_day": 5000,
            "vacation_enabled": True,
            "vacation_message": "On leave until May 15",
        },
    )
    assert (await client.get(f"/api/v1/mailboxes/{box['id']}/effective")).json() == {
        "mailbox_id": box["id"],
        "mailbox_username": "alice",
        "domain_id": domain_id,
        "domain_name": "example.com",
        "quota_bytes": 1073741824,
        "enabled_smtp": True,
        "enabled_imap": True,
        "enabled_pop3": True,
        "max_send_per_day": 5000,
        "max_recipients_per_message": 100,
        "message_size_limit": 52428800,
        "spam_threshold": 5.0,
        "spam_action": "tag",
        "auto_junk_threshold": 7.0,
        "vacation_enabled": True,
        "vacation_message": "On leave until May 15",
        "forward_to": "",
        "forward_keep_copy": True,
        "require_tls_client": False,
        "clamav_action": "quarantine",
        "greylisting_enabled": False,
        "require_tls_inbound": True,
        "dkim_enabled": True,
        "spf_policy": "~all",
        "dmarc_policy": "reject",
        "mailbox_active": True,
        "domain_active": True,
    }


async def test_overrides_put_reverts_omitted_fields_to_inheritance(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"dmarc_policy": "reject"})
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"spf_policy": "-all"})
    overrides = (await client.get(f"/api/v1/domains/{domain_id}/overrides")).json()
    assert overrides["dmarc_policy"] is None and overrides["spf_policy"] == "-all"
    effective = (await client.get(f"/api/v1/domains/{domain_id}/effective")).json()
    assert effective["dmarc_policy"] == "none"


async def test_effective_follows_a_defaults_change(client):
    domain_id = await domain(client)
    await client.put("/api/v1/config/domain-defaults", json={"spam_threshold": 8.5})
    assert (await client.get(f"/api/v1/domains/{domain_id}/effective")).json()[
        "spam_threshold"
    ] == 8.5


async def test_effective_follows_deactivation(client):
    domain_id = await domain(client)
    box = await mailbox(client, domain_id)
    await client.patch(f"/api/v1/domains/{domain_id}", json={"active": False})
    assert (await client.get(f"/api/v1/mailboxes/{box['id']}/effective")).json()[
        "domain_active"
    ] is False


async def test_explain_names_tier_event_time_and_actor(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"dmarc_policy": "reject"})
    body = (await client.get(f"/api/v1/domains/{domain_id}/effective?explain=true")).json()
    dmarc = body["explain"]["dmarc_policy"]
    assert dmarc["tier"] == "domain_override" and dmarc["actor"] == "api-key"
    assert dmarc["seq"] > domain_id and dmarc["at"].endswith("Z")
    assert body["explain"]["spf_policy"] == {"tier": "default", "seq": 0, "at": None, "actor": None}
    assert body["explain"]["message_size_limit"]["tier"] == "default"


async def test_explain_follows_the_cascade_to_global(client):
    glob = {**SEED_GLOBAL, "message_size_limit": 5000}
    await client.put("/api/v1/config/global", json=glob)
    box = await mailbox(client, await domain(client))
    body = (await client.get(f"/api/v1/mailboxes/{box['id']}/effective?explain=true")).json()
    assert body["message_size_limit"] == 5000
    assert body["explain"]["message_size_limit"]["tier"] == "global"


async def test_own_quota_is_the_narrowest_tier(client):
    box = await mailbox(client, await domain(client), quota=5000)
    body = (await client.get(f"/api/v1/mailboxes/{box['id']}/effective?explain=true")).json()
    assert body["quota_bytes"] == 5000 and body["explain"]["quota_bytes"]["tier"] == "mailbox"


async def test_inherited_quota_follows_the_default(client):
    box = await mailbox(client, await domain(client))
    await client.put("/api/v1/config/mailbox-defaults", json={"quota_bytes": 2048})
    assert (await client.get(f"/api/v1/mailboxes/{box['id']}")).json()["quota"] == 2048


async def test_antispam_put_keeps_the_other_global_fields(client):
    await client.put("/api/v1/config/global", json={**SEED_GLOBAL, "message_size_limit": 777})
    response = await client.put(
        "/api/v1/config/antispam",
        json={
            "dnsbl_enabled": True,
            "dnsbl_zones": "zen.spamhaus.org bl.spamcop.net",
            "greylist_enabled": True,
            "greylist_delay_seconds": 60,
            "greylist_max_age_days": 10,
        },
    )
    assert response.json() == {"message": "anti-spam config saved; reconciling…"}
    glob = (await client.get("/api/v1/config/global")).json()
    assert glob["message_size_limit"] == 777 and glob["dnsbl_enabled"] is True
    assert (await client.get("/api/v1/config/antispam")).json()["greylist_delay_seconds"] == 60


async def test_antispam_negative_delay_is_refused(client):
    response = await client.put(
        "/api/v1/config/antispam",
        json={
            "dnsbl_enabled": False,
            "dnsbl_zones": "",
            "greylist_enabled": True,
            "greylist_delay_seconds": -1,
            "greylist_max_age_days": 10,
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "greylist delay and max-age must be non-negative"


async def test_whitelist_entries_are_added_listed_and_removed(client):
    added = await client.post(
        "/api/v1/antispam/whitelist",
        json={"entry_type": "domain", "value": "Trusted-Partner.com", "note": "newsletter"},
    )
    assert added.status_code == 200
    entry = added.json()
    assert (entry["entry_type"], entry["value"], entry["note"]) == (
        "domain",
        "trusted-partner.com",
        "newsletter",
    )
    listed = (await client.get("/api/v1/antispam/whitelist")).json()
    assert listed["data"] == [entry] and listed["meta"]["total"] == 1
    removed = await client.delete(f"/api/v1/antispam/whitelist/{entry['id']}")
    assert removed.json()["message"].startswith("whitelist entry deleted")
    assert (await client.get("/api/v1/antispam/whitelist")).json()["meta"]["total"] == 0


async def test_whitelist_values_are_checked_for_their_type(client):
    for entry_type, value in (
        ("ip", "1.2.3"),
        ("cidr", "10.0.0.0/99"),
        ("domain", "x"),
        ("email", "nobody"),
        ("host", "a.example"),
    ):
        response = await client.post(
            "/api/v1/antispam/whitelist", json={"entry_type": entry_type, "value": value}
        )
        assert response.status_code == 400, (entry_type, value)


async def test_duplicate_whitelist_entry_conflicts(client):
    body = {"entry_type": "cidr", "value": "203.0.113.0/24"}
    await client.post("/api/v1/antispam/whitelist", json=body)
    assert (await client.post("/api/v1/antispam/whitelist", json=body)).status_code == 409


async def test_mailbox_cap_holds_under_20_concurrent_creates(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"max_mailboxes": 5})
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/mailboxes",
                json={
                    "domain_id": domain_id,
                    "username": f"u{i}",
                    "password": "S3cret-pass",
                    "quota": 1,
                },
            )
            for i in range(20)
        )
    )
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 5
    assert all(r.json()["code"] == "LIMIT_EXCEEDED" for r in responses if r.status_code != 201)
    assert (await client.get(f"/api/v1/mailboxes?domain_id={domain_id}")).json()["meta"][
        "total"
    ] == 5


async def test_alias_cap_holds_under_20_concurrent_creates(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"max_aliases": 3})
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/aliases",
                json={"source": f"a{i}@example.com", "destination": "x@example.org"},
            )
            for i in range(20)
        )
    )
    assert [r.status_code for r in responses].count(201) == 3
    assert (await client.get("/api/v1/aliases")).json()["meta"]["total"] == 3


async def test_total_quota_is_enforced(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"quota_total_bytes": 1000})
    await mailbox(client, domain_id, "a", quota=600)
    response = await client.post(
        "/api/v1/mailboxes",
        json={"domain_id": domain_id, "username": "b", "password": "S3cret-pass", "quota": 600},
    )
    assert response.status_code == 409 and response.json()["code"] == "LIMIT_EXCEEDED"


async def test_quota_raise_over_the_total_is_refused(client):
    domain_id = await domain(client)
    await client.put(f"/api/v1/domains/{domain_id}/overrides", json={"quota_total_bytes": 1000})
    box = await mailbox(client, domain_id, "a", quota=600)
    response = await client.patch(f"/api/v1/mailboxes/{box['id']}", json={"quota": 2000})
    assert response.status_code == 409


def _from_scratch(tiers: dict, domain_overrides: dict, mailbox_rows: list) -> dict:
    glob = msgspec.convert(without_updated_at(tiers["global"]), GlobalConfig)
    dd = msgspec.convert(without_updated_at(tiers["domain-defaults"]), DomainDefaults)
    md = msgspec.convert(without_updated_at(tiers["mailbox-defaults"]), MailboxDefaults)
    out = {}
    for domain_id, overrides in domain_overrides.items():
        out[("d", domain_id)] = resolve_domain(
            (glob, 0), (dd, 0), (msgspec.convert(overrides, DomainOverrides), 0)
        )[0]
    for box_id, domain_id, own, overrides in mailbox_rows:
        out[("m", box_id)] = resolve_mailbox(
            resolve_domain(
                (glob, 0),
                (dd, 0),
                (msgspec.convert(domain_overrides[domain_id], DomainOverrides), 0),
            ),
            (md, 0),
            (msgspec.convert(overrides, MailboxOverrides), 0),
            (own, 0),
        )[0]
    return out


async def test_materialised_view_equals_a_fresh_resolution_and_a_rebuild(
    client, settings, nats_server
):
    rng = random.Random(7)
    domains = [await domain(client, f"d{i}.example") for i in range(3)]
    boxes = []
    for i in range(6):
        quota = rng.choice([None, 0, 1000, 5000])
        extra = {} if quota is None else {"quota": quota}
        boxes.append((await mailbox(client, rng.choice(domains), f"m{i}", **extra))["id"])
    for _ in range(25):
        choice = rng.randrange(4)
        if choice == 0:
            await client.put(
                f"/api/v1/domains/{rng.choice(domains)}/overrides",
                json={
                    "spam_threshold": rng.choice([None, 1.5, 9.0]),
                    "message_size_limit": rng.choice([None, 100, 200]),
                },
            )
        elif choice == 1:
            await client.put(
                f"/api/v1/mailboxes/{rng.choice(boxes)}/overrides",
                json={
                    "spam_action": rng.choice([None, "reject"]),
                    "message_size_limit": rng.choice([None, 50]),
                },
            )
        elif choice == 2:
            await client.put(
                "/api/v1/config/domain-defaults",
                json={"message_size_limit": rng.choice([None, 300]), "spam_threshold": 4.0},
            )
        else:
            await client.put(
                "/api/v1/config/mailbox-defaults",
                json={
                    "quota_bytes": rng.choice([10, 20]),
                    "spam_threshold": rng.choice([None, 2.0]),
                },
            )
    tiers = {
        t: (await client.get(f"/api/v1/config/{t}")).json()
        for t in ("global", "domain-defaults", "mailbox-defaults")
    }
    overrides = {d: (await client.get(f"/api/v1/domains/{d}/overrides")).json() for d in domains}
    rows = []
    for b in boxes:
        own = (
            sqlite3.connect(settings.read_db)
            .execute("SELECT domain_id, quota FROM mailboxes WHERE id = ?", (b,))
            .fetchone()
        )
        rows.append(
            (b, own[0], own[1], (await client.get(f"/api/v1/mailboxes/{b}/overrides")).json())
        )
    expected = _from_scratch(tiers, overrides, rows)
    for d in domains:
        got = (await client.get(f"/api/v1/domains/{d}/effective")).json()
        assert {k: got[k] for k in expected[("d", d)]} == expected[("d", d)]
    for b in boxes:
        got = (await client.get(f"/api/v1/mailboxes/{b}/effective")).json()
        assert {k: got[k] for k in expected[("m", b)]} == expected[("m", b)]

    from commands.log import EventLog
    from projections.rebuild import rebuild

    log = await EventLog.connect(nats_server.url)
    try:
        fresh = settings.data_dir / "rebuilt.db"
        await rebuild(fresh, log)
    finally:
        await log.close()
    assert dump(sqlite3.connect(fresh)) == dump(sqlite3.connect(settings.read_db))
