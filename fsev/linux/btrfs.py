"""btrfs as fsev reads it from user space: a mounted filesystem's member
devices and their error counters.

The counters (fs/btrfs/volumes.h, enum btrfs_dev_stat_values) are kept per
member device, in memory and in the device tree, and survive remounts:
write_io_errs, read_io_errs, flush_io_errs (block I/O that failed),
corruption_errs (checksum or tree-block verification failed on data read from
the device), generation_errs (a block older than its parent says). Two ways
to read them, the cheaper first:
- /sys/fs/btrfs/<fsid>/devinfo/<devid>/error_stats (kernel 5.14+): a text
  file, no file descriptor on the filesystem;
- the BTRFS_IOC_GET_DEV_STATS ioctl on a file of the filesystem (3.5+).
Which devices a filesystem has, and their paths, come from BTRFS_IOC_FS_INFO
and BTRFS_IOC_DEV_INFO on its mount point (include/uapi/linux/btrfs.h); the
mount point is opened only for the call, so fsev never holds it busy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import uuid
from dataclasses import dataclass

SYSFS = "/sys/fs/btrfs"
# enum btrfs_dev_stat_values, in order: the sysfs file's names and the ioctl's values[].
COUNTERS = ("write_io_errs", "read_io_errs", "flush_io_errs", "corruption_errs", "generation_errs")
# error_stats spells the first three without "_io" (fs/btrfs/sysfs.c btrfs_devinfo_error_stats_show).
_SYSFS_NAMES = {"write_errs": "write_io_errs", "read_errs": "read_io_errs", "flush_errs": "flush_io_errs",
                "corruption_errs": "corruption_errs", "generation_errs": "generation_errs"}

_MAGIC = 0x94


def _iowr(nr: int, size: int, read_only: bool = False) -> int:
    direction = 2 if read_only else 3  # _IOC_READ, or _IOC_READ | _IOC_WRITE
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


# struct btrfs_ioctl_fs_info_args (1024 bytes): max_id, num_devices, fsid[16], ...
FS_INFO_SIZE = 1024
BTRFS_IOC_FS_INFO = _iowr(31, FS_INFO_SIZE, read_only=True)
# struct btrfs_ioctl_dev_info_args (4096 bytes): devid, uuid[16], bytes_used,
# total_bytes, fsid[16], unused[377], path[1024]
DEV_INFO_SIZE = 4096
DEV_INFO_PATH_OFF = 3072
BTRFS_IOC_DEV_INFO = _iowr(30, DEV_INFO_SIZE)
# struct btrfs_ioctl_get_dev_stats (1032 bytes): devid, nr_items, flags, values[5], unused[121]
DEV_STATS_SIZE = 1032
BTRFS_IOC_GET_DEV_STATS = _iowr(52, DEV_STATS_SIZE)


@dataclass(frozen=True)
class Member:
    devid: int
    path: str  # as btrfs names it, e.g. /dev/loop0
    dev: str | None  # that block device's "major:minor", if it is there


@dataclass(frozen=True)
class Filesystem:
    fsid: str  # the sysfs directory's name
    members: tuple[Member, ...]

    def member_by_dev(self, dev: str) -> Member | None:
        return next((m for m in self.members if m.dev == dev), None)


# -- decoding (pure) -------------------------------------------------------------
def parse_error_stats(text: str) -> dict[str, int]:
    """error_stats ("write_errs 0\\nread_errs 1\\n...") -> {COUNTERS name: value}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in _SYSFS_NAMES and words[1].isdigit():
            out[_SYSFS_NAMES[words[0]]] = int(words[1])
    return out


def pack_dev_stats(devid: int) -> bytearray:
    buf = bytearray(DEV_STATS_SIZE)
    struct.pack_into("=QQQ", buf, 0, devid, len(COUNTERS), 0)
    return buf


def decode_dev_stats(buf: bytes | bytearray) -> dict[str, int]:
    """The ioctl's answer -> {name: value} for the nr_items the kernel filled."""
    _devid, nr_items, _flags = struct.unpack_from("=QQQ", buf, 0)
    values = struct.unpack_from(f"={len(COUNTERS)}Q", buf, 24)
    return {name: values[i] for i, name in enumerate(COUNTERS) if i < nr_items}


def decode_fs_info(buf: bytes | bytearray) -> tuple[int, int, str]:
    """-> (max_id, num_devices, fsid as sysfs names it)."""
    max_id, num_devices = struct.unpack_from("=QQ", buf, 0)
    return max_id, num_devices, str(uuid.UUID(bytes=bytes(buf[16:32])))


def decode_dev_info(buf: bytes | bytearray) -> tuple[int, str]:
    """-> (devid, path)."""
    devid = struct.unpack_from("=Q", buf, 0)[0]
    path = bytes(buf[DEV_INFO_PATH_OFF:DEV_INFO_SIZE]).split(b"\0", 1)[0].decode("utf-8", "replace")
    return devid, path


# -- the running system ------------------------------------------------------------
def _dev_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if st.st_rdev else None


def _open_dir(mount_point: str) -> int:
    return os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)


def filesystem_at(mount_point: str) -> Filesystem:
    """The btrfs filesystem mounted there and its member devices (OSError if it is not one)."""
    fd = _open_dir(mount_point)
    try:
        buf = bytearray(FS_INFO_SIZE)
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, buf)
        max_id, num_devices, fsid = decode_fs_info(buf)
        members: list[Member] = []
        for devid in range(1, max_id + 1):
            info = bytearray(DEV_INFO_SIZE)
            struct.pack_into("=Q", info, 0, devid)
            try:
                fcntl.ioctl(fd, BTRFS_IOC_DEV_INFO, info)
            except OSError as e:
                if e.errno == errno.ENODEV:  # a devid removed from the filesystem
                    continue
                raise
            _, path = decode_dev_info(info)
            members.append(Member(devid, path, _dev_of(path)))
            if len(members) >= num_devices:
                break
        return Filesystem(fsid, tuple(members))
    finally:
        os.close(fd)


def error_stats_path(fsid: str, devid: int) -> str:
    return os.path.join(SYSFS, fsid, "devinfo", str(devid), "error_stats")


def read_counters(fs: Filesystem, member: Member, mount_point: str) -> dict[str, int]:
    """One member's counters now: sysfs where the kernel has it, else the ioctl (OSError if neither)."""
    try:
        with open(error_stats_path(fs.fsid, member.devid)) as f:
            got = parse_error_stats(f.read())
        if got:
            return got
    except FileNotFoundError:
        pass
    fd = _open_dir(mount_point)
    try:
        buf = pack_dev_stats(member.devid)
        fcntl.ioctl(fd, BTRFS_IOC_GET_DEV_STATS, buf)
        return decode_dev_stats(buf)
    finally:
        os.close(fd)
