"""Settings from the environment and config.env (created 0600 with random secrets on first
start). Environment values win over the file."""

import base64
import ipaddress
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

import psutil

from commands.passwords import hasher
from core.settings import Settings

SCHEME = "{ARGON2ID}"


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_config_env(path: Path, env: dict[str, str], announce: bool = True) -> dict[str, str]:
    """Read config.env, adding any missing secret (random unless the environment gives it).

    The admin password is stored only as its argon2 hash; a generated one is printed once.
    """
    values = parse_env_file(path) if path.exists() else {}
    added: list[str] = []
    if "API_KEY" not in values:
        values["API_KEY"] = env.get("MAILPANEL_API_KEY") or "mpk_" + secrets.token_urlsafe(32)
        added.append("API_KEY")
    if "ADMIN_PASSWORD_HASH" not in values:
        password = env.get("MAILPANEL_ADMIN_PASSWORD") or ""
        if not password:
            password = secrets.token_urlsafe(15)
            if announce:
                user = env.get("MAILPANEL_ADMIN_USER", "admin")
                print(
                    f"mailpanel: generated admin password for {user!r}: {password}\n"
                    "mailpanel: (shown once; config.env keeps only its hash)",
                    file=sys.stderr,
                    flush=True,
                )
        values["ADMIN_PASSWORD_HASH"] = SCHEME + hasher.hash(password)
        added.append("ADMIN_PASSWORD_HASH")
    if "JWT_SECRET" not in values:
        values["JWT_SECRET"] = secrets.token_urlsafe(48)
        added.append("JWT_SECRET")
    if "NATS_PASSWORD" not in values:
        values["NATS_PASSWORD"] = secrets.token_urlsafe(24)
        added.append("NATS_PASSWORD")
    if "DATA_KEY" not in values:
        values["DATA_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()
        values["DATA_KEY_ID"] = "k" + secrets.token_hex(4)
        added.append("DATA_KEY")
    if added or not path.exists():
        lines = [
            "# mailpanel secrets: keep this file mode 0600",
            *(f"{k}={v}" for k, v in values.items()),
        ]
        _write_private(path, "\n".join(lines) + "\n")
    return values


def host_ips(env: dict[str, str]) -> tuple[str, ...]:
    """MAILPANEL_HOST_IPS, or this host's global and private non-loopback addresses."""
    given = env.get("MAILPANEL_HOST_IPS", "").strip()
    if given:
        return tuple(str(ipaddress.ip_address(ip.strip())) for ip in given.split(",") if ip.strip())
    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            try:
                ip = ipaddress.ip_address(addr.address.split("%")[0])
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            if str(ip) not in found:
                found.append(str(ip))
    return tuple(found)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"mailpanel: --listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def load_settings(
    data_dir: str | None = None,
    listen: str | None = None,
    env: dict[str, str] | None = None,
    announce: bool = True,
) -> Settings:
    env = dict(os.environ) if env is None else env
    root = Path(data_dir or env.get("MAILPANEL_DATA_DIR") or "./var").resolve()
    root.mkdir(parents=True, exist_ok=True)
    config_path = Path(env.get("MAILPANEL_CONFIG") or root / "config.env")
    values = ensure_config_env(config_path, env, announce)
    host, port = parse_listen(listen or env.get("MAILPANEL_LISTEN") or "127.0.0.1:8080")
    admin_hash = values["ADMIN_PASSWORD_HASH"]
    if env.get("MAILPANEL_ADMIN_PASSWORD"):
        admin_hash = SCHEME + hasher.hash(env["MAILPANEL_ADMIN_PASSWORD"])
    mailstack = mailstack_mode(env.get("MAILPANEL_MAILSTACK", ""))
    system = mailstack == "system"
    return Settings(
        data_dir=root,
        listen_host=host,
        listen_port=port,
        nats_url=env.get("MAILPANEL_NATS_URL", ""),
        api_key=env.get("MAILPANEL_API_KEY") or values["API_KEY"],
        admin_user=env.get("MAILPANEL_ADMIN_USER") or "admin",
        admin_password_hash=admin_hash,
        # Several API processes must share these (a JWT from one is checked by another; a
        # fingerprint or an encrypted key written by one is read by another): one config.env,
        # or the same values in the environment of each.
        jwt_secret=env.get("MAILPANEL_JWT_SECRET") or values["JWT_SECRET"],
        data_key=env.get("MAILPANEL_DATA_KEY") or values["DATA_KEY"],
        data_key_id=env.get("MAILPANEL_DATA_KEY_ID") or values.get("DATA_KEY_ID", ""),
        old_data_keys=_old_keys(env.get("MAILPANEL_OLD_DATA_KEYS", "")),
        nats_password=values["NATS_PASSWORD"],
        host_ips=host_ips(env),
        rate_limit_login=_int(env, "MAILPANEL_RATE_LIMIT_LOGIN", 5),
        rate_limit_api=_int(env, "MAILPANEL_RATE_LIMIT_API", 60),
        trusted_proxies=tuple(
            p.strip() for p in env.get("MAILPANEL_TRUSTED_PROXIES", "").split(",") if p.strip()
        ),
        mailstack=mailstack,
        agent_host=env.get("MAILPANEL_AGENT_HOST") or socket.gethostname(),
        smtp_port=_int(env, "MAILPANEL_SMTP_PORT", 25 if system else 2525),
        submission_port=_int(env, "MAILPANEL_SUBMISSION_PORT", 587 if system else 2587),
        imap_port=_int(env, "MAILPANEL_IMAP_PORT", 143 if system else 1143),
        pop3_port=_int(env, "MAILPANEL_POP3_PORT", 110 if system else 1110),
        milter_port=_int(env, "MAILPANEL_MILTER_PORT", 8891),
        policy_port=_int(env, "MAILPANEL_POLICY_PORT", 10040),
        filter_port=_int(env, "MAILPANEL_FILTER_PORT", 10025),
        reinject_port=_int(env, "MAILPANEL_REINJECT_PORT", 10026),
        spamd_port=_int(env, "MAILPANEL_SPAMD_PORT", 783 if system else 10783),
        clamd_port=_int(env, "MAILPANEL_CLAMD_PORT", 3310 if system else 13310),
        postfix_dir=env.get("MAILPANEL_POSTFIX_DIR") or "/etc/postfix",
        dovecot_dir=env.get("MAILPANEL_DOVECOT_DIR") or "/etc/dovecot",
        opendkim_dir=env.get("MAILPANEL_OPENDKIM_DIR") or "/etc/opendkim",
        vmail_dir=env.get("MAILPANEL_VMAIL_DIR") or "/var/vmail",
        tls_dir=env.get("MAILPANEL_TLS_DIR") or "/etc/mailpanel/tls",
        certbot=env.get("MAILPANEL_CERTBOT") or "certbot",
        letsencrypt_dir=env.get("MAILPANEL_LETSENCRYPT_DIR") or "/etc/letsencrypt",
        dns_resolver=env.get("MAILPANEL_DNS_RESOLVER", ""),
        mail_hostname=env.get("MAILPANEL_MAIL_HOSTNAME")
        or ("" if not system else socket.getfqdn()),
    )


