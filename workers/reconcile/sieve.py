"""Per-mailbox Sieve scripts (Pigeonhole, run by Dovecot LMTP) and the dovecot.conf lines that
run them: auto junk, vacation replies and forwarding. Pure functions of their arguments.

Same rule as render.py: no value reaches a script line unchecked. Addresses, the spam header
name and the threshold are re-checked here; a value that fails raises RenderError (a
ValueError) and nothing is written.

A script does, in this order (and only the parts that are enabled):

1. auto junk: a message whose spam score reaches auto_junk_threshold is filed into "Junk" and
   the script stops, so spam triggers neither a vacation reply nor a forward;
2. vacation: one reply per sender and day, never to mailing lists or bulk/automatic mail;
3. forwarding: `redirect` to each forward_to address, with `:copy` when forward_keep_copy
   (the message is also kept in INBOX), else without (it is not kept).

Where the agent writes the scripts and how Dovecot finds them: see `dovecot_settings`.
"""

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from core.config import MailboxDefaults
from workers.reconcile.maildirs import UnsafePath, check_component
from workers.reconcile.render import RenderError, address, domain_name, path, port

# Dovecot refuses more redirects per delivery than sieve_max_redirects (default 4) with a
# runtime error, and then keeps the message without forwarding it at all; dovecot_settings
# raises the limit to this, and script() refuses longer lists.
MAX_FORWARDS = 16
# Pigeonhole's sieve_max_script_size default: larger scripts do not compile.
MAX_SCRIPT_BYTES = 1024 * 1024
JUNK_FOLDER = "Junk"
VACATION_SUBJECT = "Out of office"
VACATION_DAYS = 1
SCRIPT_SUFFIX = ".sieve"
# Where Dovecot keeps the compiled binaries and the per-user log: the home (writable by vmail),
# outside ~/Maildir (a dot-directory there would be a Maildir++ folder).
BIN_DIR = "~/.sieve-bin"
USER_LOG = "~/.sieve.log"

_DEFAULTS: dict[str, Any] = msgspec.to_builtins(MailboxDefaults())
# RFC 5322 dot-atom local part: atext only, so no quotes, backslashes, spaces or controls.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,75}")
# Printable ASCII without space. Always fullmatch: "$" would also match before a final "\n".
_TOKEN = re.compile(r"[\x21-\x7e]+")
# C0 controls and DEL, less TAB and LF (CR is normalised to LF before the check).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SEPARATORS = re.compile(r"[,\s]+")


def _fail(what: str, value: object) -> RenderError:
    return RenderError(f"refusing to render {what} (Sieve): {value!r}")


def quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 2.4.2): backslash and double quote escaped. For
    single-line text only; see `string`."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def multiline(text: str) -> str:
    """A Sieve multi-line literal: `text:`, the lines, and a line with a lone ".". A line that
    starts with "." is dot-stuffed (another "." prepended); nothing else is escaped there.
    The value always ends with a newline (a missing final newline is added)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    body = "".join(("." + line if line.startswith(".") else line) + "\n" for line in lines)
    return "text:\n" + body + ".\n"


def string(text: str) -> str:
    """`text` as a Sieve string: quoted when it is one line, a multi-line literal otherwise."""
    return multiline(text) if "\n" in text else quote(text)


def _string_list(items: list[str]) -> str:
    return "[" + ", ".join(quote(item) for item in items) + "]"


def forward_address(addr: str, what: str = "forward_to address") -> str:
    """local@domain with a dot-atom local part and a DNS domain (lowercased)."""
    if not isinstance(addr, str) or not _TOKEN.fullmatch(addr):
        raise _fail(what, addr)
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or len(local) > 64:
        raise _fail(what, addr)
    domain = domain.lower()
    try:
        domain_name(domain)
    except RenderError:
        raise _fail(what, addr) from None
    return address(f"{local}@{domain}", what)


def forward_targets(forward_to: str, mailbox_address: str) -> tuple[list[str], bool]:
    """(destinations in the given order, duplicates and the mailbox itself dropped; whether
    the mailbox itself was listed). Comma and/or whitespace separate the addresses."""
    own = mailbox_address.lower()
    seen: set[str] = set()
    targets: list[str] = []
    listed_self = False
    for token in _SEPARATORS.split(forward_to):
        if not token:
            continue
        addr = forward_address(token)
        key = addr.lower()
        if key == own:
            listed_self = True
        elif key not in seen:
            seen.add(key)
            targets.append(addr)
    if len(targets) > MAX_FORWARDS:
        raise _fail(f"more than {MAX_FORWARDS} forward_to addresses", len(targets))
    return targets, listed_self


def vacation_text(message: str) -> str:
    """The reply body: CRLF/CR become LF; other control characters are refused."""
    if not isinstance(message, str):
        raise _fail("vacation_message", message)
    text = message.replace("\r\n", "\n").replace("\r", "\n")
    if _CONTROL.search(text):
        raise _fail("vacation_message (control character)", text[:40])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("vacation_message (not UTF-8)", text[:40]) from None
    return text


def junk_level(threshold: float) -> int:
    """The integer the spam score is compared with: ceil(threshold).

    Sieve's "i;ascii-numeric" comparator (RFC 4790) compares the leading run of digits only:
    "7.9" counts as 7, and a value that does not start with a digit ("-1.5", "") counts as
    positive infinity. So the script compares the integer part of the score with ceil(threshold)
    and first checks that the header value starts with a digit (else every negative score
    would be junk). For non-negative scores int(score) >= ceil(t) holds exactly when
    score >= ceil(t): a message is never filed below the threshold, and one scoring in
    [t, ceil(t)) stays in INBOX. Exact for whole-number thresholds (the default is 7.0).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise _fail("auto_junk_threshold", threshold)
    if not math.isfinite(threshold) or threshold < 0:
        raise _fail("auto_junk_threshold", threshold)
    return math.ceil(threshold)


