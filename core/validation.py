"""Syntax rules that are part of the domain (pure stdlib). Input arrives normalised to
lowercase ASCII (IDNA A-labels) from the command layer."""

import ipaddress
import re

from core.errors import ValidationFailed

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 5322 atext, less "/" (a path separator in maildirs) and with "." handled apart.
_LOCAL_CHARS = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~-]+$")


def check_domain_name(name: str, field: str = "name") -> str:
    """A fully qualified DNS name: two or more labels, letters/digits/hyphens, <= 253 chars."""
    if not name:
        raise ValidationFailed(field, f"{field} is required")
    if len(name) > 253:
        raise ValidationFailed(field, f"{field} is longer than 253 characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise ValidationFailed(field, f"{field} must be a fully qualified domain name")
    for label in labels:
        if not _LABEL.match(label):
            raise ValidationFailed(field, f"{field} is not a valid DNS name: {name!r}")
    if labels[-1].isdigit():
        raise ValidationFailed(field, f"{field} is not a valid DNS name: {name!r}")
    return name


def check_local_part(local: str, field: str = "username") -> str:
    """The seed's username rules (non-empty; no @, /, \\, NUL or ..) plus RFC 5321 limits."""
    if not local:
        raise ValidationFailed(field, f"{field} must be non-empty")
    for bad, label in (("@", "@"), ("/", "/"), ("\\", "\\"), ("\x00", "NUL")):
        if bad in local:
            raise ValidationFailed(field, f"{field} must not contain {label}")
    if ".." in local:
        raise ValidationFailed(field, f"{field} must not contain ..")
    if len(local) > 64:
        raise ValidationFailed(field, f"{field} is longer than 64 characters")
    if local.startswith(".") or local.endswith("."):
        raise ValidationFailed(field, f"{field} must not start or end with a dot")
    if local.startswith("#"):  # a Postfix map line starting with # is a comment
        raise ValidationFailed(field, f"{field} must not start with #")
    if not all(_LOCAL_CHARS.match(part) for part in local.split(".")):
        raise ValidationFailed(field, f"{field} contains characters not allowed in an address")
    return local


def check_ip(value: str, field: str = "outgoing_ip") -> str:
    """An IPv4 or IPv6 address in canonical form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationFailed(field, f"{field} is not a valid IPv4/IPv6 address") from None
