"""Read-model schema. Every row carries `version`: the stream sequence of the last event that
touched it, exposed as the resource's ETag."""

# Bumped whenever a table changes shape: an older read model is dropped and rebuilt from the
# log (read models are disposable; the log is the truth).
MODEL_VERSION = 2

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=OFF",
    "PRAGMA busy_timeout=5000",
)

DDL = """
CREATE TABLE IF NOT EXISTS checkpoint (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    request_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    data TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '',
    resource TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_resource ON events(resource, seq);
-- Only commands sent with an Idempotency-Key are ever looked up by command id.
CREATE INDEX IF NOT EXISTS events_idempotency ON events(command_id)
    WHERE command_id GLOB 'idem-*';
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL,
    outgoing_ip TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS domains_outgoing_ip ON domains(outgoing_ip);
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    quota INTEGER,
    quota_effective INTEGER NOT NULL DEFAULT 0,
    quota_seq INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mailboxes_domain ON mailboxes(domain_id, id);
CREATE TABLE IF NOT EXISTS aliases (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL,
    source TEXT NOT NULL UNIQUE,
    destination TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS aliases_domain ON aliases(domain_id, id);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    domains TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    hint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    rotated_at TEXT,
    revoked_at TEXT,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config_tiers (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domain_overrides (
    domain_id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox_overrides (
    mailbox_id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effective_domains (
    domain_id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    explain TEXT NOT NULL,
    max_mailboxes INTEGER NOT NULL,
    max_aliases INTEGER NOT NULL,
    quota_total_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effective_mailboxes (
    mailbox_id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    explain TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS effective_mailboxes_domain ON effective_mailboxes(domain_id);
CREATE TABLE IF NOT EXISTS whitelist (
    id INTEGER PRIMARY KEY,
    entry_type TEXT NOT NULL,
    value TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    UNIQUE (entry_type, value)
);
CREATE TABLE IF NOT EXISTS dkim_keys (
    domain TEXT NOT NULL,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    public_key TEXT NOT NULL,
    private_key_sealed TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE TABLE IF NOT EXISTS tls_certs (
    id INTEGER PRIMARY KEY,
    hostname TEXT NOT NULL UNIQUE,
    issuer TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    key_sealed TEXT NOT NULL,
    cert_path TEXT NOT NULL,
    key_path TEXT NOT NULL,
    names TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    not_before TEXT,
    expires_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    at TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS security_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL
);
"""

# Tables compared by the rebuild check and dropped by a rebuild, in a stable order.
READ_MODEL_TABLES = (
    "checkpoint",
    "subjects",
    "events",
    "domains",
    "mailboxes",
    "aliases",
    "tokens",
    "security_settings",
    "config_tiers",
    "domain_overrides",
    "mailbox_overrides",
    "effective_domains",
    "effective_mailboxes",
    "whitelist",
    "dkim_keys",
    "tls_certs",
    "agents",
)
