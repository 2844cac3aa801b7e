"""Apply a rendered file set: diff, candidate, validate, atomic swap.

Rules:
- Nothing is written live unless something differs from disk.
- The candidate is the complete file set in a staging dir under the root (same filesystem, so
  each swap is one os.replace); a candidate that fails validation is never swapped in. It is
  kept as ROOT/.candidate-rejected for inspection, and the live files stay as they were.
- Every written file is backdated 3 s: Postfix stalls ~1.8 s on main.cf or a map younger than
  2 s (its "cool-down"), in every program including the smtpd spawned after a reload.
- Modes: passwd-file root:dovecot 0640 (the auth process runs as dovecot), DKIM keys
  opendkim 0600, everything else root 0644.
"""

import grp
import hashlib
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

from workers.reconcile.layout import (
    DOVECOT_DIR,
    KEYS_DIR,
    MAIN_CF,
    MASTER_CF,
    OPENDKIM_DIR,
    PASSWD,
    POSTFIX_DIR,
    Layout,
)
from workers.reconcile.validate import Report, validate_candidate

BACKDATE_S = 3.0
REJECTED = ".candidate-rejected"
DAEMON_OF_DIR = {POSTFIX_DIR: "postfix", DOVECOT_DIR: "dovecot", OPENDKIM_DIR: "opendkim"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_mode(rel: str) -> tuple[int, str | None, str | None]:
    """(mode, owner, group) of a rendered file; None keeps root."""
    if rel == PASSWD:
        return 0o640, None, "dovecot"
    if rel.startswith(KEYS_DIR + "/"):
        return 0o600, "opendkim", "opendkim"
    return 0o644, None, None


def daemon_of(rel: str) -> str:
    for prefix, daemon in DAEMON_OF_DIR.items():
        if rel.startswith(prefix + "/"):
            return daemon
    return "other"


def _check_rel(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative path inside the root: {rel!r}")
    return rel


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    """Numeric ids (-1 = leave); a missing user or group leaves the file root-owned."""
    uid = gid = -1
    if owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            pass
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return uid, gid


def _write(path: Path, text: str, rel: str, mtime: float) -> None:
    mode, owner, group = file_mode(rel)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, *_ids(owner, group))
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(path, (mtime, mtime))


def _fix_mode(path: Path, rel: str) -> None:
    mode, owner, group = file_mode(rel)
    if os.geteuid() == 0:
        uid, gid = _ids(owner, group)
        os.chown(path, 0 if uid == -1 else uid, 0 if gid == -1 else gid)
    os.chmod(path, mode)


def diff(files: dict[str, str], layout: Layout) -> dict[str, str]:
    """Files whose content differs from disk (or are missing): path -> sha256 of new content."""
    changed = {}
    for rel, text in sorted(files.items()):
        live = layout.root / _check_rel(rel)
        try:
            current = live.read_bytes()
        except FileNotFoundError:
            current = None
        if current != text.encode():
            changed[rel] = sha256(text)
    return changed


def _swap_order(rel: str) -> tuple[int, str]:
    """Maps and data first, the files that name them last."""
    return (1 if rel in (MAIN_CF, MASTER_CF) or rel.endswith(".conf") else 0, rel)


def apply(files: dict[str, str], layout: Layout, validate: bool = True) -> Report:
    """Make the live files equal to `files` (paths relative to layout.root), safely."""
    changed = diff(files, layout)
    if not changed:
        for rel in files:
            _fix_mode(layout.root / rel, rel)
        return Report(ok=True, step="unchanged", log=["no file differs from disk"])
    layout.root.mkdir(parents=True, exist_ok=True)
    candidate = Path(tempfile.mkdtemp(prefix=".candidate-", dir=layout.root))
    log = [f"changed: {', '.join(changed)}"]
    try:
        os.chmod(candidate, 0o755)  # the tools validating it may drop privileges
        mtime = time.time() - BACKDATE_S
        for rel, text in files.items():
            _write(candidate / rel, text, rel, mtime)
        if validate:
            report = validate_candidate(candidate, layout)
            log += report.log
            if not report.ok:
                rejected = layout.root / REJECTED
                shutil.rmtree(rejected, ignore_errors=True)
                os.replace(candidate, rejected)
                log.append(f"candidate refused; kept as {rejected}; live files unchanged")
                return Report(ok=False, step=report.step, log=log)
        else:
            log.append("validation: skipped by the caller")
        for rel in sorted(changed, key=_swap_order):
            live = layout.root / rel
            live.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.replace(candidate / rel, live)
        for directory in {(layout.root / rel).parent for rel in changed}:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        log.append(f"swap: ERROR: {exc}")
        return Report(ok=False, step="swap", log=log)
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    daemons = sorted({daemon_of(rel) for rel in changed} - {"other"})
    return Report(ok=True, step="applied", log=log, changed=changed, daemons=daemons)
