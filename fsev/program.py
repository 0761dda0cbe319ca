"""The BPF program text: bpf/fsev.bpf.c behind a preamble of load-time constants.

Settings reach the kernel side as #defines written here (never as edits to the
C text). source() expands bpf/fsev.bpf.c's includes of the files beside it, so
the text bcc compiles is the whole program, and `fsev trace --print-bpf`
shows exactly that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .plan import Plan, ProbePoint, RungKind, shmem_accounting
from .program_health import health_defines, health_kprobes, health_offsets
from .records import RecordClass, class_mask
from .thr_gate import Hook

# The entry file: includes bpf/common.h, then each probe point's bpf/<point>.bpf.c.
MAIN_SOURCE = "fsev.bpf.c"
# A local include (a file in bpf/), expanded by source(); <...> ones stay for bcc.
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)

# Kernel struct fields read by the kprobe programs, as BTF specs.
KPROBE_OFFSETS = {
    ProbePoint.EXT4_ERROR: ("super_block.s_dev", "inode.i_sb", "inode.i_ino", "file.f_inode"),
    ProbePoint.MOUNT_DROP: ("super_block.s_dev", "mount.mnt.mnt_sb", "mount.mnt_id"),
}

# Kernel struct fields read by the threshold programs, per probe point and rung.
_SB_FIELDS = ("super_block.s_dev", "super_block.s_fs_info", "inode.i_sb")
_SHMEM_FIELDS = ("shmem_sb_info.max_blocks", "shmem_sb_info.used_blocks.count")
THR_OFFSETS = {
    (ProbePoint.THR_TMPFS, RungKind.RAW_TRACEPOINT): (
        *_SB_FIELDS, *_SHMEM_FIELDS, "folio.mapping", "address_space.host", "folio.flags", "enum:PG_locked",
    ),
    (ProbePoint.THR_TMPFS, RungKind.KPROBE): (*_SB_FIELDS, *_SHMEM_FIELDS),
    (ProbePoint.THR_EXT4, RungKind.RAW_TRACEPOINT): (
        *_SB_FIELDS,
        "ext4_sb_info.s_freeclusters_counter.count", "ext4_sb_info.s_dirtyclusters_counter.count",
        "ext4_sb_info.s_resv_clusters", "ext4_sb_info.s_cluster_bits", "ext4_sb_info.s_es",
        "ext4_super_block.s_r_blocks_count_lo", "ext4_super_block.s_r_blocks_count_hi",
        "ext4_super_block.s_feature_incompat",
        "ext4_allocation_request.inode", "ext4_allocation_request.flags", "ext4_allocation_request.len",
    ),
}

# Argument positions that moved between kernel versions (see plan.py's table).
# __ext4_error gained `error, block` in 5.10 and `force_ro` before them in 5.11.
EXT4_ERROR_ARGS_5_11 = {"ARG___EXT4_ERROR_ERRNO": 5, "ARG___EXT4_ERROR_BLOCK": 6}
EXT4_ERROR_ARGS_5_10 = {"ARG___EXT4_ERROR_ERRNO": 4, "ARG___EXT4_ERROR_BLOCK": 5}


@dataclass(frozen=True)
class ProgramConfig:
    classes: frozenset[RecordClass]
    watch_all: bool
    ringbuf_pages: int = 256  # 1 MiB: about 5000 records of slack
    # Threshold probe points with a kernel rung armed on at least one mount.
    thr_points: frozenset[ProbePoint] = frozenset()
    # Those of them armed on exactly one superblock: the BPF side may then
    # cache a mapping or inode as "that superblock" (bpf/thr_common.h).
    thr_single: frozenset[ProbePoint] = frozenset()

    def __post_init__(self) -> None:
        p = self.ringbuf_pages
        if p < 1 or p & (p - 1):
            raise ValueError(f"ring buffer pages must be a power of two, not {p}")


def bpf_dir() -> Path:
    """Where the C ships: inside the installed package (fsev.bpf)."""
    return Path(str(resources.files("fsev.bpf")))


def offset_macro(spec: str) -> str:
    return "OFF_" + re.sub(r"[^A-Za-z0-9]", "_", spec).upper()


def required_offsets(plan: Plan, config: ProgramConfig | None = None) -> list[str]:
    specs: list[str] = []
    for r in plan.rungs:
        wanted: tuple[str, ...] = ()
        if r.kind is RungKind.KPROBE:
            wanted = KPROBE_OFFSETS.get(r.point, ())
        if config is not None and r.point in config.thr_points:
            wanted = THR_OFFSETS.get((r.point, r.kind), ())
        for s in wanted:
            if s not in specs:
                specs.append(s)
    specs += [s for s in health_offsets(plan, config) if s not in specs]
    return specs


def _thr_defines(plan: Plan, config: ProgramConfig) -> tuple[dict[str, str], list[str]]:
    """FSEV_THR_* switches, and the kprobe argument macros of the tmpfs rung."""
    def on(point: ProbePoint, kind: RungKind) -> bool:
        r = plan.rung(point)
        return point in config.thr_points and r is not None and r.kind is kind

    d = {
        "FSEV_THR_SHMEM_RAW_TP": "1" if on(ProbePoint.THR_TMPFS, RungKind.RAW_TRACEPOINT) else "0",
        "FSEV_THR_SHMEM_KPROBE": "1" if on(ProbePoint.THR_TMPFS, RungKind.KPROBE) else "0",
        "FSEV_THR_EXT4_RAW_TP": "1" if on(ProbePoint.THR_EXT4, RungKind.RAW_TRACEPOINT) else "0",
        "FSEV_THR_SHMEM_SINGLE": "1" if ProbePoint.THR_TMPFS in config.thr_single else "0",
        "FSEV_THR_EXT4_SINGLE": "1" if ProbePoint.THR_EXT4 in config.thr_single else "0",
    }
    macros: list[str] = []
    tmpfs = plan.rung(ProbePoint.THR_TMPFS)
    row = shmem_accounting(tmpfs.targets) if tmpfs and d["FSEV_THR_SHMEM_KPROBE"] == "1" else None
    if row is not None:
        def arg(pos: int) -> str:
            return f"PT_REGS_PARM{pos}(ctx)" if pos else "0"

        macros += [
            f"#define THR_KP_ACCT_INODE(ctx) {arg(row.acct_inode)}",
            f"#define THR_KP_ACCT_PAGES(ctx) {arg(row.acct_pages)}",
            f"#define THR_KP_UNACCT_INODE(ctx) {arg(row.unacct_inode)}",
            f"#define THR_KP_UNACCT_PAGES(ctx) {arg(row.unacct_pages)}",
            f"#define THR_KP_UNACCT_SETTLE {0 if row.unacct_pages else 1}",
        ]
    return d, macros


def preamble(plan: Plan, config: ProgramConfig, offsets: dict[str, int], ext4_error_args: dict[str, int] | None = None) -> str:
    """The #define block for this plan. Pure: tests check it without a kernel."""
    d: dict[str, str] = {
        "FSEV_RINGBUF_PAGES": str(config.ringbuf_pages),
        "FSEV_CLASS_MASK": hex(class_mask(set(config.classes))),
        "FSEV_WATCH_ALL": "1" if config.watch_all else "0",
    }
    ext4 = plan.rung(ProbePoint.EXT4_ERROR)
    drop = plan.rung(ProbePoint.MOUNT_DROP)
    err_on = RecordClass.ERR in config.classes
    info_on = RecordClass.INFO in config.classes
    d["FSEV_EXT4_ERROR_KPROBE"] = "1" if err_on and ext4 and ext4.kind is RungKind.KPROBE else "0"
    d["FSEV_EXT4_ERROR_TRACEPOINT"] = "1" if err_on and ext4 and ext4.kind is RungKind.TRACEPOINT else "0"
    d["FSEV_MOUNT_DROP_KPROBE"] = "1" if info_on and drop and drop.kind is RungKind.KPROBE else "0"
    d["FSEV_MOUNT_DROP_TRACEPOINT"] = "1" if info_on and drop and drop.kind is RungKind.TRACEPOINT else "0"
    thr, thr_macros = _thr_defines(plan, config)
    d.update(thr)
    lines = [f"#define {k} {v}" for k, v in d.items()] + thr_macros
    lines += health_defines(plan, config)
    if d["FSEV_EXT4_ERROR_KPROBE"] == "1" and ext4:
        for fn in ext4.targets:
            lines.append(f"#define ATTACH_{fn.upper()} 1")
        for name, pos in (ext4_error_args or EXT4_ERROR_ARGS_5_11).items():
            lines.append(f"#define {name}(ctx) PT_REGS_PARM{pos}(ctx)")
    for spec, off in sorted(offsets.items()):
        lines.append(f"#define {offset_macro(spec)} {off}")
    return "/* fsev load-time constants */\n" + "\n".join(lines) + "\n"


