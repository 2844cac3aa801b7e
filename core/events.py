"""Events: frozen, tagged msgspec Structs with stable dotted tags.

Rules: a tag never changes; a new field gets a default; an existing field never changes type.
Every stored message is an Envelope: the event plus the context of the command that made it.
The id of a created resource is the stream sequence of its creating event, so ids are unique
across API processes, never reused, and identical after a rebuild.
"""

from datetime import datetime
from typing import Annotated

import msgspec

from core.config import (
    DomainDefaults,
    DomainOverrides,
    GlobalConfig,
    MailboxDefaults,
    MailboxOverrides,
)

SCHEMA_VERSION = 1


class Meta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who did it, from where, in which request, and when (set by the command, not the decider)."""

    actor: str
    actor_id: str = ""
    source_ip: str = ""
    request_id: str = ""
    command_id: str = ""
    at: datetime
    # HMAC of the request (method, path, body) that made an Idempotency-Key command, so a
    # key reused for a different request is refused instead of answered with the first one.
    fingerprint: str = ""
    # The sequence of the event this one reverts (POST /events/:seq/revert); 0: not a revert.
    reverts: int = 0


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1


# ---- domains -------------------------------------------------------------------------------


class DomainCreated(_Event, tag="domain.created", frozen=True):
    name: str
    active: bool = True
    outgoing_ip: str = ""


class DomainUpdated(_Event, tag="domain.updated", frozen=True):
    id: int
    name: str
    active: bool
    outgoing_ip: str


class DomainDeleted(_Event, tag="domain.deleted", frozen=True):
    """Deleting a domain deletes its mailboxes and aliases with it (ON DELETE CASCADE)."""

    id: int
    name: str


# ---- mailboxes -----------------------------------------------------------------------------


class MailboxCreated(_Event, tag="mailbox.created", frozen=True):
    domain_id: int
    username: str
    address: str
    password_hash: str
    quota: int | None = None
    active: bool = True


class MailboxPasswordChanged(_Event, tag="mailbox.password_changed", frozen=True):
    id: int
    address: str
    password_hash: str


class MailboxUpdated(_Event, tag="mailbox.updated", frozen=True):
    id: int
    address: str
    active: bool
    quota: int | None


class MailboxDeleted(_Event, tag="mailbox.deleted", frozen=True):
    id: int
    address: str


# ---- aliases -------------------------------------------------------------------------------


class AliasCreated(_Event, tag="alias.created", frozen=True):
    domain_id: int
    source: str
    destination: str


class AliasUpdated(_Event, tag="alias.updated", frozen=True):
    id: int
    source: str
    destination: str


class AliasDeleted(_Event, tag="alias.deleted", frozen=True):
    id: int
    source: str


# ---- access control ----------------------------------------------------------------------


class TokenCreated(_Event, tag="token.created", frozen=True):
    """A managed API token. Only the SHA-256 of its secret is ever stored; `hint` is the
    secret's first characters, enough to recognise it in a list."""

    name: str
    scope: str
    secret_sha256: str
    domains: tuple[str, ...] = ()
    expires_at: datetime | None = None
    hint: str = ""


class TokenRotated(_Event, tag="token.rotated", frozen=True):
    id: int
    name: str
    secret_sha256: str
    hint: str = ""


class TokenRevoked(_Event, tag="token.revoked", frozen=True):
    id: int
    name: str


class SecuritySettingsChanged(_Event, tag="security.settings_changed", frozen=True):
    """The whole security settings row (PUT replaces it in full)."""

    rate_limit_login: int
    rate_limit_api: int
    login_allowlist: tuple[str, ...] = ()
    api_key_allowlist: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()


# ---- configuration tiers, overrides, whitelist ---------------------------------------------


class GlobalConfigSet(_Event, tag="config.global_set", frozen=True):
    """The whole global row (PUT replaces it in full; the anti-spam PUT replaces a subset)."""

    config: GlobalConfig


class DomainDefaultsSet(_Event, tag="config.domain_defaults_set", frozen=True):
    config: DomainDefaults


class MailboxDefaultsSet(_Event, tag="config.mailbox_defaults_set", frozen=True):
    config: MailboxDefaults


class DomainOverridesSet(_Event, tag="domain.overrides_set", frozen=True):
    id: int
    name: str
    overrides: DomainOverrides


