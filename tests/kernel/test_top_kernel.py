"""`fsev top` as root on the real kernel, on a real terminal (tmux): what the admin sees."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest

from fsev.testing.kernel_rig import ext4, live_prog_ids, run, tmpfs
from fsev.testing.tmux_top import TmuxTop

pytestmark = pytest.mark.root


def _row(screen: str, mount_point: str) -> str:
    rows = [l for l in screen.splitlines() if l.startswith(mount_point + " ")]
    assert len(rows) == 1, screen
    return rows[0]


def _feed(screen: str) -> list[str]:
    return screen.split("events, newest first", 1)[1].splitlines()[1:]


def _raise_ext4_error_as(comm: str, e4) -> int:
    """A process named `comm` raises one ext4 error; returns its pid."""
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); "
            "open(sys.argv[2], 'w').write('x')")
    p = subprocess.Popen([sys.executable, "-c", code, comm, f"/sys/fs/ext4/{e4.name}/trigger_fs_error"])
    assert p.wait(30) == 0
    return p.pid


def test_live_screen_shows_new_mounts_and_ext4_errors_then_q_exits_clean():
    with TmuxTop() as top:
        top.wait_attached()
        with tmpfs(prefix="fsev-top-tmpfs-") as tmp, ext4(corrupt_dir=True) as e4:
            # Other tests on this machine may add mounts and flood the feed: the `/`
            # filter (two words: either mount) keeps this test's rows on screen.
            top.keys("/", f"{tmp} {e4.mount_point}", "Enter")
            s = top.wait_screen(lambda s: f"\n{tmp} " in s and f"\n{e4.mount_point} " in s)
            assert re.search(r"^\S+\s+tmpfs\s+tmpfs \d+:\d+\s", _row(s, tmp)), _row(s, tmp)
            assert re.search(rf"\sext4\s+{e4.loop} {e4.dev}\s", _row(s, e4.mount_point)), _row(s, e4.mount_point)
            top.keys("/", *["BSpace"] * (len(tmp) + 1 + len(e4.mount_point)), e4.mount_point, "Enter")
            s = top.wait_screen(lambda s: f"filter {e4.mount_point}" in s and f"\n{tmp} " not in s)

            reader = subprocess.Popen(["ls", os.path.join(e4.mount_point, "d")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader.wait(30)
            s = top.wait_screen(lambda s: "htree_dirblock_to_tree" in _row(s, e4.mount_point))
            # session count / ext4's errors_count (which ext4 writes back a little later)
            # errno: on the tracepoint rung from fanotify or sysfs (fsev.points.ext4_error_detail), when they told
            assert re.search(r"\s1/[01]\s+htree_dirblock_to_tree:\d+ (EBADMSG )?\d+s\s", _row(s, e4.mount_point)), s
            line = next((l for l in _feed(s) if "htree_dirblock_to_tree" in l), None)
            assert line, s
            assert re.search(rf"err  fs_error  {re.escape(e4.mount_point)} \(ext4 {e4.dev}\)  "
                             rf"htree_dirblock_to_tree:\d+( EBADMSG\(74\) inode \d+)?"
                             rf"  pid {reader.pid} ls  \[tracepoint\]",
                             line), line

            e4.trigger_errors(1)
            s = top.wait_screen(lambda s: "trigger_test_error" in _row(s, e4.mount_point))
            assert re.search(r"\s2/[012]\s+trigger_test_error:\d+ ", _row(s, e4.mount_point))
            mine = [l for l in _feed(s) if e4.mount_point in l]  # other tests may mount and unmount meanwhile
            assert "trigger_test_error" in mine[0] and "htree_dirblock_to_tree" in mine[1]  # newest on top

            top.keys("q")
            assert top.exit_status() == 0
    assert not top.prog_ids & live_prog_ids(), "a BPF program of fsev top outlived it"


def test_recorded_errors_and_free_space_levels():
    with ext4() as e4, tmpfs(size="8m", prefix="fsev-top-thr-") as tmp:
        e4.trigger_errors(2)  # before fsev starts: ext4 keeps them in its superblock
        with TmuxTop("--mount", tmp, "--mount", e4.mount_point, "--thr", "50%,25%") as top:
            s = top.wait_attached()
            row = _row(s, e4.mount_point)
            assert re.search(r"\s0/2\s+trigger_test_error:\d+ EFSCORRUPTED \d+s hist", row), row
            hist = [l for l in _feed(s) if l.lstrip().startswith("historical")]
            assert hist and "trigger_test_error" in hist[0] and "errors_count 2" in hist[0], s
            assert len([l for l in s.splitlines() if l.startswith("/")]) == 2  # only the --mount ones

            # 8 MiB = 2048 blocks: L1 at 1024 available, L2 at 512
            row = _row(s, tmp).split()
            assert row[5:9] == ["░░░░░░1░░2░░", "0%", "2048", "ok"], row
            with open(os.path.join(tmp, "fill"), "wb") as f:
                f.write(b"\0" * (5 << 20))
            # the state follows the kernel's event, the bar the next statfs snapshot
            s = top.wait_screen(lambda s: _row(s, tmp).split()[5:9] == ["██████1█░2░░", "62%", "768", "L1"])
            with open(os.path.join(tmp, "fill"), "ab") as f:
                f.write(b"\0" * (2 << 20))
            s = top.wait_screen(lambda s: _row(s, tmp).split()[8] == "L2")
            assert s.splitlines()[4].startswith(tmp)  # the worst mount on top
            os.unlink(os.path.join(tmp, "fill"))
            top.wait_screen(lambda s: _row(s, tmp).split()[8] == "ok")
            top.keys("q")
            assert top.exit_status() == 0
    assert not top.prog_ids & live_prog_ids()


@pytest.mark.parametrize("how", ["SIGTERM", "C-c"])
def test_sigterm_and_ctrl_c_quit_clean(how):
    with TmuxTop() as top:
        top.wait_attached()
        if how == "SIGTERM":
            os.kill(top.pid, signal.SIGTERM)
        else:
            top.keys("C-c")
        assert top.exit_status() == 0
        assert not top.prog_ids & live_prog_ids()


def test_hostile_names_stay_inert_on_a_real_terminal():
    base = tempfile.mkdtemp(prefix="t-", dir="/tmp")  # short: the whole mount point fits its column
    mp = os.path.join(base, "[bold red]x\x1b[2J")
    os.mkdir(mp)
    try:
        run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mp)
        with ext4() as e4, TmuxTop() as top:
            top.wait_attached()
            top.keys("/", f"{base} {e4.mount_point}", "Enter")  # other tests may add mounts and events
            s = top.wait_screen(lambda s: f"filter {base} {e4.mount_point}" in s)
            assert re.search(r"\stmpfs\s+tmpfs \d+:\d+\s+1\.0M\s", _row(s, base + "/[bold red]x\\x1b[2J"))
            pid1 = _raise_ext4_error_as("[red]x[/red]", e4)
            pid2 = _raise_ext4_error_as("\x1b[2J\x1b]0;pwn\x07", e4)
            s = top.wait_screen(lambda s: f"pid {pid2} " in s and f"pid {pid1} " in s)
            assert s.startswith("fsev top")  # the screen was not cleared
            assert f"pid {pid1} [red]x[/red]  [tracepoint]" in s
            assert f"pid {pid2} \\x1b[2J\\x1b]0;pwn\\x07  [tracepoint]" in s
            top.keys("q")
            assert top.exit_status() == 0
    finally:
        # not kernel_env.unmount: /proc/mounts octal-escapes the space in this name
        for args in (("umount", mp), ("umount", "-l", mp)):
            if os.path.ismount(mp):
                run(*args, check=False)
        os.rmdir(mp)
        os.rmdir(base)
