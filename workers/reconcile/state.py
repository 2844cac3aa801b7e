"""The desired mail-host state, read from the read-model tables in one snapshot.

The agent renders from this value only, so rendering is a pure function of it. Values arrive
validated and normalised (lowercase ASCII) from the command layer; render re-checks what could
break a config line.
"""

import sqlite3
from typing import Any

import msgspec

from core.config import TIER_TYPES, GlobalConfig


class Domain(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    active: bool = True
    outgoing_ip: str = ""
    effective: dict[str, Any] = msgspec.field(default_factory=dict)


class Mailbox(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    domain: str
    local: str
    address: str
    password_hash: str
    quota_bytes: int = 0  # effective quota; 0 = unlimited
    active: bool = True  # the mailbox's own flag; its domain's flag is on Domain
    effective: dict[str, Any] = msgspec.field(default_factory=dict)


class Alias(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # local@domain, or @domain for a catch-all
    destination: tuple[str, ...]
    id: int = 0


class DkimRow(msgspec.Struct, frozen=True, kw_only=True):
    """A signing (active) DKIM key; its private half still sealed."""

    domain: str
    selector: str
    sealed: str


class CertRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    hostname: str
    issuer: str
    names: tuple[str, ...]
    chain_pem: str
    key_sealed: str
    cert_path: str
    key_path: str


class MailState(msgspec.Struct, frozen=True, kw_only=True):
    domains: tuple[Domain, ...] = ()
    mailboxes: tuple[Mailbox, ...] = ()
    aliases: tuple[Alias, ...] = ()
    # Config tiers by name ("global", "domain_defaults", "mailbox_defaults"), defaults filled in.
    tiers: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    dkim: tuple[DkimRow, ...] = ()
    certs: tuple[CertRow, ...] = ()
    whitelist: tuple[tuple[str, str], ...] = ()  # (entry_type, value): ip, cidr, domain, email
    seq: int = 0  # the projector checkpoint the snapshot was taken at (0: unknown)

    @property
    def global_config(self) -> dict[str, Any]:
        return self.tiers.get("global") or msgspec.to_builtins(GlobalConfig())


DOMAINS = (
    "SELECT d.id, d.name, d.active, d.outgoing_ip, e.data FROM domains d "
    "LEFT JOIN effective_domains e ON e.domain_id = d.id ORDER BY d.name"
)
MAILBOXES = (
    "SELECT m.id, d.name, m.username, m.address, m.password_hash, m.quota_effective, m.active, "
    "e.data FROM mailboxes m JOIN domains d ON d.id = m.domain_id "
    "LEFT JOIN effective_mailboxes e ON e.mailbox_id = m.id ORDER BY m.address"
)
ALIASES = "SELECT id, source, destination FROM aliases ORDER BY source"
TIERS = "SELECT name, data FROM config_tiers"
DKIM = (
    "SELECT domain, selector, private_key_sealed FROM dkim_keys WHERE status = 'active' "
    "ORDER BY domain, selector"
)
WHITELIST = "SELECT entry_type, value FROM whitelist ORDER BY entry_type, value"
CERTS = (
    "SELECT id, hostname, issuer, names, chain_pem, key_sealed, cert_path, key_path "
    "FROM tls_certs ORDER BY id"
)
CHECKPOINT = "SELECT seq FROM checkpoint WHERE name = 'projector'"

_decode = msgspec.json.Decoder(dict[str, Any])


def _json(text: str | None) -> dict[str, Any]:
    return _decode.decode(text) if text else {}


def split_destination(destination: str) -> tuple[str, ...]:
    """The read model stores "a@x, b@y"; empty pieces are dropped."""
    return tuple(part.strip() for part in destination.split(",") if part.strip())


def load_state(db: sqlite3.Connection) -> MailState:
    """Everything the mail host needs, read inside one transaction (a consistent snapshot)."""
    began = not db.in_transaction
    if began:
        db.execute("BEGIN")
    try:
        domains = tuple(
            Domain(
                id=int(row[0]),
                name=str(row[1]),
                active=bool(row[2]),
                outgoing_ip=str(row[3] or ""),
                effective=_json(row[4]),
            )
            for row in db.execute(DOMAINS).fetchall()
        )
        mailboxes = tuple(
            Mailbox(
                id=int(row[0]),
                domain=str(row[1]),
                local=str(row[2]),
                address=str(row[3]),
                password_hash=str(row[4]),
                quota_bytes=int(row[5] or 0),
                active=bool(row[6]),
                effective=_json(row[7]),
            )
            for row in db.execute(MAILBOXES).fetchall()
        )
        aliases = tuple(
            Alias(id=int(row[0]), source=str(row[1]), destination=split_destination(row[2]))
            for row in db.execute(ALIASES).fetchall()
        )
        stored = {str(name): _json(data) for name, data in db.execute(TIERS).fetchall()}
        dkim = tuple(
            DkimRow(domain=str(r[0]), selector=str(r[1]), sealed=str(r[2]))
            for r in db.execute(DKIM).fetchall()
        )
        whitelist = tuple((str(r[0]), str(r[1])) for r in db.execute(WHITELIST).fetchall())
        certs = tuple(
            CertRow(
                id=int(r[0]),
                hostname=str(r[1]),
                issuer=str(r[2]),
                names=tuple(msgspec.json.decode(str(r[3]).encode(), type=list[str])),
                chain_pem=str(r[4]),
                key_sealed=str(r[5]),
                cert_path=str(r[6]),
                key_path=str(r[7]),
            )
            for r in db.execute(CERTS).fetchall()
        )
        checkpoint = db.execute(CHECKPOINT).fetchone()
    finally:
        if began:
            db.execute("ROLLBACK")
    tiers = {
        name: {**msgspec.to_builtins(kind()), **stored.get(name, {})}
        for name, kind in TIER_TYPES.items()
    }
    return MailState(
        domains=domains,
        mailboxes=mailboxes,
        aliases=aliases,
        tiers=tiers,
        dkim=dkim,
        certs=certs,
        whitelist=whitelist,
        seq=int(checkpoint[0]) if checkpoint else 0,
    )
