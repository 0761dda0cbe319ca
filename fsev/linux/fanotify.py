"""fanotify(7) from Python: FAN_FS_ERROR (5.16+) and mount-namespace marks (6.15+).

libc's fanotify_init/fanotify_mark through ctypes; parse_events() is pure, so
unit tests feed it bytes. Constants are from include/uapi/linux/fanotify.h;
Debian 12's copy predates the mount ones, so they are spelled out here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

from fsev.kernel.records import FSEV_H

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_REPORT_FID = 0x00000200
FAN_REPORT_MNT = 0x00004000  # 6.15

FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_FILESYSTEM = 0x00000100
FAN_MARK_MNTNS = 0x00000110  # 6.15: the object is a mount namespace (an nsfs fd)

FAN_Q_OVERFLOW = 0x00004000
FAN_FS_ERROR = 0x00008000  # 5.16
FAN_MNT_ATTACH = 0x01000000  # 6.15
FAN_MNT_DETACH = 0x02000000  # 6.15

FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_ERROR = 5
FAN_EVENT_INFO_TYPE_MNT = 7

# include/linux/exportfs.h: the handle ext4 (and most filesystems) encode.
FILEID_INO32_GEN = 1
FILEID_INO32_GEN_PARENT = 2

AT_FDCWD = FSEV_H.FSEV_AT_FDCWD

_META = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HDR = struct.Struct("<BBH")  # info_type, pad, len
_FSID = struct.Struct("<Q")  # __kernel_fsid_t val[2], as statfs f_fsid
_HANDLE = struct.Struct("<Ii")  # handle_bytes, handle_type
_ERROR = struct.Struct("<iI")  # error, error_count
_MNT = struct.Struct("<Q")  # mnt_id (the 64-bit unique id)
_MNT_AT = 8  # the u64 is 8-aligned: 4 bytes of padding follow the header

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


@dataclass(frozen=True)
class FanEvent:
    """One fanotify event, with the info records fsev uses."""

    mask: int
    pid: int
    fsid: int | None = None  # FID record: which filesystem
    ino: int | None = None  # FID record: inode number, for FILEID_INO32_GEN handles
    handle_type: int | None = None
    error: int | None = None  # FAN_FS_ERROR: positive errno of the first error
    error_count: int | None = None  # errors merged into this event while it was queued
    mnt_id: int | None = None  # FAN_MNT_*: the mount's unique 64-bit id

    @property
    def overflow(self) -> bool:
        return bool(self.mask & FAN_Q_OVERFLOW)


def _parse_fid(buf: bytes, off: int, end: int) -> dict:
    out: dict = {}
    if off + _FSID.size + _HANDLE.size > end:
        return out
    out["fsid"] = _FSID.unpack_from(buf, off)[0]
    nbytes, htype = _HANDLE.unpack_from(buf, off + _FSID.size)
    out["handle_type"] = htype
    h = off + _FSID.size + _HANDLE.size
    # FILEID_INO32_GEN(_PARENT): u32 ino, u32 generation, ... An error with no
    # inode (ext4's __ext4_error) comes with an empty or other-type handle.
    if htype in (FILEID_INO32_GEN, FILEID_INO32_GEN_PARENT) and nbytes >= 4 and h + 4 <= end:
        ino = struct.unpack_from("<I", buf, h)[0]
        if ino:
            out["ino"] = ino
    return out


def parse_events(buf: bytes) -> list[FanEvent]:
    """Events in one read() of a fanotify fd (truncated tails are ignored)."""
    events: list[FanEvent] = []
    off = 0
    while off + _META.size <= len(buf):
        ev_len, _vers, _res, meta_len, mask, fd, pid = _META.unpack_from(buf, off)
        if ev_len < _META.size or off + ev_len > len(buf):
            break
        if fd >= 0:  # fsev never asks for fds, but never leak one
            os.close(fd)
        kw: dict = {}
        info = off + meta_len
        end = off + ev_len
        while info + _INFO_HDR.size <= end:
            itype, _pad, ilen = _INFO_HDR.unpack_from(buf, info)
            if ilen < _INFO_HDR.size or info + ilen > end:
                break
            body = info + _INFO_HDR.size
            if itype == FAN_EVENT_INFO_TYPE_FID:
                kw.update(_parse_fid(buf, body, info + ilen))
            elif itype == FAN_EVENT_INFO_TYPE_ERROR and body + _ERROR.size <= end:
                err, count = _ERROR.unpack_from(buf, body)
                kw["error"], kw["error_count"] = abs(err), count
            elif itype == FAN_EVENT_INFO_TYPE_MNT and info + _MNT_AT + _MNT.size <= end:
                kw["mnt_id"] = _MNT.unpack_from(buf, info + _MNT_AT)[0]
            info += ilen
        events.append(FanEvent(mask=mask, pid=pid, **kw))
        off += ev_len
    return events


class FanotifyGroup:
    """One fanotify group (a non-blocking fd)."""

    def __init__(self, flags: int) -> None:
        fd = _libc.fanotify_init(flags | FAN_NONBLOCK | FAN_CLOEXEC, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd

    def mark(self, flags: int, mask: int, dirfd: int = AT_FDCWD, path: str | None = None) -> None:
        p = os.fsencode(path) if path is not None else None
        if _libc.fanotify_mark(self.fd, flags, mask, dirfd, p) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {path or dirfd}: {os.strerror(err)}")

    def read(self) -> list[FanEvent]:
        out: list[FanEvent] = []
        while self.fd >= 0:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not buf:
                break
            out += parse_events(buf)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FsErrorWatch(FanotifyGroup):
    """FAN_FS_ERROR on whole filesystems (a filesystem mark per mount point)."""

    def __init__(self) -> None:
        super().__init__(FAN_CLASS_NOTIF | FAN_REPORT_FID)
        self.marked: set[str] = set()

    def watch(self, mount_point: str) -> bool:
        if mount_point in self.marked:
            return True
        try:
            self.mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, AT_FDCWD, mount_point)
        except OSError:
            return False  # gone, or a filesystem without file handles
        self.marked.add(mount_point)
        return True


class MntnsWatch(FanotifyGroup):
    """FAN_MNT_ATTACH / FAN_MNT_DETACH on mount namespaces, marked through
    their nsfs files. A mark does not keep a namespace alive: when the last
    task leaves, every mount in it is reported detached (measured on 6.18)."""

    def __init__(self) -> None:
        super().__init__(FAN_CLASS_NOTIF | FAN_REPORT_MNT)
        self.marked: dict[int, int] = {}  # ns inode -> 64-bit ns id (0: unknown)

    def watch_ns_file(self, path: str) -> int | None:
        """Mark the namespace behind an nsfs path (e.g. /proc/PID/ns/mnt);
        its inode number, or None if it is gone."""
        try:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            ino = os.fstat(nsfd).st_ino
            if ino in self.marked:
                return ino
            self.mark(FAN_MARK_ADD | FAN_MARK_MNTNS, FAN_MNT_ATTACH | FAN_MNT_DETACH, nsfd, None)
            self.marked[ino] = mntns_id(nsfd)
            return ino
        except OSError:
            return None
        finally:
            os.close(nsfd)


# ioctl(nsfd, NS_GET_MNTNS_ID, &u64) (6.11): _IOR(0xb7, 5, __u64)
NS_GET_MNTNS_ID = (2 << 30) | (8 << 16) | (0xB7 << 8) | 5


def mntns_id(nsfd: int) -> int:
    """The 64-bit id of the mount namespace behind an nsfs fd (0 if unknown)."""
    import fcntl

    buf = bytearray(8)
    try:
        fcntl.ioctl(nsfd, NS_GET_MNTNS_ID, buf)
    except OSError:
        return 0
    return struct.unpack("<Q", buf)[0]