def expand_includes(name: str, directory: Path, done: set[str] | None = None) -> str:
    """directory/name with each #include "x" of a file in directory replaced by
    x's text, itself expanded, where x first appears; a later include of x
    becomes a comment (headers have guards, and a .bpf.c file defines programs
    that bcc must see once). Depth first, in text order: the order the C
    preprocessor would read them in."""
    done = set() if done is None else done
    done.add(name)

    def one(m: re.Match[str]) -> str:
        inc = m.group(1)
        if not (directory / inc).is_file():
            return m.group(0)
        if inc in done:
            return f'/* #include "{inc}": expanded above */'
        text = expand_includes(inc, directory, done).rstrip("\n")
        return f"/* ---- bpf/{inc} ---- */\n{text}\n/* ---- end of bpf/{inc} ---- */"

    return _LOCAL_INCLUDE.sub(one, (directory / name).read_text())


def source(plan: Plan, config: ProgramConfig, offsets: dict[str, int], ext4_error_args: dict[str, int] | None = None) -> str:
    """The whole program as bcc compiles it: the preamble, then bpf/fsev.bpf.c
    with its local includes expanded (no #include "..." is left for bcc)."""
    return preamble(plan, config, offsets, ext4_error_args) + expand_includes(MAIN_SOURCE, bpf_dir())


