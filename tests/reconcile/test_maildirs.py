"""Maildirs: created complete and owned by vmail, removed cleanly, and never anything outside
the mail root, whatever the names are and whatever symlinks were planted inside."""

import os
from pathlib import Path

import pytest

from workers.reconcile.maildirs import (
    FOLDERS,
    UnsafePath,
    create_maildir,
    ensure_maildirs,
    remove_maildir,
)

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(mail root, a sibling dir outside it holding a sentinel file)."""
    mail_root = tmp_path / "mail"
    mail_root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep me")
    return mail_root, outside


def snapshot(path: Path) -> list[tuple[str, int, int, int]]:
    """Every entry under path with its mode and owner (to prove nothing changed there)."""
    out = []
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        out.append((str(entry.relative_to(path)), st.st_mode, st.st_uid, st.st_gid))
    return out


def test_a_maildir_has_new_cur_tmp_and_the_special_folders(roots):
    mail_root, _ = roots
    maildir = create_maildir(mail_root, "example.test", "alice")
    assert maildir == mail_root / "example.test" / "alice" / "Maildir"
    assert FOLDERS == (".Drafts", ".Junk", ".Sent", ".Trash")
    for folder in ("", *FOLDERS):
        for sub in ("new", "cur", "tmp"):
            assert (maildir / folder / sub).is_dir()


@pytest.mark.skipif(not AS_ROOT, reason="chown to 5000 needs root")
def test_every_maildir_directory_is_owned_by_vmail(roots):
    mail_root, _ = roots
    create_maildir(mail_root, "example.test", "alice")
    home = mail_root / "example.test"
    for entry in [home, *home.rglob("*")]:
        assert (entry.stat().st_uid, entry.stat().st_gid) == (5000, 5000), entry


def test_creating_twice_changes_nothing_and_keeps_mail(roots):
    mail_root, _ = roots
    maildir = create_maildir(mail_root, "example.test", "alice")
    (maildir / "new" / "1.msg").write_text("mail")
    before = snapshot(mail_root)
    create_maildir(mail_root, "example.test", "alice")
    assert snapshot(mail_root) == before


def test_ensure_creates_only_missing_maildirs(roots):
    mail_root, _ = roots
    boxes = [("example.test", "alice"), ("example.test", "bob")]
    assert len(ensure_maildirs(mail_root, boxes)) == 2
    assert ensure_maildirs(mail_root, boxes) == []


def test_remove_deletes_the_home_and_an_emptied_domain_dir(roots):
    mail_root, _ = roots
    create_maildir(mail_root, "example.test", "alice")
    create_maildir(mail_root, "example.test", "bob")
    assert remove_maildir(mail_root, "example.test", "alice")
    assert not (mail_root / "example.test" / "alice").exists()
    assert (mail_root / "example.test" / "bob" / "Maildir").is_dir()
    assert remove_maildir(mail_root, "example.test", "bob")
    assert not (mail_root / "example.test").exists()
    assert not remove_maildir(mail_root, "example.test", "bob")


HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "/",
    "a/b",
    "../outside",
    "..%2f..%2foutside",
    "/tmp/evil",
    "\x00",
    "a\x00b",
    "a\nb",
    "a b",
    "\\",
    "a\\..\\b",
    ".hidden",
    "x" * 256,
    "x" * 4096,
    "ü",
    "ｘ",  # fullwidth
    "．．",  # fullwidth dots
    "a\u202eb",  # right-to-left override
    "\udcff",  # lone surrogate (undecodable file name)
]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
@pytest.mark.parametrize("where", ["domain", "local"])
def test_a_hostile_name_is_refused_and_touches_nothing(roots, name: str, where: str):
    mail_root, outside = roots
    before_root, before_outside = snapshot(mail_root), snapshot(outside)
    domain, local = (name, "alice") if where == "domain" else ("example.test", name)
    with pytest.raises(UnsafePath):
        create_maildir(mail_root, domain, local)
    with pytest.raises(UnsafePath):
        remove_maildir(mail_root, domain, local)
    assert snapshot(mail_root) == before_root
    assert snapshot(outside) == before_outside


@pytest.mark.parametrize("local", ["%2e%2e", "%2e%2e%2f", "o'neil", "a+b", "~", "a.b", "$home"])
def test_odd_but_valid_local_parts_stay_literal_inside_the_root(roots, local: str):
    mail_root, outside = roots
    before_outside = snapshot(outside)
    maildir = create_maildir(mail_root, "example.test", local)
    assert maildir.resolve().is_relative_to(mail_root.resolve())
    assert maildir.parent.name == local
    assert snapshot(outside) == before_outside
    assert remove_maildir(mail_root, "example.test", local)


def test_percent_encoded_dots_are_not_decoded_in_a_domain_name(roots):
    mail_root, _ = roots
    with pytest.raises(UnsafePath):  # "%" is not a DNS character
        create_maildir(mail_root, "%2e%2e", "alice")


def test_an_overlong_but_single_component_name_is_refused_before_any_syscall(roots):
    mail_root, _ = roots
    with pytest.raises(UnsafePath):
        create_maildir(mail_root, "example.test", "a" * 300)


@pytest.mark.parametrize("level", ["domain", "home", "maildir", "folder", "sub"])
def test_a_symlink_planted_inside_the_root_is_refused_not_followed(roots, level: str):
    mail_root, outside = roots
    create_maildir(mail_root, "example.test", "alice")
    home = mail_root / "example.test" / "alice"
    target = {
        "domain": mail_root / "example.test",
        "home": home,
        "maildir": home / "Maildir",
        "folder": home / "Maildir" / ".Sent",
        "sub": home / "Maildir" / ".Sent" / "new",
    }[level]
    # Replace the directory with a symlink to the outside dir.
    os.rename(target, target.with_name(target.name + ".moved"))
    target.symlink_to(outside, target_is_directory=True)
    before_outside = snapshot(outside)
    with pytest.raises(UnsafePath):
        create_maildir(mail_root, "example.test", "alice")
    if level in ("domain", "home"):
        with pytest.raises(UnsafePath):
            remove_maildir(mail_root, "example.test", "alice")
    else:
        # Below the home, rmtree removes the link itself and never descends into it.
        assert remove_maildir(mail_root, "example.test", "alice")
    assert snapshot(outside) == before_outside
    assert (outside / "sentinel").read_text() == "keep me"


def test_a_symlinked_file_inside_a_maildir_is_unlinked_not_its_target(roots):
    mail_root, outside = roots
    maildir = create_maildir(mail_root, "example.test", "alice")
    (maildir / "cur" / "evil").symlink_to(outside / "sentinel")
    (maildir / "cur" / "evil-dir").symlink_to(outside, target_is_directory=True)
    assert remove_maildir(mail_root, "example.test", "alice")
    assert (outside / "sentinel").read_text() == "keep me"


def test_a_symlinked_mail_root_is_configuration_and_followed(roots, tmp_path: Path):
    mail_root, _ = roots
    link = tmp_path / "mail-link"
    link.symlink_to(mail_root, target_is_directory=True)
    create_maildir(link, "example.test", "alice")
    assert (mail_root / "example.test" / "alice" / "Maildir" / "new").is_dir()
