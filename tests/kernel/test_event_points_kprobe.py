"""The event points' kprobe rungs, on a kernel that has kprobes (the stock-kernel VM,
tests/vm: Debian 12's 6.1, which also lacks ext4's emergency_ro flag and
fanotify mount-namespace marks)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from support.topology_scenario import check_topology, topology_scenario

from fsev.testing.kernel_rig import FsevTrace, ext4, run, tmpfs

pytestmark = [pytest.mark.root, pytest.mark.kprobe]
ATTACH_S = 300  # bcc compiles slowly under emulation


def _rung_for(trace: FsevTrace, point: str) -> str:
    line = next(l for l in trace.stderr_lines if l.startswith(f"fsev: {point}: "))
    return line.split(": ")[2].split()[0]


def test_read_only_after_an_error_on_the_kprobe_rung():
    with ext4(options="errors=remount-ro", corrupt_dir=True) as fs:
        with FsevTrace(["--mount", fs.mount_point]) as t:
            t.wait_attached(timeout=ATTACH_S)
            assert _rung_for(t, "read_only") == "kprobe", t.stderr_lines
            reader = subprocess.Popen(["ls", os.path.join(fs.mount_point, "d")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader.wait()
            t.wait_for(lambda e: any(x["type"] == "read_only" for x in e), timeout=30)
            time.sleep(1)  # room for a duplicate from the mountinfo check
            assert t.stop() == 0
        sb_rdonly = bool(os.statvfs(fs.mount_point).f_flag & os.ST_RDONLY)
    errs = [e for e in t.events() if e["type"] == "fs_error"]
    ros = [e for e in t.events() if e["type"] == "read_only"]
    # Before 6.12 the aborted journal raises a second error (ext4_journal_check_start)
    assert errs and len(ros) == 1, json.dumps(ros)
    err, ro = errs[0], ros[0]
    assert err["function"] == "htree_dirblock_to_tree"
    assert err["rung"] == "kprobe" and err["errno"] == 74 and err["errno_source"] == "kprobe"
    assert ro["rung"] == "kprobe" and ro["class"] == "err" and ro["cause"] == "error"
    # Which flag depends on the kernel: SB_RDONLY (up to 6.6, statfs sees it),
    # EXT4_MF_FS_ABORTED alone (stable kernels that stopped setting SB_RDONLY:
    # Debian's 6.1.176), EXT4_FLAGS_SHUTDOWN (6.7-6.11), EXT4_FLAGS_EMERGENCY_RO (6.12+).
    assert ro["flag"] in ("emergency_ro", "shutdown", "sb_rdonly", "aborted")
    assert (ro["flag"] == "sb_rdonly") == sb_rdonly
    assert ro["caused_by_seq"] == err["seq"] and ro["pid"] == reader.pid


def test_enospc_on_mkdir_takes_the_parent_directory_from_the_kprobe():
    with tmpfs(size="64k") as mp:
        run("mount", "-o", "remount,nr_inodes=2", mp)
        with FsevTrace(["--mount", mp, "--events", "warn"]) as t:
            t.wait_attached(timeout=ATTACH_S)
            assert _rung_for(t, "enospc") == "kprobe", t.stderr_lines
            os.mkdir(os.path.join(mp, "a"))
            with pytest.raises(OSError):
                os.mkdir(os.path.join(mp, "b"))
            t.wait_for(lambda e: len(e) >= 1, timeout=30)
            assert t.stop() == 0
    (e,) = [x for x in t.events() if x["type"] == "enospc"]
    assert e["rung"] == "kprobe" and e["mount_point"] == mp and e["call"] in ("mkdir", "mkdirat")
    assert e["pid"] == os.getpid()


def test_mount_topology_without_fanotify_mount_marks():
    evs, paths, rung = topology_scenario(attach_timeout=ATTACH_S)
    check_topology(evs, paths, rung)
