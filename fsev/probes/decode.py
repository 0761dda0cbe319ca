"""Kernel records -> typed Events, and enrichment with the mount they concern.

This is the boundary: past it nothing sees raw bytes.
"""

from __future__ import annotations

import time

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount, MountTable
from fsev.probes.health_records import decode_health
from fsev.kernel.records import RECORD_STRUCT, Field, RecordClass, RecordType, Rung

_CLASS = {
    RecordClass.INFO: EventClass.INFO,
    RecordClass.WARN: EventClass.WARN,
    RecordClass.ERR: EventClass.ERR,
    RecordClass.THR: EventClass.THR,
}
_TYPE = {
    RecordType.FS_ERROR: EventType.FS_ERROR,
    RecordType.UMOUNT: EventType.UMOUNT,
    RecordType.THRESHOLD: EventType.THRESHOLD,
    RecordType.READ_ONLY: EventType.READ_ONLY,
    RecordType.ENOSPC: EventType.ENOSPC,
    RecordType.BLOCK_IO_ERROR: EventType.BLOCK_IO_ERROR,
    RecordType.WB_ERROR: EventType.WB_ERROR,
    RecordType.MOUNT: EventType.MOUNT,
}
_RUNG = {Rung.KPROBE: "kprobe", Rung.TRACEPOINT: "tracepoint", Rung.RAW_TRACEPOINT: "raw_tracepoint"}


class DecodeError(ValueError):
    pass


class Clock:
    """Maps kernel CLOCK_MONOTONIC nanoseconds to wall time."""

    def __init__(self) -> None:
        # time.monotonic_ns() is CLOCK_MONOTONIC on Linux, as bpf_ktime_get_ns().
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def wall(self, ts_ns: int) -> float:
        return (ts_ns + self.offset_ns) / 1e9


_TEXT_CACHE: dict[bytes, str] = {}


def _text(b: bytes) -> str:
    """NUL-terminated kernel string -> str. comm and function names repeat
    endlessly in a flood, so the answers are kept (in a bounded cache)."""
    s = _TEXT_CACHE.get(b)
    if s is None:
        if len(_TEXT_CACHE) > 8192:
            _TEXT_CACHE.clear()
        s = _TEXT_CACHE[b] = b.split(b"\0", 1)[0].decode("utf-8", "replace")
    return s


# Plain-int lookups: enum construction per record would double decode time.
_CLASS_BY_INT = {int(k): v for k, v in _CLASS.items()}
_TYPE_BY_INT = {int(k): v for k, v in _TYPE.items()}
_DIRECTION = {1: "down", 2: "up"}
F_ERRNO, F_INODE, F_BLOCK, F_LINE, F_FUNC, F_PATH, F_MNT_ID, F_LAZY, F_SETTLE = (int(x) for x in (
    Field.ERRNO, Field.INODE, Field.BLOCK, Field.LINE, Field.FUNC, Field.PATH, Field.MNT_ID, Field.LAZY,
    Field.SETTLE))
_unpack = RECORD_STRUCT.unpack_from
_FIRST_HEALTH_TYPE = int(RecordType.READ_ONLY)


def decode(raw: bytes, seq: int, clock: Clock) -> Event:
    """One raw struct fsev_record -> Event (not yet enriched)."""
    (ts, ino, block, value, typ_i, cls_i, rung, f, dev, pid, tgid, err, line, mnt_id, level, direction,
     comm, func, path, mntns, call, arg) = _unpack(raw)
    cls = _CLASS_BY_INT.get(cls_i)
    typ = _TYPE_BY_INT.get(typ_i)
    if cls is None or typ is None:
        raise DecodeError(f"record with unknown class {cls_i} or type {typ_i}")
    # Positional core, then only the fields this record has: a dataclass call
    # with all thirty keywords costs twice as much, and this is the hot path.
    ev = Event(seq, ts, (ts + clock.offset_ns) / 1e9, cls, typ, _RUNG.get(rung, "unknown"))
    if dev:
        ev.dev = f"{dev >> 20}:{dev & 0xFFFFF}"
    ev.pid = pid
    ev.tgid = tgid
    ev.comm = _text(comm)
    if f & F_FUNC:
        ev.function = _text(func)
    if f & F_LINE:
        ev.line = line
    if f & F_ERRNO:
        ev.errno = err
    if f & F_INODE:
        ev.inode = ino
    if f & F_BLOCK:
        ev.block = block
    if f & F_MNT_ID:
        ev.mnt_id = mnt_id
    if f & F_PATH:
        ev.path = _text(path)
        if typ is EventType.UMOUNT:
            ev.lazy = bool(f & F_LAZY)
    if typ is EventType.THRESHOLD:
        ev.avail_blocks = value
        ev.level = f"L{level}"
        ev.direction = _DIRECTION.get(direction)
        if f & F_SETTLE:
            # A kernel threshold hint whose change comes after it (fsev/thresholds/monitor.py).
            ev.extra["settle"] = True
    elif typ_i >= _FIRST_HEALTH_TYPE:
        decode_health(ev, f, value, mntns, call, arg, func)
    return ev


def with_mount(ev: Event, m: Mount | None) -> Event:
    """Fill the mount fields in place (events are fresh values at this point)."""
    if m is not None:
        ev.mount_point = m.mount_point
        ev.fs_type = m.fs_type
        ev.source = m.source
        ev.dev = ev.dev or m.dev
        if ev.mnt_id is None:
            ev.mnt_id = m.mnt_id
    return ev


class Enricher:
    """Names the mount an event concerns, preferring the mounts the user watches."""

    def __init__(self, table: MountTable, watched_mount_points: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.watched = watched_mount_points
        # A flood of errors names the same mount again and again: remember the
        # answer until the mount table changes.
        self._cache: dict[tuple[str | None, int | None, str | None], Mount | None] = {}
        self._generation = table.generation

    def _pick(self, mounts: list[Mount]) -> Mount | None:
        if not mounts:
            return None
        for m in mounts:
            if m.mount_point in self.watched:
                return m
        return mounts[0]

    def mount_for(self, ev: Event) -> Mount | None:
        if ev.mnt_id is not None:
            m = self.table.by_id(ev.mnt_id)
            if m is not None:
                return m
        if ev.path is not None:
            m = self.table.by_mount_point(ev.path) or self.table.departed_by_mount_point(ev.path)
            if m is not None:
                return m
        if ev.dev is not None:
            major, _, minor = ev.dev.partition(":")
            return self._pick(self.table.by_dev(int(major), int(minor))) or self._pick(
                self.table.departed_by_dev(int(major), int(minor))
            )
        return None

    def enrich(self, ev: Event) -> Event:
        if self._generation != self.table.generation:
            self._cache.clear()
            self._generation = self.table.generation
        key = (ev.dev, ev.mnt_id, ev.path)
        try:
            m = self._cache[key]
        except KeyError:
            m = self._cache[key] = self.mount_for(ev)
        return with_mount(ev, m)