def _field(effective: Mapping[str, Any], name: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    """A setting of the right type; a missing or null one takes the MailboxDefaults value."""
    value = effective.get(name)
    if value is None:
        value = _DEFAULTS[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _fail(name, value)
    return value


def script(
    mailbox_address: str, effective: Mapping[str, Any], spam_header: str = "X-Spam-Score"
) -> str | None:
    """The Sieve script of a mailbox from its effective settings (missing or null values take
    the MailboxDefaults), or None when no feature is enabled (then no script file may exist:
    delete it). Deterministic: the same input gives the same text.

    Raises RenderError (a ValueError) for anything unsafe: an address that is not a plain
    dot-atom@domain (quotes, backslashes, spaces, control characters), more than MAX_FORWARDS
    destinations, a bad header name or threshold, control characters in the vacation text."""
    own = forward_address(mailbox_address, "mailbox address")
    if not isinstance(spam_header, str) or not _FIELD_NAME.fullmatch(spam_header):
        raise _fail("spam header name", spam_header)
    level = junk_level(_field(effective, "auto_junk_threshold", (int, float)))
    message = ""
    if _field(effective, "vacation_enabled", bool):
        message = vacation_text(_field(effective, "vacation_message", str))
    vacation = message.strip() != ""
    targets, listed_self = forward_targets(_field(effective, "forward_to", str), own)
    # Forwarding to the mailbox itself means "deliver here too": that is the kept copy.
    copy = _field(effective, "forward_keep_copy", bool) or listed_self
    if not level and not vacation and not targets:
        return None

    extensions: list[str] = []
    body: list[str] = []
    if level:
        extensions += ["fileinto", "relational", "comparator-i;ascii-numeric"]
        header = quote(spam_header)
        digits = _string_list([f"{d}*" for d in range(10)])
        body += [
            f"# Auto junk: {spam_header} at or above {level} (its integer part; a value that",
            "# does not start with a digit would count as infinity, so it must start with one).",
            f"if allof (header :matches {header} {digits},",
            f'          header :value "ge" :comparator "i;ascii-numeric" {header} "{level}") {{',
            f"  fileinto {quote(JUNK_FOLDER)};",
            "  stop;",
            "}",
        ]
    if vacation:
        extensions.append("vacation")
        body += [
            "# Vacation: never to mailing lists, bulk or automatic mail.",
            'if not anyof (exists "list-id",',
            '              exists "list-unsubscribe",',
            '              header :contains "precedence" ["bulk", "list", "junk"],',
            '              header :matches "auto-submitted" "auto-*") {',
            f"  vacation :days {VACATION_DAYS} :subject {quote(VACATION_SUBJECT)}"
            f" :addresses {_string_list([own])}",
        ]
        # A multi-line literal ends with its "." line; the ";" then follows on a line of its own.
        body += [f"    {string(message)};", "}"]
    if targets:
        if copy:
            extensions.append("copy")
            body.append("# Forwarding; the message is kept here too.")
            body += [f"redirect :copy {quote(addr)};" for addr in targets]
        else:
            body.append("# Forwarding; the message is not kept here.")
            body += [f"redirect {quote(addr)};" for addr in targets]

    head = [f"# Generated by mailpanel for {own}: do not edit, changes are overwritten."]
    if extensions:  # plain redirect needs none
        head.append(f"require {_string_list(extensions)};")
    text = "\n".join([*head, "", *body]) + "\n"
    if len(text.encode("utf-8")) > MAX_SCRIPT_BYTES:
        raise _fail("a script larger than sieve_max_script_size", len(text))
    return text


def script_file(domain: str, local: str) -> str:
    """Where a mailbox's script goes, relative to the sieve directory: <domain>/<local>.sieve
    (what `sieve = file:<sieve_dir>/%Ld/%Ln.sieve` finds)."""
    try:
        return f"{check_component(domain, 'domain')}/{check_component(local, 'local')}.sieve"
    except UnsafePath as exc:
        raise RenderError(f"refusing a Sieve script path: {exc}") from None


def submission_host(host: str) -> str:
    """An IP address (IPv6 in brackets, as Dovecot's host:port parser wants it) or a DNS name."""
    if not isinstance(host, str) or not _TOKEN.fullmatch(host):
        raise _fail("smtp host", host)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        try:
            return domain_name(host)
        except RenderError:
            raise _fail("smtp host", host) from None
    return f"[{addr}]" if addr.version == 6 else str(addr)


def dovecot_settings(sieve_dir: str, smtp_host: str, smtp_port: int) -> str:
    """Lines to append to dovecot.conf (after the rendered file: the `protocol lmtp` section
    adds to its mail_plugins) so that LMTP runs each mailbox's script.

    - The script is `<sieve_dir>/<domain>/<local>.sieve` (`script_file`), found through
      `%Ld/%Ln` (the lowercased recipient, as the scripts are named). A single-file location is
      read-only by design (no ManageSieve). A missing file means no script: plain delivery.
    - vmail only reads the script, so `bindir=` keeps the compiled binary in the mailbox home
      (~/.sieve-bin/<local>.svbin) and `sieve_user_log` puts compile errors there too.
    - Dovecot reuses that binary while it is newer than the script (mtime): a script must be
      written with a current mtime (never backdated), and the binary is best deleted after.
    - Redirects and vacation replies go by SMTP to smtp_host:smtp_port (the local Postfix, which
      must relay for the client address Dovecot connects from).
    - Redirects use the mailbox address as envelope sender (SPF of the forwarding host then
      passes; bounces of a forward reach the mailbox owner), vacation replies too.
    """
    if not isinstance(sieve_dir, str) or not _TOKEN.fullmatch(sieve_dir):
        raise _fail("sieve_dir", sieve_dir)
    directory = path(sieve_dir, "sieve_dir").rstrip("/")
    if not directory:
        raise _fail("sieve_dir", sieve_dir)
    if smtp_port == 0:
        raise _fail("smtp_port", smtp_port)
    return "\n".join(
        [
            "# Sieve (Pigeonhole): per-mailbox scripts written by mailpanel.",
            "protocol lmtp {",
            "  mail_plugins = $mail_plugins sieve",
            "}",
            "plugin {",
            f"  sieve = file:{directory}/%Ld/%Ln{SCRIPT_SUFFIX};bindir={BIN_DIR}",
            f"  sieve_user_log = {USER_LOG}",
            f"  sieve_max_redirects = {MAX_FORWARDS}",
            "  sieve_vacation_send_from_recipient = yes",
            "  sieve_redirect_envelope_from = recipient",
            "}",
            f"submission_host = {submission_host(smtp_host)}:{port(smtp_port, 'smtp_port')}",
            "",
        ]
    )
