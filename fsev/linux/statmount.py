"""statmount(2) / listmount(2) (6.8+; other namespaces 6.11+): a mount by its
64-bit unique id, the id fanotify's FAN_MNT_* events carry.

Layouts are include/uapi/linux/mount.h's (struct statmount, mnt_id_req).
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from fsev.kernel.libc import libc

NR_STATMOUNT = 457  # the generic syscall table: x86-64, arm64, ...
NR_LISTMOUNT = 458

STATMOUNT_SB_BASIC = 0x1
STATMOUNT_MNT_BASIC = 0x2
STATMOUNT_MNT_POINT = 0x10
STATMOUNT_FS_TYPE = 0x20
STATMOUNT_SB_SOURCE = 0x200  # 6.14
LSMT_ROOT = 0xFFFFFFFFFFFFFFFF

MNT_ID_REQ_SIZE_VER0 = 24
MNT_ID_REQ_SIZE_VER1 = 32  # + mnt_ns_id
_REQ = struct.Struct("<IIQQQ")  # size, spare, mnt_id, param, mnt_ns_id
# struct statmount, up to the string offsets fsev reads; the strings follow
# in str[] at byte 512 (after __spare2[46]).
_SM = struct.Struct("<IIQIIQII QQII")
_SM_STR = 512
_OFF_MNT_POINT = 108
_OFF_SB_SOURCE = 124

_libc = libc()
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class MountInfo:
    mnt_id_unique: int
    mnt_id: int  # the old id, as in mountinfo
    major: int
    minor: int
    fs_type: str
    mount_point: str
    source: str | None

    @property
    def dev(self) -> str:
        return f"{self.major}:{self.minor}"


def _str_at(buf: bytes, field_off: int) -> str:
    off = struct.unpack_from("<I", buf, field_off)[0]
    start = _SM_STR + off
    end = buf.find(b"\0", start)
    return os.fsdecode(buf[start:end if end >= 0 else len(buf)])


def statmount(mnt_id: int, ns_id: int = 0) -> MountInfo | None:
    """The mount with this unique id (in the namespace with id ns_id, or the
    caller's); None when it is gone or the kernel has no statmount."""
    mask = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE
    for with_source in (True, False):
        size = MNT_ID_REQ_SIZE_VER1 if ns_id else MNT_ID_REQ_SIZE_VER0
        req = ctypes.create_string_buffer(_REQ.pack(size, 0, mnt_id, mask | (STATMOUNT_SB_SOURCE if with_source else 0),
                                                    ns_id), 32)
        buf = ctypes.create_string_buffer(8192)
        if _libc.syscall(NR_STATMOUNT, req, buf, ctypes.sizeof(buf), 0) == 0:
            break
        if ctypes.get_errno() != 22 or not with_source:  # EINVAL: a kernel without SB_SOURCE
            return None
    raw = buf.raw
    (_size, _opts, got, major, minor, _magic, _sbflags, fstype_off, uid, _parent, old_id,
     _old_parent) = _SM.unpack_from(raw)
    if not got & STATMOUNT_MNT_POINT:
        return None
    source = _str_at(raw, _OFF_SB_SOURCE) if got & STATMOUNT_SB_SOURCE else None
    end = raw.find(b"\0", _SM_STR + fstype_off)
    return MountInfo(uid, old_id, major, minor, os.fsdecode(raw[_SM_STR + fstype_off:end]),
                     _str_at(raw, _OFF_MNT_POINT), source)


def listmount(ns_id: int = 0, limit: int = 4096) -> list[int] | None:
    """Unique ids of every mount in a namespace; None when it is gone."""
    ids: list[int] = []
    last = 0
    while True:
        size = MNT_ID_REQ_SIZE_VER1 if ns_id else MNT_ID_REQ_SIZE_VER0
        req = ctypes.create_string_buffer(_REQ.pack(size, 0, LSMT_ROOT, last, ns_id), 32)
        out = (ctypes.c_uint64 * 512)()
        n = _libc.syscall(NR_LISTMOUNT, req, out, 512, 0)
        if n < 0:
            return None
        ids += out[:n]
        if n < 512 or len(ids) >= limit:
            return ids
        last = ids[-1]