MAILSTACK_MODES = ("sandbox", "system", "none", "off")


def mailstack_available() -> bool:
    """Postfix and Dovecot are installed and we are root (they drop to their own users)."""
    return os.geteuid() == 0 and all(
        shutil.which(name) or Path(f"/usr/sbin/{name}").exists() for name in ("postfix", "dovecot")
    )


def mailstack_mode(given: str) -> str:
    """The agent's mode: as given, else sandbox when the daemons can run here, else none.
    "off" runs no agent (an API-only process)."""
    mode = given.strip().lower()
    if mode and mode not in MAILSTACK_MODES:
        raise SystemExit(f"mailpanel: MAILPANEL_MAILSTACK must be one of {MAILSTACK_MODES}")
    if not mode:
        mode = "sandbox" if mailstack_available() else "none"
    return "" if mode == "off" else mode


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise SystemExit(f"mailpanel: {name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _old_keys(raw: str) -> tuple[tuple[str, str], ...]:
    """MAILPANEL_OLD_DATA_KEYS="id:base64key,id:base64key": retired keys, still readable."""
    out = []
    for part in raw.split(","):
        key_id, sep, key = part.strip().partition(":")
        if not part.strip():
            continue
        if not sep or not key_id or not key:
            raise SystemExit("mailpanel: MAILPANEL_OLD_DATA_KEYS must be id:key pairs")
        out.append((key_id, key))
    return tuple(out)
