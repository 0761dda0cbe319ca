"""Kernel records -> typed Events: the boundary, past which nothing sees raw bytes.

The common fields are decoded here, once for every type; each probe point
decodes its own type's fields (Point.finish), and fsev/points/registry.py
builds the one RecordDecoder that knows them all.
"""

from __future__ import annotations

from typing import Mapping

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.kernel.records import RECORD_STRUCT, Call, Field, RecordClass, Rung
from fsev.probes.point import Finish

_CLASS = {
    RecordClass.INFO: EventClass.INFO,
    RecordClass.WARN: EventClass.WARN,
    RecordClass.ERR: EventClass.ERR,
    RecordClass.THR: EventClass.THR,
}
_RUNG = {Rung.KPROBE: "kprobe", Rung.TRACEPOINT: "tracepoint", Rung.RAW_TRACEPOINT: "raw_tracepoint"}
CALL_NAMES = {int(c): c.name.lower() for c in Call if c is not Call.NONE}


class DecodeError(ValueError):
    pass


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
F_ERRNO, F_INODE, F_BLOCK, F_LINE, F_FUNC, F_PATH, F_MNT_ID, F_LAZY, F_MNTNS = (int(x) for x in (
    Field.ERRNO, Field.INODE, Field.BLOCK, Field.LINE, Field.FUNC, Field.PATH, Field.MNT_ID, Field.LAZY,
    Field.MNTNS))
_unpack = RECORD_STRUCT.unpack_from
_DEVS: dict[int, str] = {}


class RecordDecoder:
    """struct fsev_record -> Event, for the record types it is given."""

    def __init__(self, types: Mapping[int, EventType], finish: Mapping[int, Finish]) -> None:
        self._types = dict(types)
        self._finish = dict(finish)

    def decode(self, raw: bytes, seq: int, clock: Clock) -> Event:
        """One raw record -> Event (not yet enriched)."""
        (ts, ino, block, value, typ_i, cls_i, rung, f, dev, pid, tgid, err, line, mnt_id, level, direction,
         comm, func, path, mntns, call, arg, cause_ns) = _unpack(raw)
        cls = _CLASS_BY_INT.get(cls_i)
        typ = self._types.get(typ_i)
        if cls is None or typ is None:
            raise DecodeError(f"record with unknown class {cls_i} or type {typ_i}")
        # Positional core, then only the fields this record has: a dataclass call
        # with all thirty keywords costs twice as much, and this is the hot path.
        ev = Event(seq, ts, (ts + clock.offset_ns) / 1e9, cls, typ, _RUNG.get(rung, "unknown"))
        if dev:
            text = _DEVS.get(dev)
            if text is None:
                if len(_DEVS) > 4096:
                    _DEVS.clear()
                text = _DEVS[dev] = f"{dev >> 20}:{dev & 0xFFFFF}"  # fsev.linux.device.Device.from_kernel
            ev.dev = text
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
        if call:
            ev.extra["call"] = CALL_NAMES.get(call, f"call{call}")
        if f & F_MNTNS:
            ev.extra["mnt_ns"] = mntns
        if cause_ns:
            ev.extra["_cause_ts"] = cause_ns  # for the half that links the two (read_only's)
        finish = self._finish.get(typ_i)
        if finish is not None:
            finish(ev, f, value, level, direction, mntns, call, arg, func)
        return ev
