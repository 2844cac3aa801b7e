"""apply(): only a changed, validated file set goes live; a refused candidate changes nothing.

These run with or without the mail stack installed (validation skips absent tools; the own
passwd-file checks always run)."""

import grp
import os
import time
from pathlib import Path

import pytest

from workers.reconcile.apply import BACKDATE_S, REJECTED, apply, sha256
from workers.reconcile.layout import MAIN_CF, PASSWD, Layout
from workers.reconcile.render import render
from workers.reconcile.state import Alias, Domain, Mailbox, MailState

H = "{ARGON2ID}$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
STATE = MailState(
    domains=(Domain(id=1, name="example.test"),),
    mailboxes=(
        Mailbox(
            id=2,
            domain="example.test",
            local="alice",
            address="alice@example.test",
            password_hash=H,
        ),
    ),
    aliases=(Alias(source="info@example.test", destination=("alice@example.test",)),),
)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(root=tmp_path / "stack")


def live(layout: Layout) -> dict[str, bytes]:
    return {
        str(p.relative_to(layout.root)): p.read_bytes()
        for p in sorted(layout.root.rglob("*"))
        if p.is_file() and not str(p.relative_to(layout.root)).startswith(".")
    }


def test_first_apply_writes_every_file_and_reports_their_hashes(layout: Layout):
    files = render(STATE, layout)
    report = apply(files, layout)
    assert report.ok, report.log
    assert report.step == "applied"
    assert report.changed == {rel: sha256(text) for rel, text in files.items()}
    assert report.daemons == ["dovecot", "opendkim", "postfix"]
    assert live(layout) == {rel: text.encode() for rel, text in files.items()}
    assert not [p for p in layout.root.iterdir() if p.name.startswith(".candidate")]


def test_written_files_are_backdated_past_the_postfix_cool_down(layout: Layout):
    before = time.time()
    apply(render(STATE, layout), layout)
    assert (layout.root / MAIN_CF).stat().st_mtime <= before - BACKDATE_S + 1


def test_the_passwd_file_is_readable_by_dovecot_only(layout: Layout):
    apply(render(STATE, layout), layout)
    st = (layout.root / PASSWD).stat()
    assert st.st_mode & 0o777 == 0o640
    assert (layout.root / MAIN_CF).stat().st_mode & 0o777 == 0o644
    if os.geteuid() == 0:
        try:
            assert st.st_gid == grp.getgrnam("dovecot").gr_gid
        except KeyError:
            pytest.skip("no dovecot group on this host")


def test_applying_the_same_files_again_changes_nothing(layout: Layout):
    files = render(STATE, layout)
    apply(files, layout)
    mtimes = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()}
    report = apply(files, layout)
    assert report.ok and report.step == "unchanged" and report.changed == {}
    assert {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()} == mtimes


def test_only_the_changed_map_is_swapped_and_only_postfix_needs_a_reload(layout: Layout):
    apply(render(STATE, layout), layout)
    more = MailState(
        domains=STATE.domains,
        mailboxes=STATE.mailboxes,
        aliases=(
            *STATE.aliases,
            Alias(source="sales@example.test", destination=("alice@example.test",)),
        ),
    )
    files = render(more, layout)
    report = apply(files, layout)
    assert report.ok, report.log
    assert list(report.changed) == ["etc/postfix/virtual_aliases"]
    assert report.daemons == ["postfix"]
    assert (
        "sales@example.test alice@example.test"
        in (layout.root / "etc/postfix/virtual_aliases").read_text()
    )


def test_a_refused_candidate_leaves_the_live_files_untouched(layout: Layout):
    apply(render(STATE, layout), layout)
    before = live(layout)
    files = render(STATE, layout)
    files[PASSWD] = files[PASSWD].replace("{ARGON2ID}", "{NOSUCHSCHEME}")
    files["etc/postfix/virtual_aliases"] += "new@example.test alice@example.test\n"
    report = apply(files, layout)
    assert not report.ok
    assert report.step == "passwd-file"
    assert report.changed == {}
    assert any("unknown or missing password scheme" in line for line in report.log)
    assert live(layout) == before
    assert (layout.root / REJECTED / PASSWD).exists()
    assert not [
        p for p in layout.root.iterdir() if p.name.startswith(".candidate-") and p.name != REJECTED
    ]


def test_a_short_passwd_line_is_refused(layout: Layout):
    files = render(STATE, layout)
    files[PASSWD] += "bob@example.test:{ARGON2ID}x:5000:5000\n"
    report = apply(files, layout)
    assert not report.ok and report.step == "passwd-file"
    assert not (layout.root / MAIN_CF).exists()


def test_validation_can_be_skipped_by_the_caller(layout: Layout):
    files = render(STATE, layout)
    files[PASSWD] = files[PASSWD].replace("{ARGON2ID}", "{NOSUCHSCHEME}")
    report = apply(files, layout, validate=False)
    assert report.ok
    assert "validation: skipped by the caller" in report.log


@pytest.mark.parametrize("rel", ["../escape", "/etc/passwd", "etc/../../x", ""])
def test_a_path_outside_the_root_is_refused(layout: Layout, rel: str):
    with pytest.raises(ValueError):
        apply({rel: "x"}, layout)
