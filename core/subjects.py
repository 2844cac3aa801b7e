"""Subjects of the log: one per aggregate, keyed by its natural key.

Putting the natural key (domain name, address) in the subject lets JetStream's expected last
subject sequence enforce uniqueness atomically, whichever API process appends.
"""

from urllib.parse import unquote

STREAM = "MAILPANEL"
PREFIX = "mp"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def encode_key(key: str) -> str:
    """Escape a natural key into one subject token: keeps [A-Za-z0-9-_], the rest as %XX."""
    out: list[str] = []
    for byte in key.encode():
        ch = chr(byte)
        out.append(ch if ch in _SAFE else f"%{byte:02X}")
    return "".join(out) or "%"


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
