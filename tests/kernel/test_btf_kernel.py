"""fsev.kernel.btf against the running kernel's BTF, with clang as the oracle.

bpftool turns the same BTF into C (vmlinux.h) and clang lays the structs out;
its offsets and sizes, read back from LLVM IR, must equal ours. That checks
our decoding (anonymous members, kind_flag offsets, qualifiers, nesting), not
the BTF itself: both sides read the same file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsev.kernel.btf import VMLINUX, Btf, BtfError, resolve

OFFSETS = [
    "super_block.s_dev", "super_block.s_fs_info", "super_block.s_flags", "super_block.s_magic",
    "inode.i_sb", "inode.i_ino", "inode.i_mapping",
    "inode.i_blocks", "inode.i_data.nrpages", "inode.i_private",  # after a one-byte enum
    "folio.mapping", "folio.index", "address_space.host",
    "shmem_sb_info.max_blocks", "shmem_sb_info.used_blocks", "shmem_sb_info.used_blocks.count",
    "percpu_counter.count",
    "ext4_sb_info.s_freeclusters_counter", "ext4_sb_info.s_dirtyclusters_counter",
    "ext4_sb_info.s_resv_clusters", "ext4_sb_info.s_cluster_bits", "ext4_sb_info.s_mount_state",
    "ext4_sb_info.s_freeclusters_counter.count",
    "mount.mnt", "mount.mnt_id", "mount.mnt.mnt_sb", "mount.mnt_parent", "vfsmount.mnt_sb",
    "file.f_inode", "file.f_mapping",
]
SIZES = ["super_block", "inode", "mount", "vfsmount", "percpu_counter", "shmem_sb_info",
         "ext4_sb_info", "folio", "address_space"]
ENUMS = ["EXT4_FLAGS_EMERGENCY_RO", "EXT4_FLAGS_SHUTDOWN", "PG_locked", "BPF_MAP_TYPE_RINGBUF"]


def _tool(name: str) -> str | None:
    # root's PATH usually has sbin, but CI's environment may not: bpftool lives there.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


needs_btf = pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} is not readable")


def _pack_small_enums(header: str, raw_dump: str) -> str:
    """Give one-byte enums their size back in bpftool's C output.

    The kernel declares some enums __packed (enum rw_hint in struct inode is
    one byte). Debian's bpftool 7.1 (libbpf 1.1) prints them as plain enums,
    so clang makes them 4 bytes and misplaces every member after them; newer
    libbpf adds an attribute, which is what this does, from bpftool's own
    plain-text dump so the oracle stays independent of fsev.kernel.btf.
    """
    for name, size in re.findall(r"^\[\d+\] ENUM '(\w+)' .*size=(\d+) ", raw_dump, re.MULTILINE):
        if size in ("1", "2"):
            header = re.sub(rf"^(enum {name} \{{.*?^\}})\s*;", r"\1 __attribute__((packed));",
                            header, count=1, flags=re.MULTILINE | re.DOTALL)
    return header


@pytest.fixture(scope="session")
def kernel_btf() -> Btf:
    if not os.access(VMLINUX, os.R_OK):
        pytest.skip(f"{VMLINUX} is not readable: kernel built without CONFIG_DEBUG_INFO_BTF")
    return Btf.load()


@pytest.fixture(scope="session")
def clang_layout() -> Iterator[dict[str, int]]:
    """Offsets, sizes and enum values as clang computes them from bpftool's vmlinux.h."""
    bpftool, clang = _tool("bpftool"), _tool("clang")
    if not os.access(VMLINUX, os.R_OK):
        pytest.skip(f"{VMLINUX} is not readable")
    if not (bpftool and clang):
        pytest.skip("bpftool and clang are needed to check offsets (Debian packages bpftool, clang)")
    with tempfile.TemporaryDirectory(prefix="fsev-btf-") as tmp:
        dump = [bpftool, "btf", "dump", "file", VMLINUX]
        header = subprocess.run([*dump, "format", "c"], capture_output=True, text=True,
                                check=True, timeout=120).stdout
        raw = subprocess.run(dump, capture_output=True, text=True, check=True, timeout=120).stdout
        Path(tmp, "vmlinux.h").write_text(_pack_small_enums(header, raw))
        names: dict[str, str] = {}
        lines = ['#include "vmlinux.h"']
        for n, spec in enumerate(OFFSETS):
            struct_name, member = spec.split(".", 1)
            names[f"fsev_o{n}"] = spec
            lines.append(f"long fsev_o{n} = __builtin_offsetof(struct {struct_name}, {member});")
        for n, name in enumerate(SIZES):
            names[f"fsev_s{n}"] = f"sizeof:{name}"
            lines.append(f"long fsev_s{n} = sizeof(struct {name});")
        for n, name in enumerate(ENUMS):
            names[f"fsev_e{n}"] = f"enum:{name}"
            lines.append(f"long fsev_e{n} = {name};")
        src = Path(tmp, "layout.c")
        src.write_text("\n".join(lines) + "\n")
        ir = subprocess.run([clang, "-target", "bpf", "-S", "-emit-llvm", "-o", "-", str(src)],
                            capture_output=True, text=True, timeout=300, check=False)
        assert ir.returncode == 0, ir.stderr[-3000:]
        found = re.finditer(r"^@(\w+) = .*global i64 (-?\d+)", ir.stdout, re.MULTILINE)
        values = {names[m[1]]: int(m[2]) for m in found}
        missing = sorted(set(names.values()) - set(values))
        assert len(values) == len(names), f"clang output lacks some globals: {missing}"
        yield values


