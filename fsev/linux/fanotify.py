"""fanotify(7) from Python: FAN_FS_ERROR (5.16+) and mount-namespace marks (6.15+).

libc's fanotify_init/fanotify_mark through ctypes; parse_events() is pure, so
unit tests feed it bytes. Constants are from include/uapi/linux/fanotify.h;
Debian 12's copy predates the mount ones, so they are spelled out here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from dataclasses import dataclass

from fsev.kernel.libc import libc
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

_libc = libc()
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
    """FAN_FS_ERROR on whole filesystems (a filesystem mark per mount point).

    The kernel merges every error into the one FAN_FS_ERROR event still
    queued for a filesystem (only the first error's errno and inode are kept,
    the rest counted), so how much a reader learns depends on how soon it
    reads. start_reader() reads the group from a thread of its own the moment
    the kernel queues an event, whatever the session's loop is busy with
    (decoding a batch, a slow sink): read() then hands over what it read, in
    order, and wake_fd is readable while something waits there."""

    def __init__(self) -> None:
        super().__init__(FAN_CLASS_NOTIF | FAN_REPORT_FID)
        self.marked: set[str] = set()
        self.refused: dict[str, int] = {}  # mount point -> errno of its failed mark
        self._lock = threading.Lock()
        self._pending: list[FanEvent] = []
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1
        self.wake_fd = -1
        self._wake_w = -1

    def watch(self, mount_point: str) -> bool:
        if mount_point in self.marked:
            return True
        try:
            self.mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, AT_FDCWD, mount_point)
        except OSError as e:
            # ENODEV: a zero fsid (ext4 without a UUID); EOPNOTSUPP/EXDEV: no
            # file handles; ENOENT: gone.
            self.refused[mount_point] = e.errno or 0
            return False
        self.refused.pop(mount_point, None)
        self.marked.add(mount_point)
        return True

    def start_reader(self) -> None:
        if self._thread is not None or self.fd < 0:
            return
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_fd, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._reader, name="fsev-fanotify", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        p.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in p.poll()}
            if self._stop_r in ready:
                return
            with self._lock:  # read and keep under one lock: read() sees them in the kernel's order
                got = super().read()
                self._pending += got
            if got:
                try:
                    os.write(self._wake_w, b"x")
                except OSError as e:
                    if e.errno != errno.EAGAIN:  # a full pipe already says it
                        return

    def read(self) -> list[FanEvent]:
        if self._thread is None:
            return super().read()
        with self._lock:
            out, self._pending = self._pending, []
            out += super().read()
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
            for fd in (self._stop_r, self._stop_w, self.wake_fd, self._wake_w):
                os.close(fd)
            self._stop_r = self._stop_w = self.wake_fd = self._wake_w = -1
        super().close()


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
