"""btrfs against the real kernel: images made by mkfs.btrfs on loop devices,
damaged on disk (a data block, a tree block), and a FUSE-backed disk whose
writes fail (a transaction abort). One `fsev trace` watches every mount for
the whole module (one compile); each test keeps to its own devices.

On this kernel (no kprobes) fs_errors come from btrfs's kernel log lines
(btrfs_error's tracepoint rung, through kernel_log) and device_errors from
the device counters (btrfs_dev_stats, polled)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from typing import Iterator

import pytest
from support.fuse_disk import SIZE as FUSE_SIZE
from support.fuse_disk import fuse_disk

from fsev.linux.mountinfo import MountTable
from fsev.testing.kernel_rig import FsevTrace, run, unmount

pytestmark = pytest.mark.root

IMAGE_MB = 128  # mkfs.btrfs wants at least 114 MiB (the FUSE disk's 64 MiB takes --mixed)
# fsev reads a newly mounted filesystem's counters (its baseline) as the mount
# table changes; a damaged block read before that would be part of the baseline.
BASELINE_WAIT_S = 1.5


@pytest.fixture(scope="module")
def trace() -> Iterator[FsevTrace]:
    with FsevTrace(["--events", "err"]) as t:
        t.wait_attached()
        yield t
        t.stop()


@contextlib.contextmanager
def btrfs_image(prefix: str) -> Iterator[tuple[str, str, str]]:
    """(image, loop device, mount point) of a fresh btrfs, not mounted; all undone after."""
    work = tempfile.mkdtemp(prefix=prefix)
    img, mp = os.path.join(work, "img"), os.path.join(work, "m")
    os.mkdir(mp)
    loop = ""
    try:
        with open(img, "wb") as f:
            f.truncate(IMAGE_MB << 20)
        run("mkfs.btrfs", "-q", "-f", img)
        loop = run("losetup", "-f", "--show", img).stdout.strip()
        yield img, loop, mp
    finally:
        unmount(mp)
        if loop:
            run("losetup", "-d", loop, check=False)
        for p in (img,):
            with contextlib.suppress(OSError):
                os.unlink(p)
        for d in (mp, work):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def physical_of(loop: str, logical: int) -> int:
    """Mirror 1's byte offset on the device of a btrfs logical address (btrfs-map-logical)."""
    out = run("btrfs-map-logical", "-l", str(logical), loop).stdout
    m = re.search(r"mirror 1 logical \d+ physical (\d+)", out)
    assert m, out
    return int(m.group(1))


def damage(loop: str, offset: int, data: bytes = b"fsev-damage!") -> None:
    with open(loop, "r+b") as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())
    run("blockdev", "--flushbufs", loop)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def mount_dev(mp: str) -> str:
    m = MountTable.read().by_mount_point(mp)
    assert m is not None and m.fs_type == "btrfs"
    return m.dev


def ours(events: list[dict], mp: str, type_: str) -> list[dict]:
    return [e for e in events if e.get("mount_point") == mp and e["type"] == type_]


def test_a_data_checksum_failure_gives_corruption_counts_and_the_inode(trace):
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
        evs = trace.wait_for(lambda evs: ours(evs, mp, "device_errors") and ours(evs, mp, "fs_error"), timeout=15)
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


def test_a_damaged_tree_block_is_an_fs_error_named_by_its_logical_address(trace):
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
        evs = trace.wait_for(lambda evs: [e for e in ours(evs, mp, "fs_error")
                                          if e.get("message") == "checksum verify failed"], timeout=15)
        fsid = run("btrfs", "filesystem", "show", mp).stdout.split("uuid: ")[1].split()[0]
        with open(f"/sys/fs/btrfs/{fsid}/devinfo/1/error_stats") as f:
            corrupted = int(re.search(r"corruption_errs (\d+)", f.read()).group(1))
        time.sleep(0.6)  # past the prompt readings after the line
        evs = trace.events()
    meta = [e for e in ours(evs, mp, "fs_error") if e.get("message") == "checksum verify failed"]
    assert meta and meta[0]["logical"] == victim and meta[0]["mirror"] == 1, evs
    assert meta[0]["rung"] == "kernel_log" and "inode" not in meta[0]
    # 6.18 does not count a tree block it repaired from the other copy
    # (measured: corruption_errs stays 0): device_errors follow the counter.
    counts = ours(evs, mp, "device_errors")
    assert bool(counts) == (corrupted > 0), (corrupted, counts)


def test_write_errors_during_commit_abort_the_transaction_and_turn_it_read_only(trace):
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    with fuse_disk() as disk:
        mp = tempfile.mkdtemp(prefix="fsev-btrfs-abort-")
        try:
            # 64 MiB: mixed block groups (data and metadata together) fit it.
            run("mkfs.btrfs", "-q", "-f", "-M", "--nodiscard", disk.loop)
            run("mount", disk.loop, mp)
            with open(os.path.join(mp, "f"), "w") as f:
                f.write("x" * 100_000)
            os.sync()
            dev = mount_dev(mp)
            time.sleep(BASELINE_WAIT_S)
            disk.arm("write", 0, FUSE_SIZE)
            with open(os.path.join(mp, "g"), "w") as f:
                f.write("y" * 100_000)
            synced = subprocess.run(["sync", "-f", os.path.join(mp, "g")], capture_output=True)
            assert synced.returncode != 0  # the commit failed
            evs = trace.wait_for(lambda evs: ours(evs, mp, "read_only") and ours(evs, mp, "device_errors")
                                 and [e for e in ours(evs, mp, "fs_error") if e.get("transaction_abort")],
                                 timeout=15)
            assert "ro" in MountTable.read().by_mount_point(mp).super_options
        finally:
            disk.disarm()
            unmount(mp)
            os.rmdir(mp)
    errors = ours(evs, mp, "fs_error")
    aborts = [e for e in errors if e.get("transaction_abort")]
    assert aborts, evs
    a = aborts[0]
    # "BTRFS: error (device loopN state A) in FUNCTION:LINE: errno=-5 IO failure",
    # after "Transaction aborted (error -5)" from the same task
    assert a["errno"] == 5 and a["errno_name"] == "EIO" and a["function"] and a["line"] > 0
    assert a["dev"] == dev and a["fs_type"] == "btrfs" and a["pid"] > 0 and a["comm"]
    assert a["message"] == "IO failure"
    ro = ours(evs, mp, "read_only")
    assert len(ro) == 1, ro  # one transition, reported once
    assert ro[0]["read_only"] is True and ro[0]["cause"] == "error" and ro[0]["flag"] == "sb_rdonly"
    assert ro[0]["caused_by_seq"] in {e["seq"] for e in errors}
    assert ro[0]["caused_by_seq"] <= max(e["seq"] for e in errors)
    counts = ours(evs, mp, "device_errors")
    assert counts[0]["counters"].get("write_io_errs", 0) >= 1 and counts[0]["device"] == disk.loop