@pytest.mark.parametrize("spec", OFFSETS)
def test_offset_matches_clang(kernel_btf: Btf, clang_layout: dict[str, int], spec: str) -> None:
    ours, clangs = kernel_btf.offsetof(spec), clang_layout[spec]
    assert ours == clangs, f"{spec}: fsev.kernel.btf says {ours}, clang says {clangs}"


@pytest.mark.parametrize("name", SIZES)
def test_sizeof_matches_clang(kernel_btf: Btf, clang_layout: dict[str, int], name: str) -> None:
    ours, clangs = kernel_btf.sizeof(f"struct {name}"), clang_layout[f"sizeof:{name}"]
    assert ours == clangs, f"sizeof(struct {name}): fsev.kernel.btf says {ours}, clang says {clangs}"


@pytest.mark.parametrize("name", ENUMS)
def test_enum_value_matches_clang(kernel_btf: Btf, clang_layout: dict[str, int], name: str) -> None:
    ours, clangs = kernel_btf.enum_value(name), clang_layout[f"enum:{name}"]
    assert ours == clangs, f"{name}: fsev.kernel.btf says {ours}, clang says {clangs}"


def test_member_sizes(kernel_btf: Btf) -> None:
    assert kernel_btf.member_size("shmem_sb_info.used_blocks") == kernel_btf.sizeof("percpu_counter")
    assert kernel_btf.member_size("mount.mnt") == kernel_btf.sizeof("struct vfsmount")
    assert kernel_btf.member_size("super_block.s_fs_info") == 8
    assert kernel_btf.member_size("percpu_counter.count") == 8  # s64


@pytest.mark.parametrize("name", ["__ext4_error", "cleanup_mnt", "shmem_inode_acct_blocks"])
def test_has_func_true(kernel_btf: Btf, name: str) -> None:
    assert kernel_btf.has_func(name)


def test_has_func_false(kernel_btf: Btf) -> None:
    assert not kernel_btf.has_func("no_such_function_xyz")
    assert not kernel_btf.has_func("super_block")  # a struct, not a function


def test_missing_things_in_the_real_kernel(kernel_btf: Btf) -> None:
    with pytest.raises(BtfError, match="^kernel BTF has no member 'foo' in struct super_block$"):
        kernel_btf.offsetof("super_block.foo")
    with pytest.raises(BtfError, match="mount.mnt_ns has kind pointer"):
        kernel_btf.offsetof("mount.mnt_ns.ns")
    assert not kernel_btf.has_member("super_block.foo")
    assert kernel_btf.has_member("mount.mnt.mnt_sb")
    assert kernel_btf.enum_value("NO_SUCH_ENUMERATOR_XYZ") is None


@needs_btf
def test_cold_load_and_lookups_are_fast() -> None:
    start = time.perf_counter()
    btf = Btf.load()
    btf.offsetof("mount.mnt.mnt_sb")
    btf.has_func("cleanup_mnt")
    btf.enum_value("EXT4_FLAGS_EMERGENCY_RO")
    # Measured about 0.2 s on the CI machine; 1 s leaves room for a slow disk.
    assert time.perf_counter() - start < 1.0


@needs_btf
def test_resolve_on_the_real_kernel_caches(tmp_path: Path, kernel_btf: Btf) -> None:
    specs = ["mount.mnt.mnt_sb", "super_block.no_such_member", "func:cleanup_mnt",
             "func:no_such_function_xyz", "sizeof:struct super_block", "enum:EXT4_FLAGS_EMERGENCY_RO"]
    cold = resolve(specs, cache_dir=str(tmp_path))
    assert cold == {
        "mount.mnt.mnt_sb": kernel_btf.offsetof("mount.mnt.mnt_sb"),
        "super_block.no_such_member": None,
        "func:cleanup_mnt": 1,
        "func:no_such_function_xyz": None,
        "sizeof:struct super_block": kernel_btf.sizeof("super_block"),
        "enum:EXT4_FLAGS_EMERGENCY_RO": kernel_btf.enum_value("EXT4_FLAGS_EMERGENCY_RO"),
    }
    start = time.perf_counter()
    assert resolve(specs, cache_dir=str(tmp_path)) == cold
    assert time.perf_counter() - start < 0.05  # no BTF parse on a hit
