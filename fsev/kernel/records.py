"""The Python mirror of bpf/fsev.h: record layout and enums, defined here once.

tests/test_records_contract.py compiles bpf/fsev.h with bcc and checks that
field names, offsets and sizeof agree with this module.
"""

from __future__ import annotations

import ctypes
import enum
import struct

COMM_LEN = 16
FUNC_LEN = 48
PATH_LEN = 64


class RecordClass(enum.IntEnum):
    NONE = 0
    INFO = 1
    WARN = 2
    ERR = 3
    THR = 4


class RecordType(enum.IntEnum):
    NONE = 0
    FS_ERROR = 1
    UMOUNT = 2
    THRESHOLD = 3
    READ_ONLY = 4
    ENOSPC = 5
    BLOCK_IO_ERROR = 6
    WB_ERROR = 7
    MOUNT = 8


class Rung(enum.IntEnum):
    NONE = 0
    KPROBE = 1
    TRACEPOINT = 2
    RAW_TRACEPOINT = 3


class Field(enum.IntFlag):
    ERRNO = 1 << 0
    INODE = 1 << 1
    BLOCK = 1 << 2
    LINE = 1 << 3
    FUNC = 1 << 4
    PATH = 1 << 5
    MNT_ID = 1 << 6
    LAZY = 1 << 7
    SETTLE = 1 << 8
    MNTNS = 1 << 16
    PATH_EXACT = 1 << 17


class Call(enum.IntEnum):
    """enum fsev_call: the call behind a health record."""

    NONE = 0
    WRITE = 1
    PWRITE64 = 2
    WRITEV = 3
    PWRITEV = 4
    PWRITEV2 = 5
    FALLOCATE = 6
    OPEN = 7
    OPENAT = 8
    OPENAT2 = 9
    CREAT = 10
    MKDIR = 11
    MKDIRAT = 12
    MOUNT = 13
    MOVE_MOUNT = 14
    FSCONFIG = 15
    MOUNT_SETATTR = 16
    UNSHARE = 17
    CLONE = 18
    CLONE3 = 19
    EXT4_ERROR = 20
    RECONFIGURE_SUPER = 21


class RoBits(enum.IntFlag):
    """enum fsev_ro_bits: a superblock's read-only state."""

    SB_RDONLY = 1 << 0
    EMERGENCY = 1 << 1
    SHUTDOWN = 1 << 2
    ABORTED = 1 << 3


class Direction(enum.IntEnum):
    NONE = 0
    DOWN = 1
    UP = 2


class Record(ctypes.Structure):
    """struct fsev_record."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("block", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("cls", ctypes.c_uint32),
        ("rung", ctypes.c_uint32),
        ("fields", ctypes.c_uint32),
        ("dev", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("line", ctypes.c_uint32),
        ("mnt_id", ctypes.c_uint32),
        ("level", ctypes.c_uint32),
        ("direction", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("func", ctypes.c_char * FUNC_LEN),
        ("path", ctypes.c_char * PATH_LEN),
        # health events
        ("mntns", ctypes.c_uint64),
        ("call", ctypes.c_uint32),
        ("arg", ctypes.c_uint32),
    ]


RECORD_SIZE = ctypes.sizeof(Record)


def _struct_format(rec: type[ctypes.Structure]) -> str:
    """A struct-module format equal to the ctypes layout, derived from it (not
    written twice): the hot path unpacks raw bytes with it, which is several
    times cheaper than building a ctypes object per record."""
    codes = {ctypes.c_uint64: "Q", ctypes.c_uint32: "I", ctypes.c_int32: "i"}
    fmt, pos = "<", 0
    for name, ctype in rec._fields_:
        off = getattr(rec, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += f"{ctypes.sizeof(ctype)}s" if issubclass(ctype, ctypes.Array) else codes[ctype]
        pos = off + ctypes.sizeof(ctype)
    if ctypes.sizeof(rec) > pos:
        fmt += f"{ctypes.sizeof(rec) - pos}x"
    return fmt


RECORD_STRUCT = struct.Struct(_struct_format(Record))
RECORD_FIELDS: tuple[str, ...] = tuple(name for name, _ in Record._fields_)


THR_SLOTS = 1024  # FSEV_THR_SLOTS: watched superblocks with a kernel rung, at most


class ThrKind(enum.IntEnum):
    NONE = 0
    SHMEM = 1
    EXT4 = 2


class ThrState(ctypes.Structure):
    """struct fsev_thr_state: a thr_state map value (user space -> kernel)."""

    _fields_ = [
        ("l1", ctypes.c_uint64),
        ("l2", ctypes.c_uint64),
        ("hysteresis", ctypes.c_uint64),
        ("band", ctypes.c_uint64),
        ("slack", ctypes.c_uint64),
        ("last_hint_ns", ctypes.c_uint64),
        ("gate", ctypes.c_uint64),
        ("step", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("nlevels", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("dev", ctypes.c_uint32),
        ("cpus", ctypes.c_uint32),
    ]


def class_mask(classes: "set[RecordClass] | frozenset[RecordClass]") -> int:
    """The load-time FSEV_CLASS_MASK for a set of classes (FSEV_CLASS_BIT in C)."""
    mask = 0
    for c in classes:
        mask |= 1 << int(c)
    return mask


def kernel_dev(major: int, minor: int) -> int:
    """Kernel-internal dev_t (MINORBITS = 20), as BPF programs see s_dev."""
    return (major << 20) | minor


def split_kernel_dev(dev: int) -> tuple[int, int]:
    return dev >> 20, dev & ((1 << 20) - 1)
