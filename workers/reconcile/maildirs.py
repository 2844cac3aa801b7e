"""Maildirs under the mail root: ROOT/domain/local/Maildir with the standard folders.

Rule: nothing outside the mail root is ever created, chowned or removed. Names are checked as
single path components (no separators, dot-names, NUL, control or non-ASCII characters), and
the tree is walked with directory file descriptors opened O_NOFOLLOW, so a symlink planted
inside the root (by anything that can write there, e.g. the vmail user) is refused instead of
followed, with no window between check and use.
"""

import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.reconcile.layout import SPECIAL_USE

MAILDIR_SUBDIRS = ("new", "cur", "tmp")
FOLDERS = tuple("." + name for name, _ in SPECIAL_USE)
NAME_MAX = 255

# Domain names arrive as lowercase IDNA A-labels; local parts as RFC 5322 atext less "/".
_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~.-]+$")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A name that is not one safe path component, or a path that would leave the mail root."""


def check_component(name: str, kind: str) -> str:
    """One directory name built from user input: `kind` is "domain" or "local"."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{kind} name is empty")
    if name in (".", "..") or name.startswith("."):
        raise UnsafePath(f"{kind} name {name!r} is a dot-name")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise UnsafePath(f"{kind} name is longer than {NAME_MAX} bytes")
    pattern = _DOMAIN if kind == "domain" else _LOCAL
    if not pattern.match(name) or ".." in name:
        raise UnsafePath(f"{kind} name {name!r} has characters not allowed in a path")
    return name


def home_path(mail_root: Path, domain: str, local: str) -> Path:
    """The mailbox home (as rendered into the passwd-file), checked lexically."""
    return mail_root / check_component(domain, "domain") / check_component(local, "local")


def _open_root(mail_root: Path) -> int:
    """The mail root itself is configuration (it may be a symlink); everything below is not."""
    return os.open(mail_root.resolve(strict=True), _DIR_FLAGS)


def _open_child(parent_fd: int, name: str, create: bool, mode: int) -> int:
    if create:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{name!r} is a symlink or not a directory; refused") from None
        raise


@contextmanager
def _walk(mail_root: Path, names: list[str], create: bool, mode: int) -> Iterator[list[int]]:
    fds = [_open_root(mail_root)]
    try:
        for name in names:
            fds.append(_open_child(fds[-1], name, create, mode))
        yield fds
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _own(fd: int, uid: int, gid: int, mode: int) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def create_maildir(
    mail_root: Path, domain: str, local: str, uid: int = 5000, gid: int = 5000
) -> Path:
    """Create (or complete) ROOT/domain/local/Maildir with new/cur/tmp and the special-use
    folders, owned uid:gid (when running as root). Idempotent."""
    home = home_path(mail_root, domain, local)
    with _walk(mail_root, [domain, local, "Maildir"], create=True, mode=0o700) as fds:
        _, domain_fd, home_fd, maildir_fd = fds
        _own(domain_fd, uid, gid, 0o770)
        _own(home_fd, uid, gid, 0o700)
        _own(maildir_fd, uid, gid, 0o700)
        for folder in ("", *FOLDERS):
            folder_fd = maildir_fd if not folder else _open_child(maildir_fd, folder, True, 0o700)
            try:
                if folder:
                    _own(folder_fd, uid, gid, 0o700)
                for sub in MAILDIR_SUBDIRS:
                    sub_fd = _open_child(folder_fd, sub, True, 0o700)
                    try:
                        _own(sub_fd, uid, gid, 0o700)
                    finally:
                        os.close(sub_fd)
            finally:
                if folder:
                    os.close(folder_fd)
    return home / "Maildir"


def remove_maildir(mail_root: Path, domain: str, local: str) -> bool:
    """Remove the mailbox home ROOT/domain/local (and the domain dir once empty). False when
    it was not there. A symlink anywhere on the way is refused, never followed."""
    check_component(domain, "domain")
    check_component(local, "local")
    try:
        with _walk(mail_root, [domain], create=False, mode=0) as fds:
            domain_fd = fds[-1]
            try:
                info = os.stat(local, dir_fd=domain_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafePath(f"{local!r} is a symlink or not a directory; refused")
            # rmtree with dir_fd works on descriptors and never follows a symlink inside.
            shutil.rmtree(local, dir_fd=domain_fd)
    except FileNotFoundError:
        return False
    try:
        with _walk(mail_root, [], create=False, mode=0) as fds:
            os.rmdir(domain, dir_fd=fds[0])
    except OSError:
        pass  # not empty (other mailboxes) or already gone
    return True


def ensure_maildirs(
    mail_root: Path, mailboxes: list[tuple[str, str]], uid: int = 5000, gid: int = 5000
) -> list[Path]:
    """Create the maildir of every (domain, local) that lacks one; returns those created."""
    ensure_mail_root(mail_root, uid, gid)
    created = []
    for domain, local in mailboxes:
        maildir = home_path(mail_root, domain, local) / "Maildir"
        complete = all(
            (maildir / folder / sub).is_dir() and not (maildir / folder / sub).is_symlink()
            for folder in ("", *FOLDERS)
            for sub in MAILDIR_SUBDIRS
        )
        if not complete:
            created.append(create_maildir(mail_root, domain, local, uid, gid))
    return created


def ensure_mail_root(mail_root: Path, uid: int = 5000, gid: int = 5000) -> None:
    """The vmail-owned root (0770): Dovecot creates homes below it as uid:gid."""
    mail_root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(mail_root, uid, gid)
    os.chmod(mail_root, 0o770)
