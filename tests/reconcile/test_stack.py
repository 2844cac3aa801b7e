"""MailStack pieces that need no mail stack: root checks, zombie-aware liveness, pty capture."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.reconcile.layout import Layout
from workers.reconcile.stack import (
    MailStack,
    StackError,
    alive,
    proc_state,
    run_tty,
    session_members,
    wait_until,
)


def test_a_root_the_daemons_cannot_traverse_is_refused(tmp_path: Path):
    os.chmod(tmp_path, 0o700)  # as pytest makes them: postfix/dovecot/vmail cannot enter
    with pytest.raises(StackError, match="not traversable"):
        MailStack(Layout(root=tmp_path / "stack")).prepare()


def test_a_root_too_deep_for_unix_sockets_is_refused(tmp_path: Path):
    deep = Path("/tmp") / ("d" * 90)
    with pytest.raises(StackError, match="too long"):
        MailStack(Layout(root=deep)).prepare()
    deep.rmdir()


def test_start_without_a_rendered_config_says_so(tmp_path: Path):
    stack = MailStack(Layout(root=tmp_path / "stack"))
    if not all(stack.binaries()[name] for name in ("postfix", "dovecot")):
        pytest.skip("Postfix/Dovecot are not installed")
    with pytest.raises(StackError, match="apply"):
        stack.start()


def test_a_zombie_counts_as_exited_although_kill_0_succeeds():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_until(lambda: (proc_state(child.pid) or ("gone",))[0] == "Z", 10.0)
        os.kill(child.pid, 0)  # still there: nobody has reaped it yet
        assert not alive(child.pid)
    finally:
        child.wait()
    assert proc_state(child.pid) is None


def test_session_members_lists_a_new_session_until_it_exits():
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert session_members(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert session_members(child.pid) == []


def test_run_tty_captures_what_a_program_prints_only_to_a_terminal():
    rc, out = run_tty(["sh", "-c", "test -t 2 && echo on-a-tty >&2; exit 3"])
    assert (rc, out) == (3, "on-a-tty")
