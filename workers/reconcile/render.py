"""Render the complete mail-stack file set from a MailState: a pure function.

Rule: no value reaches a config line unchecked. Names and addresses arrive validated from the
read model, but every value is re-checked here against what the target format can carry
(no whitespace or control characters anywhere, no ":" in passwd-file fields, no key starting
with "#" in a Postfix map, numbers are numbers, IPs parse). A value that fails raises
RenderError: the agent reports it and keeps the live config.
"""

import ipaddress
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from core.config import GlobalConfig
from workers.reconcile.layout import (
    DENY_SERVICES,
    DOVECOT_CONF,
    DOVECOT_DIR,
    KEY_TABLE,
    MAIN_CF,
    MASTER_CF,
    OPENDKIM_CONF,
    PASSWD,
    POSTFIX_DIR,
    SIGNING_TABLE,
    SPECIAL_USE,
    Layout,
    dkim_key_file,
    tls_files,
)
from workers.reconcile.maildirs import UnsafePath, check_component
from workers.reconcile.state import Domain, MailState

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "mailstack"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    undefined=StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    keep_trailing_newline=True,
)

# Restrictions are rendered from this fixed list only: an unknown name passes every static
# check and fails only at RCPT time ("451 4.3.5 Server configuration error").
ALLOWED_RESTRICTIONS = frozenset(
    {
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "reject_unauth_destination",
        "defer_unauth_destination",
        "reject_unlisted_recipient",
        "reject_non_fqdn_recipient",
        "reject_unknown_recipient_domain",
        "reject_unauth_pipelining",
        "check_recipient_access",
        "check_client_access",
        "check_sender_access",
        "check_policy_service",
        "reject_rbl_client",
        "permit",
        "reject",
    }
)
RELAY_RESTRICTIONS: tuple[str, ...] = (
    "permit_mynetworks",
    "permit_sasl_authenticated",
    "reject_unauth_destination",
)
SUBMISSION_RELAY_RESTRICTIONS: tuple[str, ...] = ("permit_sasl_authenticated", "reject")
RECIPIENT_RESTRICTIONS: tuple[str, ...] = (
    "check_recipient_access texthash:$config_directory/recipient_access",
)

REFUSE_MAILBOX = "550 5.1.1 Mailbox disabled"
REFUSE_DOMAIN = "550 5.1.2 Domain disabled"
REFUSE_ALIAS = "550 5.1.1 Every destination of this alias is disabled"
NOLOGIN = "nologin reason=disabled"

# Dovecot checks login and LMTP user names against this set (its default lacks most atext).
# Dovecot expands %variables in passwd-file extra fields, not in the user or home fields, and
# the extra fields never carry user input, so "%" is safe here.
USERNAME_CHARS = string.ascii_letters + string.digits + ".-_@!#$%&'*+=?^`{|}~"

DkimKey = tuple[str, str, str]  # (domain, selector, absolute key path)


class SigningKey(msgspec.Struct, frozen=True, kw_only=True):
    """A DKIM key the agent writes (decrypted from its event by the caller)."""

    domain: str
    selector: str
    private_pem: str


class TlsBundle(msgspec.Struct, frozen=True, kw_only=True):
    """The certificate the mail host presents: PEMs the agent writes, or the files of
    someone else (certbot) used where they are."""

    hostname: str
    chain_pem: str = ""
    key_pem: str = ""
    cert_path: str = ""
    key_path: str = ""


CIPHERS = {"high": "HIGH:!aNULL:!MD5:!3DES", "medium": "MEDIUM:HIGH:!aNULL:!MD5"}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space
_SCHEME_HASH = re.compile(r"^\{[A-Z0-9.-]+\}[\x21-\x39\x3b-\x7e]+$")  # printable, no ":"
_PATH = re.compile(r"^/[A-Za-z0-9/._@+=-]*$")
_SELECTOR = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PEM = re.compile(r"^-----BEGIN [A-Z ]+-----\n[A-Za-z0-9+/=\n]+-----END [A-Z ]+-----\n?$")


class RenderError(ValueError):
    """A value that cannot be put into a config line safely."""


def _fail(what: str, value: object) -> RenderError:
    return RenderError(f"refusing to render {what}: {value!r}")


def domain_name(name: str) -> str:
    if not isinstance(name, str) or not _DNS.match(name):
        raise _fail("domain name", name)
    return name


