"""Subjects of the log: one per aggregate, keyed by its natural key.

Putting the natural key (domain name, address) in the subject lets JetStream's expected last
subject sequence enforce uniqueness atomically, whichever API process appends.
"""

from urllib.parse import unquote

STREAM = "MAILPANEL"
PREFIX = "mp"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


_ESCAPE = {i: (chr(i) if chr(i) in _SAFE else f"%{i:02X}") for i in range(128)}


def encode_key(key: str) -> str:
    """Escape a natural key into one subject token: keeps [A-Za-z0-9-_], the rest as %XX
    (UTF-8 bytes for non-ASCII)."""
    if key.isascii():
        return key.translate(_ESCAPE) or "%"
    return "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in key.encode()) or "%"


def decode_key(token: str) -> str:
    return unquote(token)


def domain_subject(name: str, prefix: str = PREFIX) -> str:
    return f"{prefix}.domain.{encode_key(name)}"


def address_subject(address: str, prefix: str = PREFIX) -> str:
    """Mailboxes and aliases share one subject per address: an address is one or the other."""
    return f"{prefix}.addr.{encode_key(address)}"


def token_subject(name: str, prefix: str = PREFIX) -> str:
    """Token names are unique among live tokens: the name is the key."""
    return f"{prefix}.token.{encode_key(name)}"


def security_subject(prefix: str = PREFIX) -> str:
    return f"{prefix}.security.settings"


def config_subject(tier: str, prefix: str = PREFIX) -> str:
    """One subject per tier: global, domain_defaults, mailbox_defaults."""
    return f"{prefix}.config.{tier}"


def whitelist_subject(entry_type: str, value: str, prefix: str = PREFIX) -> str:
    return f"{prefix}.whitelist.{encode_key(entry_type + ':' + value)}"


def agent_subject(host: str, prefix: str = PREFIX) -> str:
    """Each reconcile agent reports on its own subject."""
    return f"{prefix}.agent.{encode_key(host)}"


def dkim_subject(domain: str, prefix: str = PREFIX) -> str:
    """Every selector of a domain on one subject: rotation decides over all of them."""
    return f"{prefix}.dkim.{encode_key(domain)}"


def tls_subject(hostname: str, prefix: str = PREFIX) -> str:
    """One certificate record per host name."""
    return f"{prefix}.tls.{encode_key(hostname)}"
