"""What the filesystems say right now: statfs usage and ext4's recorded error state.

Read by `fsev top` every few seconds (and once at start for the historical
error state). Plain values out, so the model that consumes them stays pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount

EXT4_SYSFS = "/sys/fs/ext4"
# Filesystems the ext4 driver serves; each has /sys/fs/ext4/<blockdev>/.
EXT4_DRIVER_TYPES = frozenset({"ext4", "ext3", "ext2"})

# ext4 records errors with its own codes (fs/ext4/ext4.h EXT4_ERR_*, 5.8+),
# not errnos: code -> (name ext4 prints, errno it stands for).
EXT4_ERRCODES: dict[int, tuple[str, int | None]] = {
    1: ("UNKNOWN", None), 2: ("EIO", 5), 3: ("ENOMEM", 12), 4: ("EFSBADCRC", 74),
    5: ("EFSCORRUPTED", 117), 6: ("ENOSPC", 28), 7: ("ENOKEY", 126), 8: ("EROFS", 30),
    9: ("EFBIG", 27), 10: ("EEXIST", 17), 11: ("ERANGE", 34), 12: ("EOVERFLOW", 75),
    13: ("EBUSY", 16), 14: ("ENOTDIR", 20), 15: ("ENOTEMPTY", 39), 16: ("ESHUTDOWN", 108),
    17: ("EFAULT", 14),
}


@dataclass(frozen=True)
class FsStats:
    """statvfs of one mount, in f_frsize blocks."""

    block_size: int
    blocks: int
    free: int  # f_bfree (includes the root reserve)
    avail: int  # f_bavail: what an unprivileged writer can still use
    read_only: bool  # ST_RDONLY; misses ext4's emergency_ro (see Mount.options)

    @property
    def used(self) -> int:
        return self.blocks - self.free

    @property
    def usable(self) -> int:
        """used + avail: the denominator df uses for Use%."""
        return self.used + self.avail

    @property
    def used_fraction(self) -> float:
        return self.used / self.usable if self.usable > 0 else 0.0

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_size


@dataclass(frozen=True)
class RecordedError:
    """One of ext4's two recorded errors (first or last), as its superblock keeps it."""

    time: int  # seconds since the epoch
    function: str
    line: int
    inode: int
    block: int
    errcode: int

    @property
    def errcode_name(self) -> str:
        return EXT4_ERRCODES.get(self.errcode, (f"code {self.errcode}", None))[0]


@dataclass(frozen=True)
class Ext4ErrorState:
    """/sys/fs/ext4/<dev>/{errors_count,first_error_*,last_error_*}."""

    name: str  # block device name, e.g. loop0
    errors_count: int
    first: RecordedError | None
    last: RecordedError | None


def read_statfs(path: str) -> FsStats | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    bs = st.f_frsize or st.f_bsize
    return FsStats(bs, st.f_blocks, st.f_bfree, st.f_bavail, bool(st.f_flag & os.ST_RDONLY))


def block_device_name(dev: str, sys_dev_block: str = "/sys/dev/block") -> str | None:
    """'7:0' -> 'loop0' (the name ext4 uses under /sys/fs/ext4)."""
    try:
        return os.path.basename(os.readlink(os.path.join(sys_dev_block, dev)))
    except OSError:
        return None


def _read(d: str, name: str) -> str:
    with open(os.path.join(d, name), encoding="utf-8", errors="surrogateescape") as f:
        return f.read().strip()


def _recorded(d: str, which: str) -> RecordedError | None:
    try:
        t = int(_read(d, f"{which}_error_time"))
        if t == 0:
            return None
        return RecordedError(
            time=t, function=_read(d, f"{which}_error_func"), line=int(_read(d, f"{which}_error_line")),
            inode=int(_read(d, f"{which}_error_ino")), block=int(_read(d, f"{which}_error_block")),
            errcode=int(_read(d, f"{which}_error_errcode")),
        )
    except (OSError, ValueError):
        return None


def read_ext4_errors(mount: Mount, root: str = EXT4_SYSFS,
                     sys_dev_block: str = "/sys/dev/block") -> Ext4ErrorState | None:
    """The error state ext4 keeps for the superblock of this mount (None: not ext4, or gone)."""
    if mount.fs_type not in EXT4_DRIVER_TYPES:
        return None
    name = block_device_name(mount.dev, sys_dev_block)
    if name is None:
        return None
    d = os.path.join(root, name)
    try:
        count = int(_read(d, "errors_count"))
    except (OSError, ValueError):
        return None
    return Ext4ErrorState(name, count, _recorded(d, "first"), _recorded(d, "last"))


def historical_events(mount: Mount, state: Ext4ErrorState) -> list[Event]:
    """The errors ext4 recorded before fsev started, oldest first, as Events marked historical."""
    if state.errors_count == 0:
        return []
    recs = [("first", state.first), ("last", state.last)]
    if state.errors_count == 1 or state.first == state.last:
        recs = [("last", state.last or state.first)]
    out = []
    for which, r in recs:
        if r is None:
            continue
        name, err = EXT4_ERRCODES.get(r.errcode, (f"code {r.errcode}", None))
        out.append(Event(
            seq=0, ts_ns=0, wall_time=float(r.time), cls=EventClass.ERR, type=EventType.FS_ERROR,
            rung="sysfs", dev=mount.dev, mount_point=mount.mount_point, fs_type=mount.fs_type,
            source=mount.source, mnt_id=mount.mnt_id, function=r.function, line=r.line or None,
            errno=err, inode=r.inode or None, block=r.block or None,
            extra={"historical": which, "errcode_name": name, "errors_count": state.errors_count},
        ))
    return out
