"""Apply a rendered file set: diff, candidate, validate, atomic swap.

Rules:
- Nothing is written live unless something differs from disk.
- The candidate is the complete file set in a staging dir under the root; a candidate that
  fails validation is never swapped in. It is kept as ROOT/.candidate-rejected for inspection,
  and the live files stay as they were. A validated file is written next to its live path and
  renamed over it (one os.replace per file, on the live file's own filesystem).
- Files in the trees the agent owns (DKIM keys, TLS bundles) that are no longer rendered are
  removed: a deleted domain leaves no key behind.
- Every written file is backdated 3 s: Postfix stalls ~1.8 s on main.cf or a map younger than
  2 s (its "cool-down"), in every program including the smtpd spawned after a reload.
- Modes: passwd-file root:dovecot 0640 (the auth process runs as dovecot), DKIM keys
  opendkim 0600, TLS keys root 0600, everything else root 0644.
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
    TLS_DIR,
    Layout,
)
from workers.reconcile.validate import Report, validate_candidate

BACKDATE_S = 3.0
REJECTED = ".candidate-rejected"
OWNED_TREES = (KEYS_DIR, TLS_DIR)  # every file below is rendered by the agent
DAEMON_OF_DIR = {POSTFIX_DIR: "postfix", DOVECOT_DIR: "dovecot", OPENDKIM_DIR: "opendkim"}
# A certificate change reloads both daemons that present it.
DAEMONS_OF_TLS = ("postfix", "dovecot")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_mode(rel: str) -> tuple[int, str | None, str | None]:
    """(mode, owner, group) of a rendered file; None keeps root."""
    if rel == PASSWD:
        return 0o640, None, "dovecot"
    if rel.startswith(KEYS_DIR + "/"):
        return 0o600, "opendkim", "opendkim"
    if rel.startswith(TLS_DIR + "/") and rel.endswith("/privkey.pem"):
        return 0o600, None, None  # Postfix and Dovecot read their keys as root
    return 0o644, None, None


def daemons_of(rel: str) -> tuple[str, ...]:
    if rel.startswith(TLS_DIR + "/"):
        return DAEMONS_OF_TLS
    return (daemon_of(rel),)


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
        live = layout.live(_check_rel(rel))
        try:
            current = live.read_bytes()
        except FileNotFoundError:
            current = None
        if current != text.encode():
            changed[rel] = sha256(text)
    return changed


def stale(files: dict[str, str], layout: Layout) -> list[str]:
    """Files under the agent-owned trees that the rendered set no longer contains."""
    out = []
    for tree in OWNED_TREES:
        top = layout.live(tree)
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if path.is_file() or path.is_symlink():
                rel = f"{tree}/{path.relative_to(top).as_posix()}"
                if rel not in files:
                    out.append(rel)
    return out


def _swap_order(rel: str) -> tuple[int, str]:
    """Maps and data first, the files that name them last."""
    return (1 if rel in (MAIN_CF, MASTER_CF) or rel.endswith(".conf") else 0, rel)


def apply(files: dict[str, str], layout: Layout, validate: bool = True) -> Report:
    """Make the live files equal to `files` (paths relative to layout.root), safely."""
    changed = diff(files, layout)
    removed = stale(files, layout)
    if not changed and not removed:
        for rel in files:
            _fix_mode(layout.live(rel), rel)
        return Report(ok=True, step="unchanged", log=["no file differs from disk"])
    layout.root.mkdir(parents=True, exist_ok=True)
    candidate = Path(tempfile.mkdtemp(prefix=".candidate-", dir=layout.root))
    log = [f"changed: {', '.join(changed)}"] if changed else []
    if removed:
        log.append(f"no longer rendered: {', '.join(removed)}")
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
            live = layout.live(rel)
            live.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            staged = live.parent / f".{live.name}.mailpanel-new"
            staged.unlink(missing_ok=True)
            _write(staged, files[rel], rel, mtime)
            os.replace(staged, live)
        for rel in removed:
            layout.live(rel).unlink(missing_ok=True)
        for directory in {layout.live(rel).parent for rel in [*changed, *removed]}:
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
    changed.update({rel: "" for rel in removed})  # an empty hash: the file is gone
    daemons = sorted({d for rel in changed for d in daemons_of(rel)} - {"other"})
    return Report(ok=True, step="applied", log=log, changed=changed, daemons=daemons)
