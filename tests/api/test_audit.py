"""The audit trail through the API: who changed what, before and after, secrets redacted."""

import msgspec

from core.audit import fold
from core.events import DomainCreated, DomainUpdated, MailboxCreated, MailboxPasswordChanged
from tests.api.helpers import domain, mailbox


async def test_each_event_names_its_actor_resource_and_changed_fields(client):
    # Given a domain created and then deactivated
    domain_id = await domain(client, "example.com")
    r = await client.patch(f"/api/v1/domains/{domain_id}", json={"active": False})
    assert r.status_code == 200, r.text
    # When the audit trail of that domain is read
    items = (await client.get("/api/v1/events", params={"resource": f"domain:{domain_id}"})).json()
    # Then the creation shows its fields, the update only what changed, with the actor
    created, updated = items["data"]
    assert created["type"] == "domain.created" and created["action"] == "created"
    assert created["before"] is None and created["after"]["name"] == "example.com"
    assert updated["before"] == {"active": True} and updated["after"] == {"active": False}
    assert created["actor"] and created["actor"] == updated["actor"]
    assert created["seq"] == domain_id and items["meta"]["total"] == 2


async def test_passwords_are_redacted_in_history(client):
    domain_id = await domain(client, "example.com")
    box = await mailbox(client, domain_id, "alice")
    r = await client.patch(
        f"/api/v1/mailboxes/{box['id']}/password", json={"password": "N3w-secret-pw"}
    )
    assert r.status_code == 200, r.text
    history = await client.get(f"/api/v1/mailboxes/{box['id']}/history")
    assert history.status_code == 200
    text = history.text
    assert "$argon2" not in text and "S3cret-pass" not in text and "N3w-secret-pw" not in text
    changed = history.json()["data"][-1]
    assert changed["after"] == {"password_hash": "[redacted]"}


async def test_history_stays_after_a_delete(client):
    domain_id = await domain(client, "example.com")
    assert (await client.delete(f"/api/v1/domains/{domain_id}")).status_code == 200
    history = (await client.get(f"/api/v1/domains/{domain_id}/history")).json()["data"]
    assert [h["action"] for h in history] == ["created", "deleted"]
    assert history[-1]["before"]["name"] == "example.com" and history[-1]["after"] is None
    assert (await client.get("/api/v1/domains/999999/history")).status_code == 404


async def test_filters_by_type_family_actor_and_after_seq(client):
    domain_id = await domain(client, "example.com")
    await mailbox(client, domain_id, "alice")
    await mailbox(client, domain_id, "bob")
    boxes = (await client.get("/api/v1/events", params={"type": "mailbox."})).json()
    assert [e["type"] for e in boxes["data"]] == ["mailbox.created"] * 2
    after = (await client.get("/api/v1/events", params={"after_seq": domain_id})).json()
    assert all(e["seq"] > domain_id for e in after["data"]) and after["meta"]["total"] == 2
    nobody = (await client.get("/api/v1/events", params={"actor": "nobody"})).json()
    assert nobody["meta"]["total"] == 0
    bad = await client.get("/api/v1/events", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["code"] == "VALIDATION_FAILED"


async def test_one_event_by_sequence_and_404(client):
    domain_id = await domain(client, "example.com")
    one = await client.get(f"/api/v1/events/{domain_id}")
    assert one.status_code == 200 and one.json()["resource"] == f"domain:{domain_id}"
    assert (await client.get("/api/v1/events/987654")).status_code == 404


def test_fold_reports_only_changed_fields_and_redacts_secrets():
    events = [
        (1, DomainCreated(name="a.example")),
        (2, DomainUpdated(id=1, name="a.example", active=True, outgoing_ip="192.0.2.1")),
        (3, MailboxCreated(domain_id=1, username="x", address="x@a.example", password_hash="h")),
        (4, MailboxPasswordChanged(id=3, address="x@a.example", password_hash="h2")),
    ]
    domain_changes = fold("domain:1", events[:2])
    assert domain_changes[1].before == {"outgoing_ip": ""}
    assert domain_changes[1].after == {"outgoing_ip": "192.0.2.1"}
    box = fold("mailbox:3", events[2:])
    assert box[0].after is not None and box[0].after["password_hash"] == "[redacted]"
    assert msgspec.json.encode(box).find(b'"h2"') == -1
