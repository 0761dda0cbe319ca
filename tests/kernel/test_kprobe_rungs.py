"""The kprobe rungs, on a kernel that has kprobes (the stock-kernel VM, tests/vm).

They assert the rung itself: errno, inode and block come from the function
arguments, and cleanup_mnt sees drops no syscall makes (namespace teardown).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from fsev.testing.kernel_rig import FsevTrace, ext4

pytestmark = [pytest.mark.root, pytest.mark.kprobe]


def test_ext4_error_on_kprobe_rung_carries_errno_inode_block():
    with ext4(corrupt_dir=True) as fs:
        d = os.path.join(fs.mount_point, "d")
        with FsevTrace(["--mount", fs.mount_point, "--events", "err"]) as t:
            t.wait_attached(timeout=300)  # bcc compiles slowly under emulation
            assert any(l.startswith("fsev: ext4_error: kprobe") for l in t.stderr_lines), t.stderr_lines
            ino = os.stat(d).st_ino  # stat reads the inode table, not the corrupted block
            reader = subprocess.Popen(["ls", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader.wait()
            t.wait_for(lambda e: len(e) >= 1)
            assert t.stop() == 0
        evs = [e for e in t.events() if e["type"] == "fs_error"]
        assert evs, t.stderr_lines
        e = evs[0]
        assert e["rung"] == "kprobe"
        assert e["function"] == "htree_dirblock_to_tree" and e["line"] > 0
        assert e["errno"] == 74 and e["errno_name"] == "EBADMSG"  # EFSBADCRC: directory block checksum
        assert e["inode"] == ino
        # ext4 passes the directory's logical block, 0 here, which it (and fsev)
        # treat as "no block": the key is then left out.
        assert e.get("block", 1) > 0
        assert e["pid"] == reader.pid and e["comm"] == "ls"
        assert e["dev"] == fs.dev and e["mount_point"] == fs.mount_point


def test_cleanup_mnt_sees_namespace_teardown():
    with FsevTrace(["--events", "info"]) as t:
        t.wait_attached(timeout=300)
        assert any(l.startswith("fsev: mount_drop: kprobe") for l in t.stderr_lines), t.stderr_lines
        d = tempfile.mkdtemp(prefix="fsev-ns-")
        try:
            # A tmpfs that only a short-lived mount namespace ever sees: no
            # umount(2) is called, the mount dies with the namespace.
            out = subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount -t tmpfs -o size=1m fsev-ns {d} && mountpoint -d {d}"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
        finally:
            os.rmdir(d)
        evs = t.wait_for(lambda e: any(x.get("dev") == out for x in e), timeout=20)
        time.sleep(0.2)
        assert t.stop() == 0
    drops = [e for e in evs if e["type"] == "umount" and e.get("dev") == out]
    assert len(drops) == 1, (out, evs)
    assert drops[0]["rung"] == "kprobe" and drops[0]["class"] == "info"


def test_lazy_umount_on_cleanup_mnt_fires_when_the_last_user_lets_go():
    from fsev.testing.kernel_rig import run, tmpfs

    with tmpfs() as mp:
        with FsevTrace(["--mount", mp, "--events", "info"]) as t:
            t.wait_attached(timeout=300)
            busy = subprocess.Popen(["sleep", "60"], cwd=mp)
            try:
                run("umount", "-l", mp)
                time.sleep(1)
                assert [e for e in t.events() if e["type"] == "umount"] == []
            finally:
                busy.kill()
                busy.wait()
            evs = t.wait_for(lambda e: any(x["type"] == "umount" for x in e), timeout=20)
            assert t.stop() == 0
    drops = [e for e in evs if e["type"] == "umount"]
    assert len(drops) == 1 and drops[0]["rung"] == "kprobe" and drops[0]["mount_point"] == mp
    # cleanup_mnt runs in the task that dropped the last reference: the sleeper.
    assert drops[0]["tgid"] == busy.pid and drops[0]["comm"] == "sleep"