def address(addr: str, what: str = "address") -> str:
    """local@domain: printable ASCII, no whitespace, no ":" or ",", exactly one @."""
    if not isinstance(addr, str) or not _TOKEN.match(addr):
        raise _fail(what, addr)
    local, at, domain = addr.rpartition("@")
    if not at or not local or "@" in local or ":" in addr or "," in addr:
        raise _fail(what, addr)
    domain_name(domain)
    return addr


def map_key(key: str) -> str:
    """Postfix ignores a line starting with "#" and continues one starting with whitespace."""
    if not _TOKEN.match(key) or key.startswith("#"):
        raise _fail("map key", key)
    return key


def path(value: Path | str, what: str = "path") -> str:
    """Paths go into main.cf (where $ expands), dovecot.conf and passwd-file lines."""
    text = str(value)
    if not _PATH.match(text) or "/../" in text + "/" or "/./" in text + "/":
        raise _fail(what, text)
    return text


def number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(what, value)
    return value


def port(value: Any, what: str) -> int:
    if number(value, what) > 65535:
        raise _fail(what, value)
    return int(value)


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _fail("IP address", value) from None


def networks(value: str) -> str:
    """CIDRs in Postfix style ("[::1]/128" for IPv6)."""
    out = []
    for token in value.replace(",", " ").split():
        try:
            ipaddress.ip_network(token.replace("[", "").replace("]", ""), strict=False)
        except ValueError:
            raise _fail("network", token) from None
        if not _TOKEN.match(token):
            raise _fail("network", token)
        out.append(token)
    return ", ".join(out)


def restrictions(items: Iterable[str]) -> str:
    for item in items:
        name = item.split()[0]
        if name not in ALLOWED_RESTRICTIONS:
            raise _fail("restriction", name)
    return ", ".join(items)


def password_hash(value: str) -> str:
    if not isinstance(value, str) or not _SCHEME_HASH.match(value):
        shown = value[:24] if isinstance(value, str) else value  # never the whole hash
        raise _fail("password hash (needs {SCHEME}, no ':' or whitespace)", shown)
    return value


def _component(name: str, kind: str) -> str:
    """A maildir path component (the passwd-file home is mail_root/domain/local)."""
    try:
        return check_component(name, kind)
    except UnsafePath as exc:
        raise RenderError(f"refusing to render a mailbox home: {exc}") from None


def passwd_user(addr: str) -> str:
    r"""Dovecot backslash-escapes ' " and \ in %u before a passwd-file lookup, so the key is
    written escaped too: o'neil@ is looked up (and must be stored) as o\'neil@."""
    return re.sub(r"""(['"\\])""", r"\\\1", addr)


def transport_name(addr: str) -> str:
    return "out_" + re.sub(r"[^0-9a-f]", "_", addr.lower())


def _check_layout(layout: Layout) -> None:
    for what in ("root", "mail_root"):
        path(getattr(layout, what), what)
    domain_name(layout.hostname)
    if not re.match(r"^[a-z0-9-]{1,32}$", layout.instance):
        raise _fail("instance name", layout.instance)
    ip(layout.listen)
    for name in ("smtp_port", "submission_port", "imap_port", "pop3_port", "milter_port"):
        port(getattr(layout, name), name)
    number(layout.vmail_uid, "vmail_uid")
    number(layout.vmail_gid, "vmail_gid")


