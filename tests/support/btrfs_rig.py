"""btrfs test material shared by the real-kernel tests (tests/kernel/test_btrfs*):
images made by mkfs.btrfs on loop devices, damaged on disk, and a transaction
abort from write errors on the FUSE-backed disk (support.fuse_disk)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from typing import Callable, Iterator

from fsev.linux.mountinfo import MountTable
from fsev.testing.kernel_rig import loop_image, run, unmount
from support.fuse_disk import SIZE as FUSE_SIZE
from support.fuse_disk import FuseDisk

IMAGE_MB = 128  # mkfs.btrfs wants at least 114 MiB (the FUSE disk's 64 MiB takes --mixed)
# fsev reads a newly mounted filesystem's counters (its baseline) as the mount
# table changes; a damaged block read before that would be part of the baseline.
BASELINE_WAIT_S = 1.5


@contextlib.contextmanager
def btrfs_image(prefix: str) -> Iterator[tuple[str, str, str]]:
    """(image, loop device, mount point) of a fresh btrfs, not mounted; all undone after."""
    with loop_image(IMAGE_MB, ("mkfs.btrfs", "-q", "-f"), prefix) as made:
        yield made


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


@contextlib.contextmanager
def aborted_transaction(disk: FuseDisk, before_failing: Callable[[str], None]) -> Iterator[str]:
    """A btrfs on the FUSE disk whose next commit fails to write: btrfs aborts
    the transaction (errno -5) and turns read-only. before_failing(mount point)
    runs once the filesystem is mounted and synced, before writes fail. Yields
    the mount point, still mounted; unmounted and removed after."""
    mp = tempfile.mkdtemp(prefix="fsev-btrfs-abort-")
    try:
        # 64 MiB: mixed block groups (data and metadata together) fit it.
        run("mkfs.btrfs", "-q", "-f", "-M", "--nodiscard", disk.loop)
        run("mount", disk.loop, mp)
        with open(os.path.join(mp, "f"), "w") as f:
            f.write("x" * 100_000)
        os.sync()
        before_failing(mp)
        disk.arm("write", 0, FUSE_SIZE)
        with open(os.path.join(mp, "g"), "w") as f:
            f.write("y" * 100_000)
        synced = subprocess.run(["sync", "-f", os.path.join(mp, "g")], capture_output=True)
        assert synced.returncode != 0  # the commit failed
        yield mp
    finally:
        disk.disarm()
        unmount(mp)
        os.rmdir(mp)
