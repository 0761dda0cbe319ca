"""A small reader of the running kernel's BTF (/sys/kernel/btf/vmlinux).

fsev's BPF programs read kernel structs at raw offsets: raw tracepoints hand
over bare pointers, and bcc compiles against stand-in headers that may not
match the running kernel. So every offset must come from the kernel's own type
information. The format is the kernel's Documentation/bpf/btf.rst; no library
on PyPI reads it, and libbpf's Python bindings are not packaged.
"""

from __future__ import annotations

import array
import contextlib
import functools
import hashlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Iterable

VMLINUX = "/sys/kernel/btf/vmlinux"
CACHE_DIR = "/var/cache/fsev"
_MAGIC = 0xEB9F
_CACHE_FORMAT = 1

(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
_KIND_NAMES = ("void", "int", "pointer", "array", "struct", "union", "enum", "fwd",
               "typedef", "volatile", "const", "restrict", "func", "func_proto", "var",
               "datasec", "float", "decl_tag", "type_tag", "enum64")
# u32 words after the 3-word common header: a fixed part, then one item per vlen.
# Records have no length field, so an unknown kind makes the rest unreadable.
_FIXED = (None, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_PER_ITEM = (None, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
# Kinds found by name. FUNCs are most of the types; indexing them on load costs
# little and makes has_func free.
_NAMED = frozenset((INT, STRUCT, UNION, ENUM, TYPEDEF, FUNC, FLOAT, ENUM64))
_QUALIFIERS = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))
_SIZED = frozenset((INT, STRUCT, UNION, ENUM, FLOAT, DATASEC, ENUM64))
_AGGREGATES = (STRUCT, UNION)


class BtfError(Exception):
    """One-line message for a person: what is missing or wrong in which BTF."""


class _Absent(BtfError):
    """The thing asked for does not exist in this kernel (resolve() maps it to None)."""


class Btf:
    """One BTF blob, indexed on load; members and enums are decoded on demand."""

    def __init__(self, data: bytes, *, name: str = "kernel BTF", base: Btf | None = None) -> None:
        self.name = name
        if len(data) < 24:
            raise BtfError(f"{name}: {len(data)} bytes is too short for a BTF header")
        magic = struct.unpack_from("<H", data)[0]
        if magic not in (_MAGIC, 0x9FEB):
            raise BtfError(f"{name}: bad magic {magic:#06x}, not BTF")
        order = "<" if magic == _MAGIC else ">"
        (_, version, _flags, hdr_len, type_off, type_len, str_off,
         str_len) = struct.unpack_from(order + "HBBIIIII", data)
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if version != 1 or type_len % 4 or max(t0 + type_len, s0 + str_len) > len(data):
            raise BtfError(f"{name}: version {version} or section bounds not understood")
        words = array.array("I", data[t0:t0 + type_len])
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        # Split BTF (a module's, on top of vmlinux) numbers its types after the
        # base's and its string offsets after the base's strings, so gluing the
        # two together yields one ordinary BTF that every lookup below can use.
        self._strs: bytes = (base._strs if base else b"") + data[s0:s0 + str_len]
        self._words: array.array[int] = (base._words + words) if base else words
        self._starts: list[int] = list(base._starts) if base else [0]  # id 0 is void
        self._named: dict[int, list[int]] = {k: list(v) for k, v in base._named.items()} if base else {}
        self._offs_memo: dict[str, list[int]] = {}
        self._base_ids = len(base._starts) if base else 1 << 31  # ids below are vmlinux's
        self._index(len(base._words) if base else 0)

    def _index(self, i: int) -> None:
        w, starts, named, n = self._words, self._starts, self._named, len(self._words)
        kind = -1
        try:
            while i < n:
                starts.append(i)
                info = w[i + 1]
                kind = info >> 24 & 0x1F
                if kind in _NAMED:
                    named.setdefault(w[i] << 5 | kind, []).append(len(starts) - 1)
                i += 3 + _FIXED[kind] + (info & 0xFFFF) * _PER_ITEM[kind]  # type: ignore[operator]  # None marks kind 0: TypeError, caught below
        except (IndexError, TypeError):
            raise BtfError(f"{self.name}: unknown kind {kind} or truncated record"
                           f" at type id {len(starts) - 1}") from None
        if i != n:
            raise BtfError(f"{self.name}: last type runs past the type section")

    @classmethod
    def load(cls, path: str = VMLINUX, *, base: Btf | None = None) -> Btf:
        """Read a BTF file; `base` is vmlinux's Btf when `path` is a module's split BTF."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BtfError(f"cannot read kernel BTF {path}: {e.strerror}") from None
        return cls(data, name=f"kernel BTF {path}" if path != VMLINUX else "kernel BTF", base=base)

    def _str_offs(self, name: str) -> list[int]:
        # Strings are NUL-separated, so "\0name\0" finds whole names only; a
        # deduplicated BTF holds each string once, so this is usually one hit.
        # A search costs 1-4 ms; struct names recur across specs, so keep them.
        if (offs := self._offs_memo.get(name)) is None:
            needle, offs, pos = b"\0" + name.encode() + b"\0", [], -1
            while (pos := self._strs.find(needle, pos + 1)) >= 0:
                offs.append(pos + 1)
            self._offs_memo[name] = offs
        return offs

    def _info(self, tid: int) -> tuple[int, int, int, int]:
        """kind, kind_flag, vlen and the word index of type `tid`."""
        if tid == 0:
            return 0, 0, 0, -1
        if not 0 < tid < len(self._starts):
            raise BtfError(f"{self.name}: type id {tid} out of range")
        i = self._starts[tid]
        info = self._words[i + 1]
        return info >> 24 & 0x1F, info >> 31, info & 0xFFFF, i

    def _by_name(self, name: str, kinds: Iterable[int]) -> list[int]:
        offs = self._str_offs(name)
        return [tid for k in kinds for o in offs for tid in self._named.get(o << 5 | k, ())]

    def _strip(self, tid: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag to the real type."""
        kind, _, _, i = self._info(tid)
        while kind in _QUALIFIERS:
            tid = self._words[i + 2]
            kind, _, _, i = self._info(tid)
        return tid

    def _size_of(self, tid: int) -> int:
        tid = self._strip(tid)
        kind, _, _, i = self._info(tid)
        if kind in _SIZED:
            return self._words[i + 2]
        if kind == PTR:
            return self._pointer_size
        if kind == ARRAY:  # btf_array: elem type, index type, nelems
            return self._words[i + 5] * self._size_of(self._words[i + 3])
        raise BtfError(f"{self.name}: type id {tid} ({_KIND_NAMES[kind]}) has no size")

    @functools.cached_property
    def _pointer_size(self) -> int:
        # BTF does not record it; libbpf takes the size of `long` too.
        longs = self._by_name("long unsigned int", (INT,))
        return self._words[self._starts[longs[0]] + 2] if longs else 8

    def _members(self, tid: int) -> Iterable[tuple[int, int, int, int]]:
        """(name offset, type id, bit offset, bitfield size or 0) of each member."""
        _, kflag, vlen, i = self._info(tid)
        w = self._words
        for j in range(i + 3, i + 3 + 3 * vlen, 3):
            off = w[j + 2]
            # With kind_flag the offset word packs bitfield size (high 8 bits)
            # over the bit offset; without it, bitfields show as narrow INTs.
            yield (w[j], w[j + 1], off & 0xFFFFFF, off >> 24) if kflag else (w[j], w[j + 1], off, 0)

    def _find(self, tid: int, offs: list[int]) -> tuple[int, int, int] | None:
        for name_off, mtype, bit, bits in self._members(tid):
            if name_off in offs:
                return bit, mtype, bits
            if name_off == 0:  # anonymous struct/union: its members are ours
                inner = self._strip(mtype)
                if self._info(inner)[0] in _AGGREGATES and (hit := self._find(inner, offs)):
                    return bit + hit[0], hit[1], hit[2]
        return None

    def _walk_one(self, tid: int, root: str, path: list[str]) -> tuple[int, int, int]:
        bit, mtype, bits = 0, tid, 0
        for k, name in enumerate(path):
            outer = self._strip(mtype)
            if self._info(outer)[0] not in _AGGREGATES:
                where = ".".join([root, *path[:k]])
                raise _Absent(f"kernel BTF: {where} has kind {_KIND_NAMES[self._info(outer)[0]]},"
                              f" not an embedded struct or union (offsets do not follow pointers)")
            hit = self._find(outer, self._str_offs(name))
            if hit is None:
                kind, _, _, i = self._info(outer)
                off = self._words[i]
                described = self._strs[off:self._strs.index(b"\0", off)].decode() or "(anonymous)"
                raise _Absent(f"kernel BTF has no member {name!r} in {_KIND_NAMES[kind]} {described}")
            bit, mtype, bits = bit + hit[0], hit[1], hit[2]
        return bit, mtype, bits

    def _walk(self, spec: str) -> tuple[int, int, int]:
        """Bit offset, type id and bitfield size of the member named by `spec`."""
        root, *path = spec.removeprefix("struct ").removeprefix("union ").split(".")
        if not root or not path or not all(path):
            raise BtfError(f"bad member spec {spec!r}: want struct.member[.member...]")
        tids = self._by_name(root, _AGGREGATES)
        if not tids:
            raise _Absent(f"kernel BTF has no struct {root!r}")
        # Distinct structs may share a name (static types in different files);
        # they are fine unless they disagree about this member.
        hits: dict[tuple[int, int], int] = {}
        error: _Absent | None = None
        for tid in tids:
            try:
                bit, mtype, bits = self._walk_one(tid, root, path)
                hits.setdefault((bit, bits), mtype)
            except _Absent as e:
                error = error or e
        if len(hits) > 1:
            raise BtfError(f"kernel BTF has {len(tids)} structs named {root!r} that disagree on {spec}")
        if not hits:
            assert error is not None
            raise error
        ((bit, bits), mtype), = hits.items()
        return bit, mtype, bits

    def _byte_member(self, spec: str) -> tuple[int, int]:
        bit, mtype, bits = self._walk(spec)
        kind, _, _, i = self._info(self._strip(mtype))
        narrow_int = kind == INT and (self._words[i + 3] & 0xFF) != 8 * self._words[i + 2]
        if bits or bit % 8 or narrow_int:
            raise _Absent(f"kernel BTF: {spec} is a bitfield, it has no byte offset")
        return bit // 8, mtype

    def offsetof(self, spec: str) -> int:
        """Byte offset of "struct.member.member..." from the start of the struct."""
        return self._byte_member(spec)[0]

    def member_size(self, spec: str) -> int:
        return self._size_of(self._byte_member(spec)[1])

    def has_member(self, spec: str) -> bool:
        try:
            self._walk(spec)
        except _Absent:
            return False
        return True

    def sizeof(self, type_name: str) -> int:
        """Size of "struct X", "union X", "enum X" or a bare struct/union/typedef/base name."""
        word, _, rest = type_name.partition(" ")
        keyed = {"struct": (STRUCT,), "union": (UNION,), "enum": (ENUM, ENUM64)}
        kinds = keyed.get(word) or (STRUCT, UNION, TYPEDEF, INT, FLOAT, ENUM, ENUM64)
        name = rest if word in keyed else type_name
        for kind in kinds:  # the first kind that has the name decides
            sizes = {self._size_of(tid) for tid in self._by_name(name, (kind,))}
            if len(sizes) > 1:
                raise BtfError(f"kernel BTF has {_KIND_NAMES[kind]}s named {name!r} of sizes {sorted(sizes)}")
            if sizes:
                return sizes.pop()
        raise _Absent(f"kernel BTF has no type {name!r}")

    def has_func(self, name: str) -> bool:
        return bool(self._by_name(name, (FUNC,)))

    def func_param(self, func: str, param: str) -> int:
        """1-based position of the parameter named `param` in the prototype
        of function `func` (what PT_REGS_PARMn reads): argument orders move
        between kernel versions and stable backports, the prototype tells."""
        offs = set(self._str_offs(param))
        for tid in self._by_name(func, (FUNC,)):
            proto = self._words[self._info(tid)[3] + 2]
            kind, _, vlen, i = self._info(proto)
            if kind != FUNC_PROTO:
                continue
            names = self._words[i + 3:i + 3 + 2 * vlen:2]  # (name_off, type) per parameter
            for n, off in enumerate(names, 1):
                if off in offs:
                    return n
            raise _Absent(f"kernel BTF: {func} has no parameter {param!r}")
        raise _Absent(f"kernel BTF has no function {func!r}")

    def raw_tp_btf_id(self, tracepoint: str) -> int | None:
        """Type id of vmlinux's `btf_trace_<tracepoint>` typedef: what a BTF-typed
        raw tracepoint program (tp_btf) names as its attach_btf_id. None for a
        tracepoint of a module (its id would need the module's BTF object)."""
        ids = [t for t in self._by_name("btf_trace_" + tracepoint, (TYPEDEF,)) if t < self._base_ids]
        return ids[0] if ids else None

    def raw_tp_arg_count(self, tracepoint: str) -> int | None:
        """How many arguments the tracepoint passes (a raw tracepoint program's
        ctx->args), from its `btf_trace_<tracepoint>` typedef: a pointer to
        a function (void *__data, the tracepoint's arguments...). A program that
        reads past them is refused at attach time, and tracepoints gain
        arguments across kernels. None if BTF has no such typedef."""
        for tid in self._by_name("btf_trace_" + tracepoint, (TYPEDEF,)):
            kind, _, _, i = self._info(self._strip(tid))
            if kind == PTR:
                kind, _, vlen, _ = self._info(self._words[i + 2])
                if kind == FUNC_PROTO and vlen >= 1:
                    return vlen - 1
        return None

    def enum_value(self, name: str) -> int | None:
        """Value of the enumerator `name` in any enum; None if no enum has it."""
        offs, w, values = self._str_offs(name), self._words, set()
        for tid in self._enum_ids if offs else ():
            kind, signed, vlen, i = self._info(tid)
            step, bits = (2, 32) if kind == ENUM else (3, 64)
            names = w[i + 3:i + 3 + step * vlen:step]  # a C-level slice: scanning is cheap
            for off in offs:
                if off in names:
                    j = i + 3 + step * names.index(off)
                    v = w[j + 1] if kind == ENUM else w[j + 1] | w[j + 2] << 32
                    values.add(v - (1 << bits) if signed and v >> (bits - 1) else v)
        if len(values) > 1:
            raise BtfError(f"kernel BTF has enumerators named {name!r} with values {sorted(values)}")
        return values.pop() if values else None

    @functools.cached_property
    def _enum_ids(self) -> list[int]:
        return [tid for key, tids in self._named.items() if key & 0x1F in (ENUM, ENUM64) for tid in tids]


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # absent: a module that is not loaded, or no BTF at all


def kernel_build_id(btf_path: str = VMLINUX) -> str:
    """Names the running kernel build cheaply: uname release and version, BTF size."""
    u = os.uname()
    return f"{u.release} {u.version} btf={_file_size(btf_path)}"


def resolve(specs: Iterable[str], *, btf_path: str = VMLINUX, cache_dir: str = CACHE_DIR,
            modules: Iterable[str] = ()) -> dict[str, int | None]:
    """Answer specs from BTF, cached per kernel build so a warm start parses nothing.

    "struct.member..." -> byte offset, "func:NAME" -> 1, "param:FUNC.NAME" ->
    1-based position of FUNC's parameter NAME, "sizeof:NAME" -> size,
    "enum:NAME" -> value, "tp_btf:TRACEPOINT" -> vmlinux type id of its
    btf_trace_ typedef, "tp_args:TRACEPOINT" -> how many arguments it passes;
    None when this kernel lacks it (a bitfield, having no byte offset, counts
    as lacking). `modules` names split BTF files beside
    `btf_path` to consult too (e.g. "ext4": a module on Debian kernels, so its
    structs are not in vmlinux); each is skipped while its module is not loaded.
    """
    wanted = list(dict.fromkeys(specs))
    btf_dir = os.path.dirname(btf_path)
    module_paths = [os.path.join(btf_dir, m) for m in modules]
    key = "\n".join([kernel_build_id(btf_path), btf_path]
                    + [f"{p} {_file_size(p)}" for p in module_paths])
    cache_path = os.path.join(cache_dir, f"btf-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json")
    cached = _read_cache(cache_path, key)
    if all(s in cached for s in wanted):
        return {s: cached[s] for s in wanted}

    vmlinux = Btf.load(btf_path)
    # A module's split BTF contains vmlinux too, so each one answers everything.
    views = [Btf.load(p, base=vmlinux) for p in module_paths if os.path.exists(p)] + [vmlinux]
    for spec in wanted:
        cached[spec] = next((v for v in (_answer(b, spec) for b in views) if v is not None), None)
    _write_cache(cache_dir, cache_path, key, cached)
    return {s: cached[s] for s in wanted}


def _answer(btf: Btf, spec: str) -> int | None:
    kind, sep, name = spec.partition(":")
    try:
        if not sep:
            return btf.offsetof(spec)
        if kind == "func":
            return 1 if btf.has_func(name) else None
        if kind == "param":
            func, _, param = name.partition(".")
            return btf.func_param(func, param)
        if kind == "sizeof":
            return btf.sizeof(name)
        if kind == "enum":
            return btf.enum_value(name)
        if kind == "tp_btf":
            return btf.raw_tp_btf_id(name)
        if kind == "tp_args":
            return btf.raw_tp_arg_count(name)
    except _Absent:
        return None
    raise BtfError(f"bad spec {spec!r}: want struct.member, func:, param:, sizeof:, enum:, tp_btf: or tp_args:")


def _read_cache(path: str, key: str) -> dict[str, int | None]:
    # Anything unexpected means "no cache": it is rebuilt from BTF, never trusted.
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        values = doc["values"]
        if doc["format"] != _CACHE_FORMAT or doc["key"] != key or not isinstance(values, dict):
            return {}
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values.values()):
            return dict(values)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _write_cache(cache_dir: str, path: str, key: str, values: dict[str, int | None]) -> None:
    # Best effort: a read-only or missing cache dir only costs the next start a parse.
    tmp = ""
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".btf-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": _CACHE_FORMAT, "key": key, "values": values}, f, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError:
        with contextlib.suppress(OSError):
            if tmp:
                os.unlink(tmp)