class MailboxOverridesSet(_Event, tag="mailbox.overrides_set", frozen=True):
    id: int
    address: str
    overrides: MailboxOverrides


class WhitelistEntryAdded(_Event, tag="whitelist.entry_added", frozen=True):
    entry_type: str
    value: str
    note: str = ""


class WhitelistEntryRemoved(_Event, tag="whitelist.entry_removed", frozen=True):
    id: int
    entry_type: str
    value: str


# ---- DKIM keys and TLS certificates ------------------------------------------------------


class DkimKeyGenerated(_Event, tag="dkim.key_generated", frozen=True):
    """A key pair for <domain, selector>; the private key only ever travels sealed (AES-GCM
    with the data-encryption key whose id the token names). Replaces an existing pair."""

    domain: str
    selector: str
    algorithm: str  # rsa | ed25519
    public_key: str  # base64 of the p= tag
    private_key_sealed: str
    status: str  # active (signs now) | pending (published first, activated later)
    previous: str = ""  # the selector that stopped signing, when this one took over


class DkimKeyActivated(_Event, tag="dkim.key_activated", frozen=True):
    """Signing switches to `selector`; `previous` (the old signer) stays published."""

    domain: str
    selector: str
    previous: str = ""


class DkimKeyRetired(_Event, tag="dkim.key_retired", frozen=True):
    """No longer signs nor is published; the key file goes from the mail hosts."""

    domain: str
    selector: str


class DkimKeyDeleted(_Event, tag="dkim.key_deleted", frozen=True):
    domain: str
    selector: str


class TlsCertRegistered(_Event, tag="tls.cert_registered", frozen=True):
    """A certificate for `hostname` (replacing its earlier record, same id). The key travels
    sealed; a certbot-managed one stays in certbot's files (key_path) and is never read."""

    hostname: str
    issuer: str  # self | letsencrypt | uploaded
    chain_pem: str = ""  # leaf first; public data
    key_sealed: str = ""
    cert_path: str = ""  # only for certificates whose files someone else manages (certbot)
    key_path: str = ""
    names: tuple[str, ...] = ()
    fingerprint: str = ""
    not_before: datetime | None = None
    expires_at: datetime | None = None


class TlsCertRemoved(_Event, tag="tls.cert_removed", frozen=True):
    """The record goes; files on disk stay (seed: clean those up by hand)."""

    id: int
    hostname: str


# ---- rows carried by restores -------------------------------------------------------------
# A backup (core/backup.py), a full restore and the undelete of a domain, mailbox, alias or
# whitelist entry carry read-model rows with their ids. Timestamps are the read model's
# RFC 3339 strings (UTC, seconds, Z), so a restored row shows the times it had.

Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Time = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
]


class DomainRow(msgspec.Struct, frozen=True, kw_only=True):
    id: Id
    name: str
    active: bool
    outgoing_ip: str
    created_at: Time
    updated_at: Time


class MailboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """`quota` is the mailbox's own quota (null: it inherits the mailbox default)."""

    id: Id
    domain_id: Id
    username: str
    address: str
    password_hash: str
    quota: NonNegative | None
    active: bool
    created_at: Time
    updated_at: Time


class AliasRow(msgspec.Struct, frozen=True, kw_only=True):
    id: Id
    domain_id: Id
    source: str
    destination: str
    created_at: Time
    updated_at: Time


class DomainOverridesRow(msgspec.Struct, frozen=True, kw_only=True):
    domain_id: Id
    overrides: DomainOverrides


class MailboxOverridesRow(msgspec.Struct, frozen=True, kw_only=True):
    mailbox_id: Id
    overrides: MailboxOverrides


class Tiers(msgspec.Struct, frozen=True, kw_only=True):
    """The three tiers; `updated_at` names the tiers ever set (with when): a tier missing
    there is still at its built-in defaults."""

    global_: GlobalConfig = msgspec.field(name="global")
    domain_defaults: DomainDefaults
    mailbox_defaults: MailboxDefaults
    updated_at: dict[str, Time] = {}


class WhitelistRow(msgspec.Struct, frozen=True, kw_only=True):
    id: Id
    entry_type: str
    value: str
    note: str
    created_at: Time


class DkimRow(msgspec.Struct, frozen=True, kw_only=True):
    """A DKIM key reference: the private half stays the sealed token it is in the log."""

    domain: str
    selector: str
    algorithm: str
    public_key: str
    status: str
    private_key_sealed: str
    created_at: Time
    updated_at: Time