def _maps(state: MailState, domains: dict[str, Domain]) -> dict[str, list[tuple[str, str]]]:
    virtual_domains = [(map_key(domain_name(d)), "OK") for d in sorted(domains)]
    mailboxes = []
    identity: dict[str, list[str]] = {}
    for mb in state.mailboxes:
        addr = address(mb.address)
        if addr != f"{mb.local}@{mb.domain}":
            raise _fail("mailbox address (local@domain mismatch)", addr)
        _component(mb.domain, "domain")
        _component(mb.local, "local")
        mailboxes.append((map_key(addr), f"{mb.domain}/{mb.local}/"))
        # Identity line: a catch-all must never swallow mail for an existing mailbox.
        identity[addr] = [addr]
    aliases: dict[str, list[str]] = dict(identity)
    # Mail must not reach a disabled mailbox through an alias either: such destinations are
    # left out, and an alias left with none is refused at RCPT like the mailbox itself.
    disabled = {
        mb.address
        for mb in state.mailboxes
        if not mb.active or (mb.domain in domains and not domains[mb.domain].active)
    }
    dead_aliases = []
    for alias in state.aliases:
        source = alias.source
        if source.startswith("@"):
            domain_name(source[1:])
        else:
            address(source, "alias source")
        targets = [address(dest, "alias destination") for dest in alias.destination]
        if not targets:
            raise _fail("alias without destination", source)
        targets = [t for t in targets if t not in disabled]
        if not targets:
            if not source.startswith("@") and source not in aliases:
                dead_aliases.append(source)
            continue
        merged = aliases.get(source, [])
        aliases[map_key(source)] = merged + [t for t in targets if t not in merged]
    refusals = []
    for name, domain in sorted(domains.items()):
        if not domain.active:
            refusals.append((map_key(name), REFUSE_DOMAIN))
    for mb in state.mailboxes:
        # A mailbox of an inactive domain is already refused by its domain's line.
        if not mb.active and mb.domain in domains and domains[mb.domain].active:
            refusals.append((map_key(mb.address), REFUSE_MAILBOX))
    for source in dead_aliases:
        if source not in aliases and source.rpartition("@")[2] not in {
            n for n, d in domains.items() if not d.active
        }:
            refusals.append((map_key(source), REFUSE_ALIAS))
    senders = [
        (map_key("@" + name), transport_name(ip(d.outgoing_ip)) + ":")
        for name, d in sorted(domains.items())
        if d.outgoing_ip
    ]
    whitelist_senders = []
    for entry_type, value in state.whitelist:
        if entry_type == "email":
            whitelist_senders.append((map_key(address(value, "whitelist address")), "OK"))
        elif entry_type == "domain":
            name = domain_name(value)
            whitelist_senders += [(map_key(name), "OK"), (map_key("." + name), "OK")]
    return {
        "whitelist_senders": sorted(set(whitelist_senders)),
        "virtual_domains": virtual_domains,
        "virtual_mailboxes": sorted(mailboxes),
        "virtual_aliases": sorted((k, ", ".join(v)) for k, v in aliases.items()),
        "recipient_access": sorted(refusals),
        "sender_transport": senders,
    }


MAP_ABOUT = {
    "whitelist_senders": "Whitelisted senders (address, domain, subdomains): no DNSBL check.",
    "whitelist_clients": "Whitelisted client networks: no DNSBL check.",
    "virtual_domains": "Every managed domain, active or not (inactive ones are refused at RCPT).",
    "virtual_mailboxes": "Every mailbox; the value is unused with LMTP delivery.",
    "virtual_aliases": "Aliases, catch-alls, and one identity line per mailbox.",
    "recipient_access": "Refused at RCPT: inactive domains, mailboxes, and aliases to them.",
    "sender_transport": "Domains with their own outgoing IP: their smtp transport in master.cf.",
}


def _transports(domains: dict[str, Domain]) -> list[dict[str, Any]]:
    by_ip: dict[str, list[str]] = {}
    for name, d in sorted(domains.items()):
        if d.outgoing_ip:
            by_ip.setdefault(ip(d.outgoing_ip), []).append(name)
    return [
        {
            "name": transport_name(addr),
            "ip": addr,
            "domains": names,
            "bind_param": "smtp_bind_address6" if ":" in addr else "smtp_bind_address",
        }
        for addr, names in sorted(by_ip.items())
    ]


def _passwd(state: MailState, layout: Layout, domains: dict[str, Domain]) -> list[dict[str, Any]]:
    lines = []
    mail_root = path(layout.mail_root, "mail_root")
    for mb in sorted(state.mailboxes, key=lambda m: m.address):
        addr = address(mb.address)
        _component(mb.domain, "domain")
        _component(mb.local, "local")
        extra = []
        quota = number(mb.quota_bytes, "quota_bytes")
        if quota:
            extra.append(f"userdb_quota_rule=*:bytes={quota}")
        domain = domains.get(mb.domain)
        if not mb.active or domain is None or not domain.active:
            extra.append(NOLOGIN)
        lines.append(
            {
                "user": passwd_user(addr),
                "password": password_hash(mb.password_hash),
                "uid": number(layout.vmail_uid, "vmail_uid"),
                "gid": number(layout.vmail_gid, "vmail_gid"),
                "home": f"{mail_root}/{mb.domain}/{mb.local}",
                "extra": " ".join(extra),
            }
        )
    return lines


