"""The Python side of bpf/fsev.h: its numbers and enums, read from the header
itself, the record layout, mirrored here once, and its decoding into Events.

The integer #defines (FSEV_H) and the enums (RecordClass, RecordType, ...)
are parsed from the installed bpf/fsev.h at import, so no number the kernel
side uses is written a second time in Python. The ctypes structs below are
hand-written mirrors; tests/kernel/test_records_contract.py compiles bpf/fsev.h with
bcc and checks field names, offsets and sizeof against them.
"""

from __future__ import annotations

import ast
import ctypes
import enum
import re
import struct
import types
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import Device

HEADER = "fsev.h"


def header_text() -> str:
    """bpf/fsev.h as installed in the package (fsev.bpf, as fsev/probes/program.py
    bpf_dir() finds it); in a source tree that is not installed, bpf/ beside
    fsev/."""
    try:
        return (resources.files("fsev.bpf") / HEADER).read_text()
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parents[2] / "bpf" / HEADER).read_text()


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
# Object-like macros only: a "(" right after the name makes a function-like one.
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?:[ \t]+(.*?))?[ \t]*$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]+\b")
_OPS = {ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b,
        ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b, ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a, ast.Invert: lambda a: ~a}


def c_int(expr: str, names: Mapping[str, int]) -> int | None:
    """The value of a C integer constant expression made of literals (any
    u/l suffix), names already known, ( ) and | & ^ << >> + - * ~; None for
    anything else (a string, a type, an unknown name)."""
    text = _INT_SUFFIX.sub(r"\1", expr.strip())
    try:  # (a C octal literal such as 0755 is a SyntaxError in Python: None)
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return n.value
        if isinstance(n, ast.Name) and n.id in names:
            return names[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _UNARY:
            return _UNARY[type(n.op)](ev(n.operand))
        raise ValueError(ast.dump(n))

    try:
        return ev(tree.body)
    except ValueError:
        return None


def parse_header(text: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(integer #defines by name, enums by tag: {member: value}) of a C header,
    in the order written. Enum members without "=" take the previous + 1."""
    text = _COMMENT.sub(" ", text)
    defines: dict[str, int] = {}
    enums: dict[str, dict[str, int]] = {}
    known: dict[str, int] = {}
    items = [(m.start(), "define", m) for m in _DEFINE.finditer(text)]
    items += [(m.start(), "enum", m) for m in _ENUM.finditer(text)]
    for _, kind, m in sorted(items, key=lambda t: t[0]):
        if kind == "define":
            v = c_int(m.group(2) or "", known)
            if v is not None:
                defines[m.group(1)] = known[m.group(1)] = v
            continue
        members: dict[str, int] = {}
        nxt = 0
        for part in m.group(2).split(","):
            if not part.strip():
                continue
            name, _, expr = part.partition("=")
            v = c_int(expr, known) if expr else nxt
            if v is None:
                raise ValueError(f"{HEADER}: enum {m.group(1)}: cannot evaluate {part.strip()!r}")
            members[name.strip()] = known[name.strip()] = v
            nxt = v + 1
        enums[m.group(1)] = members
    return defines, enums


_DEFINES, _ENUMS = parse_header(header_text())
# Every integer #define of bpf/fsev.h, by its C name: FSEV_H.FSEV_ENOSPC.
FSEV_H = types.SimpleNamespace(**_DEFINES)


def _enum(kind: enum.EnumMeta, name: str, tag: str, prefix: str, doc: str) -> Any:
    """A Python enum of bpf/fsev.h's `enum tag`, members named without prefix.
    `kind` is enum.IntEnum or enum.IntFlag, typed by their metaclass, which is
    where the functional API (name, members) is declared. The result is Any:
    its members come from the header at import time, which mypy cannot see. A
    name declared Any (RecordClass) may also stand in this module's annotations."""
    members = [(k.removeprefix(prefix), v) for k, v in _ENUMS[tag].items()]
    e = kind(name, members, module=__name__, qualname=name)
    e.__doc__ = doc
    return e


COMM_LEN = FSEV_H.FSEV_COMM_LEN
FUNC_LEN = FSEV_H.FSEV_FUNC_LEN
PATH_LEN = FSEV_H.FSEV_PATH_LEN
TEXT_LEN = FSEV_H.FSEV_TEXT_LEN  # a record whose func and path hold one text (FSEV_F_TEXT)

RecordClass: Any = _enum(enum.IntEnum, "RecordClass", "fsev_class", "FSEV_CLASS_", "enum fsev_class: a record's class.")
RecordType = _enum(enum.IntEnum, "RecordType", "fsev_type", "FSEV_TYPE_", "enum fsev_type: what a record reports.")
Rung = _enum(enum.IntEnum, "Rung", "fsev_rung", "FSEV_RUNG_", "enum fsev_rung: how the record was obtained.")
Field = _enum(enum.IntFlag, "Field", "fsev_field", "FSEV_F_", "enum fsev_field: which optional fields are filled.")
Call = _enum(enum.IntEnum, "Call", "fsev_call", "FSEV_CALL_", "enum fsev_call: the call behind a record.")
RoBits = _enum(enum.IntFlag, "RoBits", "fsev_ro_bits", "FSEV_RO_", "enum fsev_ro_bits: a superblock's read-only state.")
Direction = _enum(enum.IntEnum, "Direction", "fsev_direction", "FSEV_DIR_", "enum fsev_direction: a crossing's way.")
XfsReport = _enum(enum.IntEnum, "XfsReport", "fsev_xfs_report", "FSEV_XFS_", "enum fsev_xfs_report: what XFS reported.")
XfsScope = _enum(enum.IntEnum, "XfsScope", "fsev_xfs_scope", "FSEV_XFS_SCOPE_",
                 "enum fsev_xfs_scope: a health mark's scope.")


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
        ("mntns", ctypes.c_uint64),
        ("call", ctypes.c_uint32),
        ("arg", ctypes.c_uint32),
        ("cause_ns", ctypes.c_uint64),
    ]


RECORD_SIZE = ctypes.sizeof(Record)


def _struct_format(rec: type[ctypes.Structure]) -> str:
    """A struct-module format equal to the ctypes layout, derived from it (not
    written twice): the hot path unpacks raw bytes with it, which is several
    times cheaper than building a ctypes object per record."""
    codes: dict[type, str] = {ctypes.c_uint64: "Q", ctypes.c_uint32: "I", ctypes.c_int32: "i"}
    fmt, pos = "<", 0
    for name, ctype, *_ in rec._fields_:
        off = getattr(rec, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += f"{ctypes.sizeof(ctype)}s" if issubclass(ctype, ctypes.Array) else codes[ctype]
        pos = off + ctypes.sizeof(ctype)
    if ctypes.sizeof(rec) > pos:
        fmt += f"{ctypes.sizeof(rec) - pos}x"
    return fmt


RECORD_STRUCT = struct.Struct(_struct_format(Record))
# A run of records as the ring buffer holds them (fsev.kernel.ringbuf.read_runs):
# each after its 8-byte header, padded to the ring's 8-byte alignment.
RUN_STRIDE = (RECORD_SIZE + 8 + 7) & ~7
RUN_STRUCT = struct.Struct("<8x" + _struct_format(Record)[1:] + f"{RUN_STRIDE - 8 - RECORD_SIZE}x")
RECORD_FIELDS: tuple[str, ...] = tuple(name for name, *_ in Record._fields_)


THR_SLOTS = FSEV_H.FSEV_THR_SLOTS  # watched superblocks with a kernel rung, at most
ThrKind = _enum(enum.IntEnum, "ThrKind", "fsev_thr_kind", "FSEV_THR_",
                "enum fsev_thr_kind: which counters a superblock's available blocks come from.")


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


# -- decoding: the boundary, past which nothing sees raw bytes ---------------
# The common fields are decoded here, once for every type; each probe point
# decodes its own type's fields (Point.finish in fsev/points/<name>.py), and
# fsev/points/registry.py builds the one RecordDecoder that knows them all.

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


def c_string(b: bytes) -> str:
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
F_ERRNO, F_INODE, F_BLOCK, F_LINE, F_FUNC, F_PATH, F_MNT_ID, F_LAZY, F_MNTNS, F_TEXT = (int(x) for x in (
    Field.ERRNO, Field.INODE, Field.BLOCK, Field.LINE, Field.FUNC, Field.PATH, Field.MNT_ID, Field.LAZY,
    Field.MNTNS, Field.TEXT))
_unpack = RECORD_STRUCT.unpack_from
_DEVS: dict[int, str] = {}


# A record's type-specific fields, after the common ones: ev, then the
# record's fields bits, value, level, direction, mntns, call, arg, func bytes
# (with FSEV_F_TEXT: func and path together, the record's one text).
Finish = Callable[[Event, int, int, int, int, int, int, int, bytes], None]


class RecordDecoder:
    """struct fsev_record -> Event, for the record types it is given."""

    def __init__(self, types: Mapping[int, EventType], finish: Mapping[int, Finish]) -> None:
        self._types = dict(types)
        self._finish = dict(finish)

    def decode(self, raw: bytes, seq: int, clock: Clock) -> Event:
        """One raw record -> Event (not yet enriched)."""
        return self._build(_unpack(raw), seq, clock.offset_ns)

    def decode_runs(self, items: list[bytes], clock: Clock, out: list[Event]) -> None:
        """What RingReader.read_runs gave (runs of records with their headers,
        and lone records without) -> Events appended to out, seq 0. A record
        that does not decode is left out. One iter_unpack per run: the tuples
        come out of C without a bytes object or a call per record."""
        build, offset, run_iter = self._build, clock.offset_ns, RUN_STRUCT.iter_unpack
        append = out.append
        for item in items:
            if len(item) % RUN_STRIDE == 0:
                for t in run_iter(item):
                    try:
                        append(build(t, 0, offset))
                    except DecodeError:
                        continue
            else:
                try:
                    append(build(_unpack(item), 0, offset))
                except (DecodeError, struct.error):
                    continue

    def _build(self, t: tuple[Any, ...], seq: int, offset_ns: int) -> Event:
        (ts, ino, block, value, typ_i, cls_i, rung, f, dev, pid, tgid, err, line, mnt_id, level, direction,
         comm, func, path, mntns, call, arg, cause_ns) = t
        cls = _CLASS_BY_INT.get(cls_i)
        typ = self._types.get(typ_i)
        if cls is None or typ is None:
            raise DecodeError(f"record with unknown class {cls_i} or type {typ_i}")
        # Positional core, then only the fields this record has: a dataclass call
        # with all thirty keywords costs twice as much, and this is the hot path.
        ev = Event(seq, ts, (ts + offset_ns) / 1e9, cls, typ, _RUNG.get(rung, "unknown"))
        if dev:
            text = _DEVS.get(dev)
            if text is None:
                if len(_DEVS) > 4096:
                    _DEVS.clear()
                text = _DEVS[dev] = str(Device.from_kernel(dev))
            ev.dev = text
        ev.pid = pid
        ev.tgid = tgid
        text = _TEXT_CACHE.get(comm)
        ev.comm = text if text is not None else c_string(comm)
        if f & F_FUNC:
            text = _TEXT_CACHE.get(func)
            ev.function = text if text is not None else c_string(func)
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
            ev.path = c_string(path)
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
            finish(ev, f, value, level, direction, mntns, call, arg, func + path if f & F_TEXT else func)
        return ev
