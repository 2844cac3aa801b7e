"""Where one mail-stack instance lives: every path and port the rendered files refer to.

In a sandbox every path derives from `root` (one instance per root, nothing in /etc), so two
instances can run side by side. Rendered file names are relative names like etc/postfix/main.cf;
`live()` maps them to where they go: under root, or, in system mode, into the configured system
directories (`paths`). The candidate copy always mirrors the relative names under root.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.settings import Settings

# Rendered files, relative to Layout.root.
POSTFIX_DIR = "etc/postfix"
DOVECOT_DIR = "etc/dovecot"
OPENDKIM_DIR = "etc/opendkim"

MAIN_CF = f"{POSTFIX_DIR}/main.cf"
MASTER_CF = f"{POSTFIX_DIR}/master.cf"
DOVECOT_CONF = f"{DOVECOT_DIR}/dovecot.conf"
PASSWD = f"{DOVECOT_DIR}/passwd"
OPENDKIM_CONF = f"{OPENDKIM_DIR}/opendkim.conf"
KEY_TABLE = f"{OPENDKIM_DIR}/KeyTable"
SIGNING_TABLE = f"{OPENDKIM_DIR}/SigningTable"
KEYS_DIR = f"{OPENDKIM_DIR}/keys"
TLS_DIR = "etc/mailpanel/tls"  # <hostname>/fullchain.pem and privkey.pem


def dkim_key_file(domain: str, selector: str) -> str:
    return f"{KEYS_DIR}/{domain}/{selector}.private"


def tls_files(hostname: str) -> tuple[str, str]:
    """(chain, key) of a certificate the agent writes."""
    return f"{TLS_DIR}/{hostname}/fullchain.pem", f"{TLS_DIR}/{hostname}/privkey.pem"


# texthash maps in the Postfix config directory (no postmap needed, reload picks them up).
MAPS = (
    "virtual_domains",
    "virtual_mailboxes",
    "virtual_aliases",
    "recipient_access",
    "sender_transport",
    "whitelist_senders",
)
CIDR_MAPS = ("whitelist_clients",)
# Per-service login refusals (Dovecot deny passdb, %s = the service asking).
DENY_SERVICES = ("imap", "pop3", "smtp", "submission", "sieve", "managesieve", "doveadm")

# Unix sockets live in Dovecot's base_dir and Postfix's queue dir (names up to ~25 chars);
# sun_path holds 107 bytes.
MAX_BASE_DIR = 80


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Paths and ports of one instance. `sandbox` means: loopback only, nothing ever leaves
    (error transports), fast queue retries and no auth failure delay, no TLS."""

    root: Path
    mail_root_dir: Path | None = None  # default ROOT/mail
    hostname: str = "mx.mailpanel.test"
    instance: str = "mailpanel"
    listen: str = "127.0.0.1"
    smtp_port: int = 2525
    submission_port: int = 2587
    imap_port: int = 1143
    pop3_port: int = 1110
    milter_port: int = 8891
    policy_port: int = 0  # the agent's policy service on loopback; 0 = not wired
    filter_port: int = 0  # the before-queue content filter on port 25; 0 = not wired
    reinject_port: int = 0  # the smtpd the filter hands scanned mail back to
    sieve: bool = False  # Pigeonhole installed: run per-mailbox Sieve scripts in LMTP
    vmail_uid: int = 5000
    vmail_gid: int = 5000
    sandbox: bool = True
    dkim: bool = False  # wire the OpenDKIM milter into Postfix
    require_safe_keys: bool | None = None  # None: false under a world-writable tmp dir
    # System mode: named paths that do not derive from root (postfix_dir, dovecot_dir,
    # opendkim_dir, queue_dir, data_dir, log_dir, dovecot_base_dir, dovecot_state_dir,
    # opendkim_run_dir).
    paths: Mapping[str, Path] = field(default_factory=dict)

    def _path(self, name: str, default: Path) -> Path:
        return self.paths.get(name, default)

    @classmethod
    def for_settings(cls, settings: Settings, **changes: Any) -> "Layout":
        """The data-dir instance used when no mail stack is installed on the host."""
        base = cls(root=settings.data_dir / "mailstack", mail_root_dir=settings.mail_root)
        return replace(base, **changes)

    @property
    def sieve_dir(self) -> Path:
        """Per-mailbox Sieve scripts (<domain>/<local>.sieve), read-only to vmail."""
        return self._path("sieve_dir", self.root / "sieve")

    @property
    def tls_dir(self) -> Path:
        return self._path("tls_dir", self.root / TLS_DIR)

    def _dirs(self) -> tuple[tuple[str, Path], ...]:
        return (
            (POSTFIX_DIR, self.postfix_dir),
            (DOVECOT_DIR, self.dovecot_dir),
            (OPENDKIM_DIR, self.opendkim_dir),
            (TLS_DIR, self.tls_dir),
        )

    def live(self, rel: str) -> Path:
        """Where the rendered file `rel` (etc/postfix/main.cf, ...) lives."""
        for prefix, directory in self._dirs():
            if rel == prefix or rel.startswith(prefix + "/"):
                return directory / rel[len(prefix) + 1 :] if rel != prefix else directory
        return self.root / rel

    def staged(self, live: Path, candidate: Path) -> Path | None:
        """The candidate copy of a live path, or None when it is not a rendered location."""
        for prefix, directory in self._dirs():
            if live.is_relative_to(directory):
                return candidate / prefix / live.relative_to(directory)
        return None

    @property
    def mail_root(self) -> Path:
        return self.mail_root_dir if self.mail_root_dir is not None else self.root / "mail"

    @property
    def postfix_dir(self) -> Path:
        return self._path("postfix_dir", self.root / POSTFIX_DIR)

    @property
    def dovecot_dir(self) -> Path:
        return self._path("dovecot_dir", self.root / DOVECOT_DIR)

    @property
    def opendkim_dir(self) -> Path:
        return self._path("opendkim_dir", self.root / OPENDKIM_DIR)

    @property
    def keys_dir(self) -> Path:
        return self.live(KEYS_DIR)

    @property
    def dovecot_conf(self) -> Path:
        return self.live(DOVECOT_CONF)

    @property
    def opendkim_conf(self) -> Path:
        return self.live(OPENDKIM_CONF)

    @property
    def passwd(self) -> Path:
        return self.live(PASSWD)

    @property
    def queue_dir(self) -> Path:
        return self._path("queue_dir", self.root / "spool")

    @property
    def data_dir(self) -> Path:
        return self._path("data_dir", self.root / "data")

    @property
    def log_dir(self) -> Path:
        return self._path("log_dir", self.root / "log")

    @property
    def postfix_log(self) -> Path:
        return self.log_dir / "postfix.log"

    @property
    def dovecot_log(self) -> Path:
        return self.log_dir / "dovecot.log"

    @property
    def dovecot_base_dir(self) -> Path:
        return self._path("dovecot_base_dir", self.root / "run" / "dovecot")

    @property
    def dovecot_state_dir(self) -> Path:
        return self._path("dovecot_state_dir", self.root / "state" / "dovecot")

    @property
    def lmtp_socket(self) -> Path:
        return self.dovecot_base_dir / "lmtp"

    @property
    def auth_socket(self) -> Path:
        """Dovecot's SASL socket for Postfix, where smtpd_sasl_path = private/auth finds it."""
        return self.queue_dir / "private" / "auth"

    @property
    def opendkim_run_dir(self) -> Path:
        return self._path("opendkim_run_dir", self.root / "run" / "opendkim")

    @property
    def opendkim_pid(self) -> Path:
        return self.opendkim_run_dir / "opendkim.pid"

    @property
    def master_pid(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    @property
    def dovecot_pid(self) -> Path:
        return self.dovecot_base_dir / "master.pid"

    @property
    def safe_keys(self) -> bool:
        """OpenDKIM's RequireSafeKeys walks every parent; a 1777 /tmp makes it refuse keys."""
        if self.require_safe_keys is not None:
            return self.require_safe_keys
        path = self.root.as_posix() + "/"
        return not path.startswith(("/tmp/", "/var/tmp/", "/dev/shm/"))


# Standard folders, auto-created by Dovecot and pre-created on disk as Maildir++ ".Name".
SPECIAL_USE = (("Drafts", "\\Drafts"), ("Junk", "\\Junk"), ("Sent", "\\Sent"), ("Trash", "\\Trash"))
