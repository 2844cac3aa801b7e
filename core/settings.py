"""Runtime settings as plain data; loading them (environment, config.env) happens in workers/."""

from pathlib import Path

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    nats_url: str = ""  # empty: run an embedded nats-server under data_dir
    stream: str = "MAILPANEL"
    prefix: str = "mp"
    api_key: str = ""
    admin_user: str = "admin"
    admin_password_hash: str = ""
    jwt_secret: str = ""
    data_key: str = ""  # base64 AES-256 key for secrets in events
    data_key_id: str = ""
    old_data_keys: tuple[tuple[str, str], ...] = ()  # (id, key) pairs still readable
    nats_password: str = ""  # for the embedded nats-server (config.env NATS_PASSWORD)
    host_ips: tuple[str, ...] = ()
    rate_limit_login: int = 5  # per minute per source IP; 0 = off
    rate_limit_api: int = 60
    trusted_proxies: tuple[str, ...] = ()
    # The mail stack this process's reconcile agent drives: "sandbox" (runs Postfix, Dovecot and
    # OpenDKIM itself under the data dir, on loopback ports), "system" (writes the system's
    # config dirs and reloads the daemons already running there), "none" (renders into the data
    # dir only), or "" for no agent at all (an API-only process).
    mailstack: str = "none"
    agent_host: str = ""
    smtp_port: int = 2525
    submission_port: int = 2587
    imap_port: int = 1143
    pop3_port: int = 1110
    milter_port: int = 8891
    # The agent's own loopback services: policy delegation, before-queue content filter and
    # Postfix's re-injection smtpd behind it, and the spamd/clamd it runs in a sandbox.
    policy_port: int = 10040
    filter_port: int = 10025
    reinject_port: int = 10026
    spamd_port: int = 10783
    clamd_port: int = 13310
    # System mode: where the running daemons read their configuration and keep mail.
    postfix_dir: str = "/etc/postfix"
    dovecot_dir: str = "/etc/dovecot"
    opendkim_dir: str = "/etc/opendkim"
    tls_dir: str = "/etc/mailpanel/tls"
    certbot: str = "certbot"  # the certbot binary for /tls/issue and /tls/renew
    letsencrypt_dir: str = "/etc/letsencrypt"
    dns_resolver: str = ""  # ip[:port] for /dns/verify; empty: the system resolver
    vmail_dir: str = "/var/vmail"
    mail_hostname: str = ""  # the MX host name (empty: mx.mailpanel.test in a sandbox, else FQDN)
    jwt_ttl_s: int = 24 * 3600
    publish_wait_s: float = 5.0

    @property
    def read_db(self) -> Path:
        return self.data_dir / "read.db"

    @property
    def mail_root(self) -> Path:
        return self.data_dir / "mail"
