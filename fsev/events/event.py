"""Typed events: what every part of fsev past the ring-buffer boundary sees.

An Event is decoded once from a kernel record (fsev.kernel.records) or made in user
space (loss records, polled thresholds, inotify drops), then enriched with the
mount it belongs to. Its JSON form is documented in docs/events.md.
"""

from __future__ import annotations

import enum
import errno as errno_mod
from dataclasses import dataclass, field, fields, replace
from typing import Any


class EventClass(str, enum.Enum):
    INFO = "info"
    WARN = "warn"
    ERR = "err"
    THR = "thr"


ALL_CLASSES: frozenset[EventClass] = frozenset(EventClass)


class EventType(str, enum.Enum):
    FS_ERROR = "fs_error"
    UMOUNT = "umount"
    THRESHOLD = "threshold"
    LOSS = "loss"
    # health events (fsev/session/pipeline.py)
    READ_ONLY = "read_only"
    ENOSPC = "enospc"
    BLOCK_IO_ERROR = "block_io_error"
    WB_ERROR = "wb_error"
    MOUNT = "mount"
    DEVICE_ERRORS = "device_errors"  # a device's error counters grew (btrfs_dev_stats)
    # a filesystem forced to shut down (XFS today; generic: reasons are the filesystem's)
    SHUTDOWN = "shutdown"
    # fsev's own: a kernel log line on its way to the point that reads it
    # (fsev/points/kernel_log.py); never emitted.
    KERNEL_LOG = "kernel_log"


# Types that travel between fsev's own halves and never reach a sink.
INTERNAL_TYPES: frozenset[EventType] = frozenset({EventType.KERNEL_LOG})


def errno_name(err: int | None) -> str | None:
    if err is None:
        return None
    return errno_mod.errorcode.get(err, f"E{err}")


@dataclass
class Event:
    """One filesystem health event.

    Optional fields are None when the rung that produced the event cannot
    know them (e.g. errno on the ext4:ext4_error tracepoint). Not frozen:
    building one is on the hot path (a frozen dataclass costs 2x per event);
    treat events as values all the same.
    """

    seq: int
    ts_ns: int  # kernel CLOCK_MONOTONIC timestamp
    wall_time: float  # seconds since the epoch, derived from ts_ns
    cls: EventClass
    type: EventType
    rung: str  # "kprobe", "tracepoint", "inotify", "polled", ...
    dev: str | None = None  # "major:minor"
    mount_point: str | None = None
    fs_type: str | None = None
    source: str | None = None
    mnt_id: int | None = None
    pid: int | None = None
    tgid: int | None = None
    comm: str | None = None
    function: str | None = None
    line: int | None = None
    errno: int | None = None
    inode: int | None = None
    block: int | None = None
    path: str | None = None  # umount(2) target as passed by the caller
    lazy: bool | None = None  # umount -l (MNT_DETACH)
    # thresholds
    avail_blocks: int | None = None
    level: str | None = None  # "L1" or "L2"
    level_blocks: int | None = None
    direction: str | None = None  # "down" or "up"
    # loss records
    lost: int | None = None
    lost_total: int | None = None
    since_wall_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)

    def with_mount(self, **kw: Any) -> "Event":
        return replace(self, **kw)

    def to_json_dict(self) -> dict[str, Any]:
        """snake_case keys in a stable order; None fields are left out."""
        out: dict[str, Any] = {
            "seq": self.seq, "ts_ns": self.ts_ns, "wall_time": self.wall_time,
            "class": self.cls.value, "type": self.type.value, "rung": self.rung,
        }
        for name in _OPTIONAL_FIELDS:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.errno is not None:
            out["errno_name"] = self.errno_name
        if self.extra:
            out.update(self.extra)
        return out

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "Event":
        """The inverse of to_json_dict (unknown keys land in extra)."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {"cls": EventClass(d["class"]), "type": EventType(d["type"])}
        extra: dict[str, Any] = {}
        for k, v in d.items():
            if k in ("class", "type", "errno_name"):
                continue
            if k in known and k != "extra":
                kw[k] = v
            else:
                extra[k] = v
        return cls(**kw, extra=extra)


_FIXED = ("seq", "ts_ns", "wall_time", "cls", "type", "rung", "extra")
_OPTIONAL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event) if f.name not in _FIXED)
