"""Block devices and the mounts on them, from /sys/dev/block.

block:block_rq_error names the whole disk (its request queue's gendisk) and
a sector counted from the start of the disk; a filesystem on a partition has
the partition's device number. These map one to the other.
"""

from __future__ import annotations

import os

SYS_BLOCK = "/sys/dev/block"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def disk_of(dev: str, root: str = SYS_BLOCK) -> str:
    """The whole disk a device belongs to ("8:1" -> "8:0"); itself if not a partition."""
    path = os.path.realpath(os.path.join(root, dev))
    if os.path.exists(os.path.join(path, "partition")):
        parent = _read(os.path.join(os.path.dirname(path), "dev"))
        if parent:
            return parent
    return dev


def partition_of(disk: str, sector: int, root: str = SYS_BLOCK) -> str:
    """The partition of `disk` that holds `sector` (512-byte units from the
    start of the disk); the disk itself when no partition does."""
    base = os.path.realpath(os.path.join(root, disk))
    try:
        entries = os.listdir(base)
    except OSError:
        return disk
    for name in entries:
        p = os.path.join(base, name)
        if not os.path.exists(os.path.join(p, "partition")):
            continue
        start, size, dev = (_read(os.path.join(p, "start")), _read(os.path.join(p, "size")),
                            _read(os.path.join(p, "dev")))
        if start and size and dev and int(start) <= sector < int(start) + int(size):
            return dev
    return disk


def source_dev(source: str) -> str | None:
    """The "major:minor" of a mount's source when it is a block device
    ("/dev/loop1" -> "7:1"), else None. btrfs's superblock has an anonymous
    dev (0:N): its device is only known from the source (one member)."""
    if not source.startswith("/"):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    import stat as stat_mod

    if not stat_mod.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
