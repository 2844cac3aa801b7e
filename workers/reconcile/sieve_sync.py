"""Write each mailbox's Sieve script where Dovecot's LMTP finds it, and remove stale ones.

Not through apply(): a script must carry a CURRENT mtime (Dovecot keeps using its compiled
binary while that is newer than the script, so a backdated script would be ignored), and the
compiled binary in the mailbox home is removed after each change. Scripts are root:vmail 0640
in root:vmail 0750 directories: the vmail user reads them and can change nothing.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from workers.reconcile import sieve
from workers.reconcile.maildirs import UnsafePath, home_path
from workers.reconcile.render import RenderError
from workers.reconcile.state import Mailbox


def _chown(path: Path, gid: int, mode: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
    os.chmod(path, mode)


def _drop_binary(mail_root: Path, domain: str, local: str) -> None:
    try:
        binary = home_path(mail_root, domain, local) / ".sieve-bin" / f"{local}.svbin"
    except UnsafePath:
        return
    binary.unlink(missing_ok=True)


def sync(sieve_dir: Path, mail_root: Path, mailboxes: Iterable[Mailbox], gid: int) -> list[str]:
    """Make sieve_dir hold exactly the scripts the mailboxes' effective settings call for."""
    lines: list[str] = []
    wanted: dict[str, tuple[str, Mailbox]] = {}
    for mb in mailboxes:
        if not mb.active:
            continue
        try:
            text = sieve.script(mb.address, mb.effective)
            if text is not None:
                wanted[sieve.script_file(mb.domain, mb.local)] = (text, mb)
        except RenderError as exc:  # one bad mailbox must not stop the others' scripts
            lines.append(f"sieve: no script for {mb.address}: {exc}")
    sieve_dir.mkdir(parents=True, exist_ok=True)
    _chown(sieve_dir, gid, 0o750)
    for rel, (text, mb) in sorted(wanted.items()):
        target = sieve_dir / rel
        try:
            if target.read_text() == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        target.parent.mkdir(exist_ok=True)
        _chown(target.parent, gid, 0o750)
        staged = target.with_name(f".{target.name}.new")
        staged.write_text(text)
        _chown(staged, gid, 0o640)
        os.replace(staged, target)
        _drop_binary(mail_root, mb.domain, mb.local)
        lines.append(f"sieve: wrote {rel}")
    for path in sorted(sieve_dir.glob("*/*.sieve")):
        rel = f"{path.parent.name}/{path.name}"
        if rel not in wanted:
            path.unlink()
            _drop_binary(mail_root, path.parent.name, path.name.removesuffix(".sieve"))
            lines.append(f"sieve: removed {rel}")
    return lines