# Raw tracepoints whose program comes in two forms (bpf/thr_tmpfs.bpf.c): BTF-typed,
# loaded as tp_btf by fsev/tp_btf.py, and plain, for kernels that refuse it.
TMPFS_RAW_TPS = (
    ("mm_lru_insertion", "thr_lru_typed", "thr_lru_plain"),
    ("mm_filemap_delete_from_page_cache", "thr_delete_typed", "thr_delete_plain"),
)
# ext4's per-page reservation: plain only (its one pointer is read once).
EXT4_RAW_TPS = (("ext4_da_reserve_space", "", "thr_ext4_reserve"),)

# The per-page threshold programs, by the hook group fsev/thr_gate.py switches
# them in: attached only while some mount is near a level.
GATED_PROGRAMS: dict[str, Hook] = {
    "thr_lru_typed": Hook.SHMEM_CHARGE, "thr_lru_plain": Hook.SHMEM_CHARGE, "kp_thr_shmem_acct": Hook.SHMEM_CHARGE,
    "thr_delete_typed": Hook.SHMEM_FREE, "thr_delete_plain": Hook.SHMEM_FREE, "kp_thr_shmem_unacct": Hook.SHMEM_FREE,
    "thr_ext4_reserve": Hook.EXT4_CHARGE,
}


def raw_tracepoint_attachments(plan: Plan, config: ProgramConfig) -> list[tuple[str, str, str]]:
    """(tracepoint, typed BPF function or "", plain BPF function) the loader
    attaches itself (bcc attaches the RAW_TRACEPOINT_PROBE ones as it loads them)."""
    out: list[tuple[str, str, str]] = []
    for point, tps in ((ProbePoint.THR_TMPFS, TMPFS_RAW_TPS), (ProbePoint.THR_EXT4, EXT4_RAW_TPS)):
        r = plan.rung(point)
        if r is not None and r.kind is RungKind.RAW_TRACEPOINT and point in config.thr_points:
            out += tps
    return out


def kprobe_attachments(plan: Plan, config: ProgramConfig) -> list[tuple[str, str]]:
    """(kernel function, BPF function name) pairs the loader attaches."""
    out: list[tuple[str, str]] = []
    for r in plan.rungs:
        if r.kind is not RungKind.KPROBE:
            continue
        if r.point is ProbePoint.EXT4_ERROR and RecordClass.ERR in config.classes:
            out += [(fn, "kp_" + fn) for fn in r.targets]
        if r.point is ProbePoint.MOUNT_DROP and RecordClass.INFO in config.classes:
            out += [(fn, "kp_" + fn) for fn in r.targets]
        if r.point is ProbePoint.THR_TMPFS and r.point in config.thr_points:
            acct, unacct = r.targets
            out += [(acct, "kp_thr_shmem_acct"), (unacct, "kp_thr_shmem_unacct")]
    return out + health_kprobes(plan, config)
