"""btrfs against the real kernel: images made by mkfs.btrfs on loop devices,
damaged on disk (a data block, a tree block), and a FUSE-backed disk whose
writes fail (a transaction abort). One `fsev trace` watches every mount for
the whole module (one compile); each test keeps to its own devices.

On this kernel (no kprobes) fs_errors come from btrfs's kernel log lines
(btrfs_error's tracepoint rung, through kernel_log) and device_errors from
the device counters (btrfs_dev_stats, polled)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from support.btrfs_rig import (
    BASELINE_WAIT_S,
    aborted_transaction,
    btrfs_image,
    damage,
    drop_caches,
    mount_dev,
    ours,
    physical_of,
)
from support.fuse_disk import fuse_disk

from fsev.linux.mountinfo import MountTable
from fsev.testing.kernel_rig import FsevTrace, run

pytestmark = pytest.mark.root


def test_a_data_checksum_failure_gives_corruption_counts_and_the_inode(err_trace):
    with btrfs_image("fsev-btrfs-csum-") as (img, loop, mp):
        run("mount", loop, mp)
        path = os.path.join(mp, "f")
        with open(path, "wb") as f:
            f.write(os.urandom(64 << 10))
        ino = os.stat(path).st_ino
        os.sync()
        # filefrag gives btrfs logical addresses in 4 KiB blocks for a btrfs file.
        frag = run("filefrag", "-v", path).stdout
        logical = int(re.search(r"^\s*0:\s+0\.\.\s*\d+:\s+(\d+)\.\.", frag, re.M).group(1)) * 4096
        run("umount", mp)
        damage(loop, physical_of(loop, logical) + 100)
        run("mount", loop, mp)
        dev = mount_dev(mp)
        time.sleep(BASELINE_WAIT_S)
        drop_caches()
        reader = subprocess.run(["cat", path], capture_output=True)
        assert reader.returncode != 0 and b"Input/output error" in reader.stderr  # the checksum failed
        evs = err_trace.wait_for(lambda evs: ours(evs, mp, "device_errors") and ours(evs, mp, "fs_error"), timeout=15)
        counts = ours(evs, mp, "device_errors")
        errors = ours(evs, mp, "fs_error")
    assert counts, evs
    c = counts[0]
    assert c["class"] == "err" and c["rung"] == "polled" and c["fs_type"] == "btrfs" and c["dev"] == dev
    assert c["counters"].get("corruption_errs", 0) >= 1 and set(c["counters"]) == {"corruption_errs"}
    assert c["totals"]["corruption_errs"] >= c["counters"]["corruption_errs"]
    assert c["totals"]["write_io_errs"] == 0 and c["devid"] == 1 and c["device"] == loop
    # btrfs's own line: csum failed root 5 ino <ino> off 0 ..., printed by the reading task
    e = errors[0]
    assert e["rung"] == "kernel_log" and e["fs_type"] == "btrfs" and e["dev"] == dev and e["class"] == "err"
    assert e["inode"] == ino and e["root"] == 5 and e["offset"] == 0 and e["message"] == "csum failed"
    # btrfs verifies data checksums in its end-I/O worker: the line's task is that worker, not the reader.
    assert e["pid"] > 0 and e["comm"]
    assert "transaction_abort" not in e


def test_a_damaged_tree_block_is_an_fs_error_named_by_its_logical_address(err_trace):
    with btrfs_image("fsev-btrfs-meta-") as (img, loop, mp):
        run("mount", loop, mp)
        # Enough entries that the filesystem tree has leaves below its root
        # node: the root is read at mount, a leaf only when a lookup needs it.
        for i in range(400):
            open(os.path.join(mp, f"file-with-a-long-name-{i:04d}"), "w").close()
        os.sync()
        run("umount", mp)
        tree = run("btrfs", "inspect-internal", "dump-tree", "-t", "5", loop).stdout
        leaves = [int(x) for x in re.findall(r"^leaf (\d+) items", tree, re.M)]
        assert re.search(r"^node \d+ level 1", tree, re.M) and len(leaves) > 2, tree[:400]
        victim = leaves[len(leaves) // 2]
        # Metadata is DUP: mirror 1 fails its checksum, btrfs reads and rewrites it from mirror 2.
        damage(loop, physical_of(loop, victim) + 2000)
        run("mount", loop, mp)
        time.sleep(BASELINE_WAIT_S)
        drop_caches()
        assert len(os.listdir(mp)) == 400
        for name in os.listdir(mp):
            os.stat(os.path.join(mp, name))
        evs = err_trace.wait_for(lambda evs: [e for e in ours(evs, mp, "fs_error")
                                          if e.get("message") == "checksum verify failed"], timeout=15)
        fsid = run("btrfs", "filesystem", "show", mp).stdout.split("uuid: ")[1].split()[0]
        with open(f"/sys/fs/btrfs/{fsid}/devinfo/1/error_stats") as f:
            corrupted = int(re.search(r"corruption_errs (\d+)", f.read()).group(1))
        time.sleep(0.6)  # past the prompt readings after the line
        evs = err_trace.events()
    meta = [e for e in ours(evs, mp, "fs_error") if e.get("message") == "checksum verify failed"]
    assert meta and meta[0]["logical"] == victim and meta[0]["mirror"] == 1, evs
    assert meta[0]["rung"] == "kernel_log" and "inode" not in meta[0]
    # 6.18 does not count a tree block it repaired from the other copy
    # (measured: corruption_errs stays 0): device_errors follow the counter.
    counts = ours(evs, mp, "device_errors")
    assert bool(counts) == (corrupted > 0), (corrupted, counts)


def test_write_errors_during_commit_abort_the_transaction_and_turn_it_read_only(err_trace):
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    devs: list[str] = []

    def settle(mp: str) -> None:
        devs.append(mount_dev(mp))
        time.sleep(BASELINE_WAIT_S)

    with fuse_disk() as disk, aborted_transaction(disk, settle) as mp:
        evs = err_trace.wait_for(lambda evs: ours(evs, mp, "read_only") and ours(evs, mp, "device_errors")
                             and [e for e in ours(evs, mp, "fs_error") if e.get("transaction_abort")], timeout=15)
        assert "ro" in MountTable.read().by_mount_point(mp).super_options
        time.sleep(1.2)  # past the read_only point's last mountinfo check: room for a duplicate
        evs = err_trace.events()
        loop, loop_dev = disk.loop, disk.dev
    errors = ours(evs, mp, "fs_error")
    aborts = [e for e in errors if e.get("transaction_abort")]
    assert len(aborts) == 1, errors
    a = aborts[0]
    # "BTRFS: error (device loopN state A) in FUNCTION:LINE: errno=-5 IO failure",
    # after "Transaction aborted (error -5)" from the same task
    assert a["errno"] == 5 and a["errno_name"] == "EIO" and a["function"] and a["line"] > 0
    assert a["dev"] == devs[0] and a["fs_type"] == "btrfs" and a["pid"] > 0 and a["comm"]
    assert a["rung"] == "kernel_log" and a["message"] == "IO failure"
    ro = ours(evs, mp, "read_only")
    assert len(ro) == 1, ro  # one transition, reported once
    assert ro[0]["read_only"] is True and ro[0]["cause"] == "error" and ro[0]["flag"] == "sb_rdonly"
    assert ro[0]["caused_by_seq"] in {e["seq"] for e in errors}
    counts = ours(evs, mp, "device_errors")
    assert counts[0]["counters"].get("write_io_errs", 0) >= 1 and counts[0]["device"] == loop
    # The failed writes name the btrfs mount (whose own dev is anonymous) through its source device.
    bio = ours(evs, mp, "block_io_error")
    assert bio and bio[0]["dev"] == loop_dev and "W" in bio[0]["rwbs"] and bio[0]["fs_type"] == "btrfs"


def test_doctor_shows_each_mounted_btrfs_devices_counters_the_baseline():
    from fsev.testing.kernel_rig import FSEV

    with btrfs_image("fsev-btrfs-doctor-") as (img, loop, mp):
        run("mount", loop, mp)
        r = subprocess.run([FSEV, "doctor"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device error counters now" in r.stdout
    (row,) = [ln for ln in r.stdout.splitlines() if mp in ln]
    assert loop in row and "corruption_errs 0" in row and "write_io_errs 0" in row
    # what the polled rung misses is said in the plan
    assert "btrfs_dev_stats" in r.stdout and "ENOSPC" in r.stdout


def test_watching_only_the_btrfs_mount_still_sees_its_member_devices_errors():
    """--mount: the kernel filters block errors by watched disk, and btrfs's
    own dev (0:N) is no disk: its source device is watched instead."""
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    t: FsevTrace | None = None

    def trace_it(mp: str) -> None:
        nonlocal t
        t = FsevTrace(["--mount", mp, "--events", "err"])
        t.wait_attached()
        time.sleep(0.5)  # the baseline reading

    try:
        with fuse_disk() as disk, aborted_transaction(disk, trace_it) as mp:
            assert t is not None
            t.wait_for(lambda evs: {"block_io_error", "fs_error", "read_only", "device_errors"}
                       <= {e["type"] for e in evs}, timeout=15)
            assert t.stop() == 0
    finally:
        if t is not None:
            t.kill()
    evs = t.events()
    assert {e["mount_point"] for e in evs} == {mp}, evs
    assert {"block_io_error", "fs_error", "read_only", "device_errors"} <= {e["type"] for e in evs}, evs
    assert [e for e in evs if e["type"] == "fs_error" and e.get("transaction_abort")]
