"""Decoding of the health records (read-only, ENOSPC, block I/O, writeback,
mount calls): the type-specific part of fsev.decode.decode().

Values that only fsev itself needs on the way (ENOSPC ordinals, mount flags)
go into Event.extra under keys that start with "_"; fsev.health strips them
before an event leaves fsev.
"""

from __future__ import annotations

from .events import Event
from .records import FSEV_H, Call, Field, RecordType, RoBits

CALL_NAMES = {int(c): c.name.lower() for c in Call if c is not Call.NONE}
# Calls that fail with ENOSPC for want of room for data, and those that need
# room for a new inode or directory entry (metadata).
DATA_CALLS = frozenset({Call.WRITE, Call.PWRITE64, Call.WRITEV, Call.PWRITEV, Call.PWRITEV2, Call.FALLOCATE})
METADATA_CALLS = frozenset({Call.OPEN, Call.OPENAT, Call.OPENAT2, Call.CREAT, Call.MKDIR, Call.MKDIRAT})

# mount(2) flags (include/uapi/linux/mount.h), as the kernel record carries them.
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = FSEV_H.FSEV_MS_BIND
MS_MOVE = FSEV_H.FSEV_MS_MOVE
MS_REC = 16384
MS_PROPAGATION = (1 << 15) | (1 << 17) | (1 << 18) | (1 << 19)  # UNBINDABLE, PRIVATE, SLAVE, SHARED
# move_mount(2) flag: the source is a detached mount (fsmount / open_tree).
MOVE_MOUNT_F_EMPTY_PATH = 0x4
FSCONFIG_CMD_RECONFIGURE = FSEV_H.FSEV_FSCONFIG_CMD_RECONFIGURE
MOUNT_ATTR_RDONLY = 0x1

# blk_status_t values that have kept their number since 4.13 -> errno
# (block/blk-core.c blk_errors[]); the rest are reported raw.
BLK_STATUS_ERRNO = {1: 95, 2: 110, 3: 28, 10: 5}

_F_MNTNS = int(Field.MNTNS)
_F_PATH_EXACT = int(Field.PATH_EXACT)


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def ro_flag_name(bits: int) -> str | None:
    """The read-only mechanism a superblock's bits show, the most telling first."""
    if bits & RoBits.EMERGENCY:
        return "emergency_ro"
    if bits & RoBits.SHUTDOWN:
        return "shutdown"
    if bits & RoBits.SB_RDONLY:
        return "sb_rdonly"
    if bits & RoBits.ABORTED:
        return "aborted"
    return None


def mount_action(call: int, flags: int) -> str | None:
    """What a successful mount-table call did; None for calls that change nothing
    a user watches (fsconfig other than reconfigure)."""
    if call == Call.MOUNT:
        if flags & MS_REMOUNT:
            return "remount"
        if flags & MS_BIND:
            return "bind"
        if flags & MS_MOVE:
            return "move"
        if flags & MS_PROPAGATION:
            return "propagation"
        return "mount"
    if call == Call.MOVE_MOUNT:
        return "attach" if flags & MOVE_MOUNT_F_EMPTY_PATH else "move"
    if call == Call.FSCONFIG:
        return "reconfigure" if flags == FSCONFIG_CMD_RECONFIGURE else None
    if call == Call.MOUNT_SETATTR:
        return "setattr"
    if call in (Call.UNSHARE, Call.CLONE, Call.CLONE3):
        return "new_namespace"
    return None


def decode_health(ev: Event, f: int, value: int, mntns: int, call: int, arg: int, func: bytes) -> None:
    """Fill the type-specific fields of a health record's Event, in place."""
    t = ev.type.value
    x = ev.extra
    if call:
        x["call"] = CALL_NAMES.get(call, f"call{call}")
    if f & _F_MNTNS:
        x["mnt_ns"] = mntns
    if t == "read_only":
        x["read_only"] = bool(value)
        x["flag"] = ro_flag_name(value) or ro_flag_name(arg)
        x["cause"] = "error" if call == Call.EXT4_ERROR else "remount"
        x["_cause_ts"] = ev.block  # ktime of the error handling that caused it
        ev.block = None
    elif t == "enospc":
        x["space"] = "data" if call in DATA_CALLS else "metadata"
        x["_ordinal"] = value
        x["_path_exact"] = bool(f & _F_PATH_EXACT) or call in DATA_CALLS
    elif t == "block_io_error":
        x["sector"] = ev.block
        ev.block = None  # a device sector, not a filesystem block
        x["bytes"] = value
        if ev.rung == "kprobe":  # blk_update_request: a blk_status_t, not an errno
            x["blk_status"] = arg
            if arg in BLK_STATUS_ERRNO:
                ev.errno = BLK_STATUS_ERRNO[arg]
        else:
            x["rwbs"] = _text(func)
    elif t == "wb_error":
        x["errseq"] = value
    elif t == "mount":
        x["_flags"] = arg
        action = mount_action(call, arg)
        if action:
            x["action"] = action
        text = _text(func)
        if text:
            if action in ("bind", "move"):
                x["from"] = text
            elif action == "mount":
                x["_fstype"] = text
        if call == Call.MOUNT and arg & MS_REMOUNT:
            x["read_only"] = bool(arg & MS_RDONLY)
        if call == Call.MOUNT_SETATTR:
            x["_attr_set"] = value & 0xFFFFFFFF
            x["_attr_clr"] = value >> 32


HEALTH_TYPES = frozenset(t for t in RecordType if t >= RecordType.READ_ONLY)