class TlsRow(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate registration; the key stays sealed."""

    id: Id
    hostname: str
    issuer: str
    chain_pem: str
    key_sealed: str
    cert_path: str
    key_path: str
    names: list[str]
    fingerprint: str
    not_before: Time | None
    expires_at: Time | None
    created_at: Time
    updated_at: Time


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every resource table of the data plane (tokens and security settings excluded)."""

    domains: list[DomainRow]
    mailboxes: list[MailboxRow]
    aliases: list[AliasRow]
    config: Tiers
    domain_overrides: list[DomainOverridesRow]
    mailbox_overrides: list[MailboxOverridesRow]
    tls_certs: list[TlsRow]
    dkim_keys: list[DkimRow]
    whitelist: list[WhitelistRow]


# ---- restores, reverts ---------------------------------------------------------------------


class SystemRestored(_Event, tag="system.restored", frozen=True):
    """Every resource table becomes the snapshot, with the snapshot's ids (a backup restore,
    or the revert of one). Appended on <prefix>.system.restore."""

    snapshot: Snapshot
    previous_seq: int  # the read model's checkpoint when the restore was decided
    counts: dict[str, int] = {}
    backup_created_at: str = ""  # the backup's own created_at and log_sequence, if from one
    backup_log_sequence: int = 0


class SequenceReserved(_Event, tag="system.sequence_reserved", frozen=True):
    """A filler: moves the stream sequence past the ids of a backup about to be restored, so
    ids issued later (stream sequences) never collide with restored ones. No effect."""

    upto: int


class DomainRestored(_Event, tag="domain.restored", frozen=True):
    """A deleted domain back with its id, overrides, mailboxes (ids, password hashes,
    overrides) and aliases as they were (the revert of domain.deleted)."""

    domain: DomainRow
    overrides: DomainOverrides | None = None
    mailboxes: list[MailboxRow] = []
    mailbox_overrides: list[MailboxOverridesRow] = []
    aliases: list[AliasRow] = []


class MailboxRestored(_Event, tag="mailbox.restored", frozen=True):
    """A deleted mailbox back with its id, password hash and overrides."""

    mailbox: MailboxRow
    overrides: MailboxOverrides | None = None


class AliasRestored(_Event, tag="alias.restored", frozen=True):
    alias: AliasRow


class WhitelistEntryRestored(_Event, tag="whitelist.entry_restored", frozen=True):
    entry: WhitelistRow


# ---- reconcile agents ----------------------------------------------------------------------


class AgentReconciled(_Event, tag="agent.reconciled", frozen=True):
    """One reconcile run of the agent on `host`: what it applied, changed, and how it went."""

    host: str
    mode: str
    applied_seq: int
    ok: bool
    step: str
    changed: dict[str, str] = {}  # rendered file -> sha256 of its new content
    drift: tuple[str, ...] = ()  # files found changed on disk since the agent last wrote them
    duration_ms: int = 0
    log: tuple[str, ...] = ()
    error: str = ""


Event = (
    DomainCreated
    | DomainUpdated
    | DomainDeleted
    | MailboxCreated
    | MailboxPasswordChanged
    | MailboxUpdated
    | MailboxDeleted
    | AliasCreated
    | AliasUpdated
    | AliasDeleted
    | TokenCreated
    | TokenRotated
    | TokenRevoked
    | SecuritySettingsChanged
    | GlobalConfigSet
    | DomainDefaultsSet
    | MailboxDefaultsSet
    | DomainOverridesSet
    | MailboxOverridesSet
    | WhitelistEntryAdded
    | WhitelistEntryRemoved
    | DkimKeyGenerated
    | DkimKeyActivated
    | DkimKeyRetired
    | DkimKeyDeleted
    | TlsCertRegistered
    | TlsCertRemoved
    | AgentReconciled
    | SystemRestored
    | SequenceReserved
    | DomainRestored
    | MailboxRestored
    | AliasRestored
    | WhitelistEntryRestored
)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One message in the log: exactly one event and its context."""

    schema: int = SCHEMA_VERSION
    meta: Meta
    event: Event


encoder = msgspec.json.Encoder()
envelope_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    return encoder.encode(envelope)


def decode(data: bytes) -> Envelope:
    """Decode one stored message; raises msgspec.DecodeError on anything unknown."""
    return envelope_decoder.decode(data)


def event_tag(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
