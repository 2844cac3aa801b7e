"""Forms for the API's msgspec input structs: one field per struct field, its input kind taken
from the field's type (checkbox, tri-state select for a nullable bool, choices for a Literal,
number, text), and the posted strings turned back into that struct. The struct and the command
behind the API handler decide what is valid; this module only reads the inputs."""

from typing import Any

import msgspec
from msgspec import inspect as mi

from api.ui.web import FormError

SIZE_SUFFIXES = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
LABELS = {
    "dkim_enabled": "DKIM signing",
    "spf_policy": "SPF policy",
    "dmarc_policy": "DMARC policy",
    "clamav_action": "ClamAV action",
    "dnsbl_enabled": "DNSBL checks",
    "dnsbl_zones": "DNSBL zones",
    "enabled_smtp": "SMTP (sending) enabled",
    "enabled_imap": "IMAP enabled",
    "enabled_pop3": "POP3 enabled",
    "require_tls_inbound": "Require TLS inbound",
    "require_tls_client": "Require TLS from clients",
    "tls_min_version": "Minimum TLS version",
    "max_smtpd_connections": "Max SMTP connections",
    "max_smtpd_rate_per_min": "Max SMTP connections per minute",
}


class Field(msgspec.Struct, kw_only=True):
    name: str
    label: str
    kind: str  # checkbox | tristate | select | int | float | text | textarea
    nullable: bool = False
    options: list[str] = []
    sized: bool = False  # a byte count: K/M/G suffixes accepted
    hint: str = ""


def label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def _sized(name: str) -> bool:
    return name.endswith(("_bytes", "size_limit"))


def fields_of(kind: type[Any], textareas: tuple[str, ...] = ()) -> list[Field]:
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    out = []
    for f in info.fields:
        if f.name == "updated_at":
            continue
        t, nullable = f.type, False
        if isinstance(t, mi.UnionType):
            members = [m for m in t.types if not isinstance(m, mi.NoneType)]
            nullable = len(members) < len(t.types)
            t = members[0]
        if isinstance(t, mi.BoolType):
            kind_name = "tristate" if nullable else "checkbox"
            options: list[str] = []
        elif isinstance(t, mi.LiteralType):
            kind_name, options = "select", [str(v) for v in t.values]
        elif isinstance(t, mi.IntType):
            kind_name, options = "int", []
        elif isinstance(t, mi.FloatType):
            kind_name, options = "float", []
        else:
            kind_name, options = ("textarea" if f.name in textareas else "text"), []
        sized = kind_name == "int" and _sized(f.name)
        hint = "bytes; K, M, G accepted; 0 = unlimited" if sized else ""
        if f.name in ("max_mailboxes", "max_aliases"):
            hint = "0 = no cap"
        out.append(
            Field(
                name=f.name,
                label=label(f.name),
                kind=kind_name,
                nullable=nullable,
                options=options,
                sized=sized,
                hint=hint,
            )
        )
    return out


def shown(value: Any) -> str:
    """A stored value as the text of its input."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def values_of(struct: Any) -> dict[str, str]:
    return {k: shown(v) for k, v in msgspec.structs.asdict(struct).items()}


def number(field: Field, raw: str) -> int | float:
    text = raw.strip().replace("_", "").replace(" ", "")
    try:
        if field.kind == "float":
            return float(text)
        if field.sized and text and text[-1].lower() in SIZE_SUFFIXES:
            return int(float(text[:-1]) * SIZE_SUFFIXES[text[-1].lower()])
        return int(text)
    except ValueError:
        what = "a number" if field.kind == "float" else "a whole number"
        raise FormError(field.name, f"{field.label} must be {what}") from None


def parse(form: dict[str, Any], fields: list[Field]) -> dict[str, Any]:
    """Posted strings to the values of the struct's fields."""
    out: dict[str, Any] = {}
    for field in fields:
        raw = form.get(field.name)
        raw = raw if isinstance(raw, str) else ""
        if field.kind == "checkbox":
            out[field.name] = raw in ("true", "on", "1")
        elif field.kind == "tristate":
            out[field.name] = None if raw == "" else raw == "true"
        elif field.nullable and raw.strip() == "":
            out[field.name] = None
        elif field.kind in ("int", "float"):
            out[field.name] = number(field, raw)
        else:
            out[field.name] = raw.strip()
    return out


def build(kind: type[Any], form: dict[str, Any], fields: list[Field]) -> Any:
    """The API's input struct from a posted form (its own constraints apply)."""
    return convert(kind, parse(form, fields))


def raw_values(form: dict[str, Any], fields: list[Field]) -> dict[str, str]:
    """The user's input, to put back into a form shown again with its errors."""
    out = {}
    for field in fields:
        raw = form.get(field.name)
        raw = raw if isinstance(raw, str) else ""
        if field.kind == "checkbox":
            out[field.name] = "true" if raw in ("true", "on", "1") else "false"
        else:
            out[field.name] = raw
    return out


def convert(kind: type[Any], data: dict[str, Any]) -> Any:
    """An API input struct from plain values; its constraints refused name the field."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        name = message.rpartition("`$.")[2].rstrip("`") if "`$." in message else ""
        raise FormError(
            name, f"{label(name) if name else 'Input'}: {message.split(' - at ')[0]}"
        ) from None
