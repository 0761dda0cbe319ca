"""fsev.kernel.btf on small BTF blobs built here: no kernel, no root."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from fsev.kernel import btf as btf_mod
from fsev.kernel.btf import Btf, BtfError, _answer, resolve

# Kind numbers from the kernel's Documentation/bpf/btf.rst, spelled out again
# here so the encoder does not trust the module under test.
K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = 9, 10, 11, 12, 13, 14, 15
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19


class BtfWriter:
    """Encodes types the way pahole does; add() returns the new type id."""

    def __init__(self, *, first_id: int = 1, str_base: int = 0, order: str = "<") -> None:
        self.order, self.next_id, self.str_base = order, first_id, str_base
        self.strs = bytearray(b"" if str_base else b"\0")
        self.types = bytearray()
        self._seen: dict[str, int] = {}

    def s(self, name: str) -> int:
        if not name:
            return 0
        if name not in self._seen:
            self._seen[name] = self.str_base + len(self.strs)
            self.strs += name.encode() + b"\0"
        return self._seen[name]

    def add(self, kind: int, name: str = "", size_or_type: int = 0, *, vlen: int = 0,
            kflag: int = 0, tail: tuple[int, ...] = ()) -> int:
        info = kflag << 31 | kind << 24 | vlen
        self.types += struct.pack(f"{self.order}III{len(tail)}I", self.s(name), info, size_or_type, *tail)
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int, bits: int | None = None, signed: bool = True) -> int:
        return self.add(K_INT, name, size, tail=((1 if signed else 0) << 24 | (bits or size * 8),))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], *,
               kind: int = K_STRUCT, kflag: int = 0) -> int:
        tail = tuple(x for m, t, off in members for x in (self.s(m), t, off))
        return self.add(kind, name, size, vlen=len(members), kflag=kflag, tail=tail)

    def blob(self, magic: int = 0xEB9F) -> bytes:
        hdr = struct.pack(f"{self.order}HBBIIIII", magic, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strs))
        return hdr + bytes(self.types) + bytes(self.strs)


def sample() -> BtfWriter:
    w = BtfWriter()
    int_t = w.int_("int", 4)
    ulong = w.int_("long unsigned int", 8, signed=False)
    inner = w.struct("inner", 8, [("a", int_t, 0), ("b", int_t, 32)])
    anon_union = w.struct("", 8, [("u_long", ulong, 0), ("u_inner", inner, 0)], kind=K_UNION)
    inner_t = w.add(K_TYPEDEF, "inner_t", inner)
    const_inner = w.add(K_CONST, "", inner_t)
    vol_int = w.add(K_VOLATILE, "", int_t)
    ptr = w.add(K_PTR, "", inner)
    arr = w.add(K_ARRAY, "", 0, tail=(int_t, int_t, 3))
    anon_struct = w.struct("", 8, [("deep", vol_int, 32)])
    # kind_flag struct: member offsets pack (bitfield size << 24 | bit offset).
    w.struct("outer", 64, [
        ("first", int_t, 0),
        ("", anon_union, 64),
        ("nested", const_inner, 128),
        ("p", ptr, 192),
        ("flags", int_t, 3 << 24 | 256),
        ("arr", arr, 288),
        ("", anon_struct, 384),
    ], kflag=1)
    # No kind_flag: a bitfield shows as an INT narrower than its size.
    w.struct("old_style", 4, [("bits", w.int_("", 4, bits=3), 0), ("whole", int_t, 0)])
    proto = w.add(K_FUNC_PROTO, "", int_t, vlen=1, tail=(w.s("x"), int_t))
    func = w.add(K_FUNC, "my_func", proto, vlen=1)  # vlen of a FUNC is its linkage
    w.add(K_ENUM, "colour", 4, vlen=2, kflag=1, tail=(w.s("RED"), 0, w.s("BLUE"), 0xFFFFFFFE))
    w.add(K_ENUM64, "big", 8, vlen=1, tail=(w.s("HUGE"), 0, 1 << 8))
    w.add(K_ENUM, "", 4, vlen=1, tail=(w.s("CLASH"), 1))
    w.add(K_ENUM, "", 4, vlen=1, tail=(w.s("CLASH"), 2))
    var = w.add(K_VAR, "my_var", int_t, tail=(1,))
    w.add(K_DATASEC, ".data", 4, vlen=1, tail=(var, 0, 4))
    w.add(K_FLOAT, "double", 8)
    w.add(K_DECL_TAG, "bpf_kfunc", func, tail=(0xFFFFFFFF,))
    w.add(K_TYPE_TAG, "user", int_t)
    w.add(K_FWD, "forward_only")
    w.add(K_RESTRICT, "", ptr)
    w.struct("twice", 4, [("x", int_t, 0)])
    w.struct("twice", 8, [("y", int_t, 0), ("x", int_t, 32)])
    return w


@pytest.fixture
def btf() -> Btf:
    return Btf(sample().blob())


def test_offsets_through_anonymous_members_and_qualifiers(btf: Btf) -> None:
    assert btf.offsetof("outer.first") == 0
    assert btf.offsetof("outer.u_long") == 8  # inside an anonymous union
    assert btf.offsetof("outer.u_inner.b") == 12
    assert btf.offsetof("outer.nested.b") == 20  # through const, then typedef
    assert btf.offsetof("struct outer.p") == 24
    assert btf.offsetof("outer.deep") == 52  # anonymous struct at 48, member at +4


def test_sizes(btf: Btf) -> None:
    assert btf.member_size("outer.u_inner") == 8
    assert btf.member_size("outer.nested") == 8
    assert btf.member_size("outer.arr") == 12
    assert btf.member_size("outer.p") == 8
    assert btf.sizeof("struct outer") == 64
    assert btf.sizeof("outer") == 64
    assert btf.sizeof("inner_t") == 8
    assert btf.sizeof("enum colour") == 4
    assert btf.sizeof("double") == 8


def test_has_member(btf: Btf) -> None:
    assert btf.has_member("outer.u_inner.a")
    assert btf.has_member("outer.flags")  # a bitfield exists, it just has no byte offset
    assert not btf.has_member("outer.missing")
    assert not btf.has_member("no_such_struct.x")
    assert not btf.has_member("outer.p.a")  # does not follow pointers


def test_functions_and_enums(btf: Btf) -> None:
    assert btf.has_func("my_func")
    assert not btf.has_func("my_var")
    assert not btf.has_func("int")
    assert btf.enum_value("RED") == 0
    assert btf.enum_value("BLUE") == -2  # kind_flag: signed
    assert btf.enum_value("HUGE") == 1 << 40
    assert btf.enum_value("GREEN") is None


@pytest.mark.parametrize(("call", "arg", "message"), [
    ("offsetof", "outer.missing", "kernel BTF has no member 'missing' in struct outer"),
    ("offsetof", "inner.b.c", "inner.b has kind int, not an embedded struct"),
    ("offsetof", "outer.p.a", "outer.p has kind pointer"),
    ("offsetof", "outer.arr.x", "outer.arr has kind array"),
    ("offsetof", "nothing.x", "kernel BTF has no struct 'nothing'"),
    ("offsetof", "outer.flags", "outer.flags is a bitfield"),
    ("offsetof", "old_style.bits", "old_style.bits is a bitfield"),
    ("member_size", "outer.flags", "outer.flags is a bitfield"),
    ("offsetof", "outer", "bad member spec"),
    ("offsetof", "outer..first", "bad member spec"),
    ("offsetof", "twice.x", "structs named 'twice' that disagree"),
    ("sizeof", "twice", "sizes [4, 8]"),
    ("sizeof", "struct forward_only", "no type 'forward_only'"),
    ("enum_value", "CLASH", "values [1, 2]"),
])
def test_errors_are_one_line_and_say_what(btf: Btf, call: str, arg: str, message: str) -> None:
    with pytest.raises(BtfError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        getattr(btf, call)(arg)
    assert "\n" not in str(e.value)


def test_duplicate_struct_names_that_agree_are_fine(btf: Btf) -> None:
    assert btf.has_member("twice.y")
    assert btf.offsetof("twice.y") == 0  # only one of the two has y


def test_old_style_plain_member(btf: Btf) -> None:
    assert btf.offsetof("old_style.whole") == 0


def test_big_endian_blob() -> None:
    w = BtfWriter(order=">")
    int_t = w.int_("int", 4)
    w.struct("s", 8, [("a", int_t, 0), ("b", int_t, 32)])
    assert Btf(w.blob()).offsetof("s.b") == 4


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (b"\x00" * 64, "bad magic 0x0000"),
    (sample().blob()[:100], "section bounds"),
])
def test_bad_blobs(data: bytes, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf(data)


def test_unknown_kind_is_reported() -> None:
    w = BtfWriter()
    w.int_("int", 4)
    w.add(25, "future")
    with pytest.raises(BtfError, match="unknown kind 25 .*type id 2"):
        Btf(w.blob())


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read kernel BTF .*No such file"):
        Btf.load(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"ELF" + b"\0" * 100)
    with pytest.raises(BtfError, match="bad magic"):
        Btf.load(str(bad))


def split_pair() -> tuple[bytes, bytes]:
    """vmlinux-like base plus a module's split BTF that uses the base's int."""
    base = BtfWriter()
    int_t = base.int_("int", 4)
    base.struct("super_block", 16, [("s_dev", int_t, 0), ("s_fs_info", int_t, 64)])
    ptr = base.add(K_PTR, "", int_t)
    base.add(K_TYPEDEF, "btf_trace_mm_lru_insertion", ptr)  # id 4
    mod = BtfWriter(first_id=base.next_id, str_base=len(base.strs))
    mod.struct("ext4_sb_info", 8, [("s_pad", int_t, 0), ("s_cluster_bits", int_t, 32)])
    proto = mod.add(K_FUNC_PROTO, "", int_t)
    mod.add(K_FUNC, "__ext4_error", proto)
    mod.add(K_TYPEDEF, "btf_trace_ext4_error", ptr)
    return base.blob(), mod.blob()


def test_split_btf_of_a_module(tmp_path: Path) -> None:
    base_blob, mod_blob = split_pair()
    (tmp_path / "vmlinux").write_bytes(base_blob)
    (tmp_path / "ext4").write_bytes(mod_blob)
    base = Btf.load(str(tmp_path / "vmlinux"))
    mod = Btf.load(str(tmp_path / "ext4"), base=base)
    assert mod.offsetof("ext4_sb_info.s_cluster_bits") == 4
    assert mod.member_size("ext4_sb_info.s_cluster_bits") == 4  # type from the base
    assert mod.offsetof("super_block.s_fs_info") == 8
    assert mod.has_func("__ext4_error") and not base.has_func("__ext4_error")
    assert not base.has_member("ext4_sb_info.s_cluster_bits")
    # tp_btf attach ids: vmlinux's only (a module's would need its BTF object).
    assert base.raw_tp_btf_id("mm_lru_insertion") == mod.raw_tp_btf_id("mm_lru_insertion") == 4
    assert mod.raw_tp_btf_id("ext4_error") is None and base.raw_tp_btf_id("nope") is None


# -- resolve() and its cache ------------------------------------------------

SPECS = ["outer.u_inner.b", "outer.nope", "nothing.x", "func:my_func", "func:nope",
         "sizeof:struct outer", "sizeof:nothing", "enum:BLUE", "enum:GREEN"]
EXPECTED = {"outer.u_inner.b": 12, "outer.nope": None, "nothing.x": None, "func:my_func": 1,
            "func:nope": None, "sizeof:struct outer": 64, "sizeof:nothing": None,
            "enum:BLUE": -2, "enum:GREEN": None}


@pytest.fixture
def blob_path(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinux"
    p.write_bytes(sample().blob())
    return p


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("btf-*.json"))


def test_resolve_answers_every_kind_of_spec(blob_path: Path, tmp_path: Path) -> None:
    assert resolve(SPECS, btf_path=str(blob_path), cache_dir=str(tmp_path / "c")) == EXPECTED


def test_resolve_rejects_unknown_spec_kinds(blob_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="bad spec 'size:outer'"):
        resolve(["size:outer"], btf_path=str(blob_path), cache_dir=str(tmp_path / "c"))


def test_cache_hit_does_not_parse(blob_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    assert resolve(SPECS, btf_path=str(blob_path), cache_dir=str(cache)) == EXPECTED
    [cached] = cache_files(cache)
    assert btf_mod.kernel_build_id(str(blob_path)) in json.loads(cached.read_text())["key"]
    # Same size, so the same build id, but no longer BTF: only the cache can answer.
    blob_path.write_bytes(b"\xff" * blob_path.stat().st_size)
    monkeypatch.setattr(Btf, "load", lambda *a, **k: pytest.fail("cache hit parsed BTF"))
    assert resolve(SPECS[:3], btf_path=str(blob_path), cache_dir=str(cache)) == {
        s: EXPECTED[s] for s in SPECS[:3]}


def test_cache_miss_for_a_new_spec_parses_and_keeps_the_old(blob_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    resolve(["outer.first"], btf_path=str(blob_path), cache_dir=str(cache))
    assert resolve(["outer.p"], btf_path=str(blob_path), cache_dir=str(cache)) == {"outer.p": 24}
    [cached] = cache_files(cache)
    assert json.loads(cached.read_text())["values"] == {"outer.first": 0, "outer.p": 24}


def test_other_kernel_build_gets_its_own_cache_file(blob_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    resolve(["outer.first"], btf_path=str(blob_path), cache_dir=str(cache))
    w = sample()
    w.int_("padding_to_change_the_size", 4)
    blob_path.write_bytes(w.blob())
    resolve(["outer.first"], btf_path=str(blob_path), cache_dir=str(cache))
    assert len(cache_files(cache)) == 2


@pytest.mark.parametrize("junk", [b"", b"{not json", b"[]", b'{"format": 1}',
                                  b'{"format": 1, "key": "K", "values": {"outer.first": "0"}}'])
def test_corrupt_cache_is_ignored_and_rewritten(blob_path: Path, tmp_path: Path, junk: bytes) -> None:
    cache = tmp_path / "cache"
    resolve(["outer.first"], btf_path=str(blob_path), cache_dir=str(cache))
    [cached] = cache_files(cache)
    key = json.loads(cached.read_text())["key"]
    cached.write_bytes(junk.replace(b'"K"', json.dumps(key).encode()))
    assert resolve(["outer.first"], btf_path=str(blob_path), cache_dir=str(cache)) == {"outer.first": 0}
    assert json.loads(cached.read_text())["values"] == {"outer.first": 0}
    assert [p.name for p in cache.iterdir()] == [cached.name]  # no temp files left behind


def test_unwritable_cache_dir_is_not_an_error(blob_path: Path, tmp_path: Path) -> None:
    # A regular file where the directory should be: refused even to root.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert resolve(SPECS, btf_path=str(blob_path), cache_dir=str(blocker / "fsev")) == EXPECTED


def test_resolve_without_btf_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read kernel BTF"):
        resolve(["a.b"], btf_path=str(tmp_path / "none"), cache_dir=str(tmp_path / "c"))


def test_resolve_consults_module_btf_when_loaded(tmp_path: Path) -> None:
    base_blob, mod_blob = split_pair()
    (tmp_path / "vmlinux").write_bytes(base_blob)
    specs = ["ext4_sb_info.s_cluster_bits", "super_block.s_fs_info", "func:__ext4_error"]
    kwargs: dict[str, Any] = {"btf_path": str(tmp_path / "vmlinux"), "cache_dir": str(tmp_path / "c"),
                              "modules": ["ext4"]}
    assert resolve(specs, **kwargs) == {specs[0]: None, specs[1]: 8, specs[2]: None}
    (tmp_path / "ext4").write_bytes(mod_blob)  # the module is loaded: a different cache key
    assert resolve(specs, **kwargs) == {specs[0]: 4, specs[1]: 8, specs[2]: 1}
    assert len(cache_files(tmp_path / "c")) == 2


def test_kernel_build_id_names_release_and_btf_size(blob_path: Path) -> None:
    build = btf_mod.kernel_build_id(str(blob_path))
    assert os.uname().release in build and os.uname().version in build
    assert build.endswith(f"btf={blob_path.stat().st_size}")


def test_raw_tracepoint_argument_counts_from_the_btf_trace_typedef(tmp_path: Path) -> None:
    """btf_trace_<tp> points to (void *__data, the tracepoint's arguments...):
    ext4_da_reserve_space passes one argument on 6.1, two on 6.18, and on a
    kernel with ext4 as a module its typedef is in the module's BTF."""
    base = BtfWriter()
    int_t = base.int_("int", 4)
    void_ptr = base.add(K_PTR, "", 0)
    old = base.add(K_FUNC_PROTO, "", 0, vlen=2, tail=(0, void_ptr, 0, void_ptr))
    base.add(K_TYPEDEF, "btf_trace_old_tp", base.add(K_PTR, "", old))
    base.add(K_TYPEDEF, "btf_trace_not_a_pointer", int_t)
    mod = BtfWriter(first_id=base.next_id, str_base=len(base.strs))
    new = mod.add(K_FUNC_PROTO, "", 0, vlen=3, tail=(0, void_ptr, 0, void_ptr, 0, int_t))
    mod.add(K_TYPEDEF, "btf_trace_ext4_da_reserve_space", mod.add(K_PTR, "", new))
    (tmp_path / "vmlinux").write_bytes(base.blob())
    (tmp_path / "ext4").write_bytes(mod.blob())
    vmlinux = Btf.load(str(tmp_path / "vmlinux"))
    ext4 = Btf.load(str(tmp_path / "ext4"), base=vmlinux)
    assert vmlinux.raw_tp_arg_count("old_tp") == 1
    assert ext4.raw_tp_arg_count("ext4_da_reserve_space") == 2
    assert vmlinux.raw_tp_arg_count("ext4_da_reserve_space") is None
    assert vmlinux.raw_tp_arg_count("not_a_pointer") is None and vmlinux.raw_tp_arg_count("nope") is None
    got = resolve(["tp_args:ext4_da_reserve_space", "tp_args:old_tp", "tp_args:nope"],
                  btf_path=str(tmp_path / "vmlinux"), cache_dir=str(tmp_path / "c"), modules=("ext4",))
    assert got == {"tp_args:ext4_da_reserve_space": 2, "tp_args:old_tp": 1, "tp_args:nope": None}
def _ext4_error_btf(force_ro: bool) -> Btf:
    """__ext4_error's prototype as 5.8-5.10 (no force_ro) or 5.11+ declares it."""
    w = BtfWriter()
    int_t = w.int_("int", 4)
    params = ["sb", "function", "line"] + (["force_ro"] if force_ro else []) + ["error", "block", "fmt"]
    proto = w.add(K_FUNC_PROTO, "", 0, vlen=len(params), tail=tuple(x for p in params for x in (w.s(p), int_t)))
    w.add(K_FUNC, "__ext4_error", proto, vlen=1)
    return Btf(w.blob())


def test_func_param_positions_follow_the_prototype() -> None:
    assert _ext4_error_btf(force_ro=False).func_param("__ext4_error", "error") == 4
    assert _ext4_error_btf(force_ro=True).func_param("__ext4_error", "error") == 5
    assert _answer(_ext4_error_btf(force_ro=True), "param:__ext4_error.block") == 6
    assert _answer(_ext4_error_btf(force_ro=True), "param:__ext4_error.nonesuch") is None
    assert _answer(_ext4_error_btf(force_ro=True), "param:no_such_func.error") is None