def _dkim(keys: Sequence[DkimKey]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    key_table, signing_table = [], []
    for domain, selector, key_path in sorted(keys):
        domain_name(domain)
        if not _SELECTOR.match(selector):
            raise _fail("DKIM selector", selector)
        name = f"{selector}._domainkey.{domain}"
        key_table.append((name, f"{domain}:{selector}:{path(key_path, 'DKIM key path')}"))
        signing_table.append((f"*@{domain}", name))
    return key_table, signing_table


def pem(text: str, what: str) -> str:
    """A PEM block sequence as written to a key or certificate file."""
    blocks = re.findall(
        r"-----BEGIN [A-Z ]+-----\n[A-Za-z0-9+/=\n]+?-----END [A-Z ]+-----\n?", text
    )
    if not blocks or "".join(blocks) != text or not all(_PEM.match(b) for b in blocks):
        raise _fail(what, "(not PEM)")
    return text if text.endswith("\n") else text + "\n"


def _tls(tls: TlsBundle | None, layout: Layout, files: dict[str, str]) -> dict[str, str] | None:
    """The certificate and key paths the daemons use; the PEMs go into `files`."""
    if tls is None:
        return None
    if tls.chain_pem:
        chain_rel, key_rel = tls_files(domain_name(tls.hostname))
        files[chain_rel] = pem(tls.chain_pem, "TLS certificate")
        files[key_rel] = pem(tls.key_pem, "TLS key")
        return {
            "cert": path(layout.live(chain_rel), "TLS path"),
            "key": path(layout.live(key_rel), "TLS path"),
        }
    return {"cert": path(tls.cert_path, "TLS path"), "key": path(tls.key_path, "TLS path")}


def _cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _fail("whitelist network", value) from None
    return str(net)


def _denied(state: MailState, domains: dict[str, Domain]) -> dict[str, list[str]]:
    """Mailboxes refused per login service: enabled_imap / enabled_pop3 false; enabled_smtp
    false refuses SASL (Postfix asks as "smtp"), so such a mailbox cannot submit at all."""
    out: dict[str, list[str]] = {}
    for mb in state.mailboxes:
        if mb.domain not in domains:
            continue
        eff = mb.effective
        user = passwd_user(address(mb.address))
        for service, key in (("imap", "enabled_imap"), ("pop3", "enabled_pop3")):
            if eff.get(key) is False:
                out.setdefault(service, []).append(user)
        if eff.get("enabled_smtp") is False:
            out.setdefault("smtp", []).append(user)
            out.setdefault("submission", []).append(user)
    return {k: sorted(v) for k, v in out.items()}


def _restrictions(glob: dict[str, Any], layout: Layout) -> dict[str, str]:
    """Recipient checks (refusals, the policy service, DNSBL after the whitelist), and the
    policy hooks for submission; every name from the fixed list."""
    policy = ""
    submission_policy = ""
    if layout.policy_port:
        base = f"inet:127.0.0.1:{port(layout.policy_port, 'policy_port')}, default_action=DUNNO"
        policy = f"check_policy_service {{ {base}, policy_context=inbound }}"
        submission_policy = f"check_policy_service {{ {base}, policy_context=submission }}"
    items = list(RECIPIENT_RESTRICTIONS)
    if policy:
        items.append(policy)
    zones = str(glob.get("dnsbl_zones") or "").replace(",", " ").split()
    if glob.get("dnsbl_enabled") and zones:
        items += [
            "check_client_access cidr:$config_directory/whitelist_clients",
            "check_sender_access texthash:$config_directory/whitelist_senders",
        ]
        items += [f"reject_rbl_client {domain_name(z.lower())}" for z in zones]
    return {
        "recipient": restrictions(items),
        "policy": policy,
        "submission_policy": submission_policy,
    }


def render(
    state: MailState,
    layout: Layout,
    dkim_keys: Sequence[DkimKey] = (),
    *,
    signing: Sequence[SigningKey] = (),
    tls: TlsBundle | None = None,
) -> dict[str, str]:
    """Every file of the mail stack, keyed by its path relative to layout.root. DKIM keys in
    `signing` and a TLS bundle with PEMs are written by the agent too (its owned trees)."""
    _check_layout(layout)
    files: dict[str, str] = {}
    all_keys = list(dkim_keys)
    for key in signing:
        if not _SELECTOR.match(key.selector):
            raise _fail("DKIM selector", key.selector)
        rel = dkim_key_file(domain_name(key.domain), key.selector)
        files[rel] = pem(key.private_pem, "DKIM key")
        all_keys.append((key.domain, key.selector, str(layout.live(rel))))
    tls_paths = _tls(tls, layout, files)
    milter = layout.dkim or bool(all_keys)
    domains = {domain_name(d.name): d for d in state.domains}
    glob = {**msgspec.to_builtins(GlobalConfig()), **state.global_config}
    ipv6_out = any(":" in ip(d.outgoing_ip) for d in domains.values() if d.outgoing_ip)
    tls_min = str(glob.get("tls_min_version", "TLSv1.2"))
    if tls_min not in ("TLSv1.2", "TLSv1.3"):
        raise _fail("tls_min_version", tls_min)
    cipher_policy = str(glob.get("cipher_policy", "high"))
    if cipher_policy not in CIPHERS:
        raise _fail("cipher_policy", cipher_policy)
    checks = _restrictions(glob, layout)
    files[MAIN_CF] = _env.get_template("main.cf.j2").render(
        layout=layout,
        milter=milter,
        tls=tls_paths,
        tls_min=tls_min,
        cipher_policy=cipher_policy,
        inet_protocols="ipv4" if layout.sandbox or not ipv6_out else "all",
        mynetworks=networks(str(glob["relay_networks"])),
        message_size_limit=number(glob["message_size_limit"], "message_size_limit"),
        relay_restrictions=restrictions(RELAY_RESTRICTIONS),
        recipient_restrictions=checks["recipient"],
        policy=checks["policy"],
        submission_policy=checks["submission_policy"],
        max_connections=number(glob["max_smtpd_connections"], "max_smtpd_connections"),
        max_rate=number(glob["max_smtpd_rate_per_min"], "max_smtpd_rate_per_min"),
    )
    files[MASTER_CF] = _env.get_template("master.cf.j2").render(
        layout=layout,
        tls=tls_paths,
        policy=checks["policy"],
        transports=_transports(domains),
        submission_restrictions=restrictions(SUBMISSION_RELAY_RESTRICTIONS).replace(" ", ""),
    )
    map_template = _env.get_template("map.j2")
    for name, entries in _maps(state, domains).items():
        files[f"{POSTFIX_DIR}/{name}"] = map_template.render(about=MAP_ABOUT[name], entries=entries)
    clients = sorted(
        {_cidr(value) for entry_type, value in state.whitelist if entry_type in ("ip", "cidr")}
    )
    files[f"{POSTFIX_DIR}/whitelist_clients"] = map_template.render(
        about=MAP_ABOUT["whitelist_clients"], entries=[(c, "OK") for c in clients]
    )
    denied = _denied(state, domains)
    for service in DENY_SERVICES:
        files[f"{DOVECOT_DIR}/deny-{service}"] = _env.get_template("deny.j2").render(
            service=service, users=denied.get(service, [])
        )
    files[DOVECOT_CONF] = _env.get_template("dovecot.conf.j2").render(
        layout=layout,
        special_use=SPECIAL_USE,
        username_chars=USERNAME_CHARS,
        tls=tls_paths,
        tls_min=tls_min,
        ciphers=CIPHERS[cipher_policy],
    )
    if layout.sieve:
        from workers.reconcile import sieve  # it builds on this module's checks

        files[DOVECOT_CONF] += "\n" + sieve.dovecot_settings(
            str(layout.sieve_dir), "127.0.0.1", layout.smtp_port
        )
    files[PASSWD] = _env.get_template("passwd.j2").render(lines=_passwd(state, layout, domains))
    key_table, signing_table = _dkim(all_keys)
    files[OPENDKIM_CONF] = _env.get_template("opendkim.conf.j2").render(
        layout=layout,
        key_table=layout.live(KEY_TABLE),
        signing_table=layout.live(SIGNING_TABLE),
    )
    files[KEY_TABLE] = map_template.render(about="DKIM keys.", entries=key_table)
    files[SIGNING_TABLE] = map_template.render(about="DKIM signing.", entries=signing_table)
    for name, text in files.items():
        if "\x00" in text or "\r" in text:
            raise _fail(f"control character in {name}", name)
    return files
