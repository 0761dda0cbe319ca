"""Probe planning: per probe point, the richest rung the running kernel offers.

plan_probes() is a pure function of KernelFacts. Each rung that is skipped
says why, and fsev shows the plan (`fsev doctor`, start of `fsev trace`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .kernel_facts import KernelFacts


class ProbePoint(str, enum.Enum):
    EXT4_ERROR = "ext4_error"
    MOUNT_DROP = "mount_drop"
    THR_TMPFS = "thr_tmpfs"  # free-space thresholds, by filesystem type
    THR_EXT4 = "thr_ext4"
    THR_OTHER = "thr_other"
    # health events: planned in fsev/plan_health.py
    EXT4_ERROR_DETAIL = "ext4_error_detail"
    READ_ONLY = "read_only"
    ENOSPC = "enospc"
    BLOCK_IO_ERROR = "block_io_error"
    WB_ERROR = "wb_error"
    MOUNT_TOPOLOGY = "mount_topology"


class RungKind(str, enum.Enum):
    KPROBE = "kprobe"
    TRACEPOINT = "tracepoint"
    RAW_TRACEPOINT = "raw_tracepoint"
    FANOTIFY = "fanotify"  # fanotify(7) marks from user space (with tracepoints beside them)
    POLLED = "polled"  # statfs, /sys or /proc read by user space: no kernel probe at all
    NONE = "none"


# ext4 error entry points, richest first. Known signatures (the kprobe program
# reads arguments by these positions; see bpf/ext4_error.bpf.c):
#   __ext4_error(sb, function, line, force_ro, error, block, fmt, ...)   5.11+
#   __ext4_error_inode(inode, function, line, block, error, fmt, ...)    5.10+
#   __ext4_error_file(file, function, line, block, fmt, ...)             errno is EFSCORRUPTED
#   __ext4_std_error(sb, function, line, errno)
EXT4_ERROR_FUNCTIONS = ("__ext4_error", "__ext4_error_inode", "__ext4_error_file", "__ext4_std_error")
# Most errors come through these two: without both, kprobes would miss some
# errors entirely, so the tracepoint (which sees all of them) is richer.
EXT4_ERROR_REQUIRED = ("__ext4_error", "__ext4_error_inode")
EXT4_ERROR_TRACEPOINT = "ext4:ext4_error"

# Every drop of a mount, including lazy unmounts and namespace teardown, ends in
# cleanup_mnt(struct mount *) (since 4.x; fs/namespace.c).
MOUNT_DROP_FUNCTION = "cleanup_mnt"
UMOUNT_TRACEPOINTS = ("syscalls:sys_enter_umount", "syscalls:sys_exit_umount")



@dataclass(frozen=True)
class ShmemAccounting:
    """One kernel generation's shmem block accounting, for the tmpfs kprobe rung.

    Argument positions are 1-based; pages 0: the signature has no page count
    (the charge is then assumed up to a huge page, and frees are settle hints).
    """

    acct: str
    acct_inode: int
    acct_pages: int
    unacct: str
    unacct_inode: int
    unacct_pages: int
    kernels: str


# Every known shape of shmem's used_blocks accounting, newest first; the
# planner takes the first whose two functions are traceable symbols here.
SHMEM_ACCOUNTING = (
    # 6.6+ (tmpfs quotas): int shmem_inode_acct_blocks(struct inode *, long pages);
    #                      void shmem_inode_unacct_blocks(struct inode *, long pages)
    ShmemAccounting("shmem_inode_acct_blocks", 1, 2, "shmem_inode_unacct_blocks", 1, 2, "6.6+"),
    # 4.16-6.5 where the compiler kept it out of line:
    #   bool shmem_inode_acct_block(struct inode *, long pages)
    ShmemAccounting("shmem_inode_acct_block", 1, 2, "shmem_inode_unacct_blocks", 1, 2, "4.16-6.5"),
    # 6.1 as Debian 12 builds it: shmem_inode_acct_block and _unacct_blocks are
    # inlined. The charge happens inside
    #   struct folio *shmem_alloc_and_acct_folio(gfp_t, struct inode *, pgoff_t, bool huge)
    # and frees are un-charged inside void shmem_recalc_inode(struct inode *).
    ShmemAccounting("shmem_alloc_and_acct_folio", 2, 0, "shmem_recalc_inode", 1, 0, "5.17-6.5 (Debian 12)"),
)
SHMEM_FUNCTIONS = tuple(dict.fromkeys(f for s in SHMEM_ACCOUNTING for f in (s.acct, s.unacct)))
# Raw tracepoints (bare pointers; fields read at BTF offsets), with the tracefs
# name that says they exist.
SHMEM_TRACEPOINTS = ("pagemap:mm_lru_insertion", "filemap:mm_filemap_delete_from_page_cache")
EXT4_THR_TRACEPOINTS = (
    "ext4:ext4_da_reserve_space", "ext4:ext4_allocate_blocks", "ext4:ext4_da_update_reserve_space",
    "ext4:ext4_da_release_space", "ext4:ext4_free_blocks",
)

ALL_TRACEPOINTS = {EXT4_ERROR_TRACEPOINT, *UMOUNT_TRACEPOINTS, *SHMEM_TRACEPOINTS, *EXT4_THR_TRACEPOINTS}
ALL_KPROBE_FUNCTIONS = {*EXT4_ERROR_FUNCTIONS, MOUNT_DROP_FUNCTION, *SHMEM_FUNCTIONS}


def shmem_accounting(functions: tuple[str, ...]) -> ShmemAccounting | None:
    """The table row a kprobe rung's targets came from."""
    for s in SHMEM_ACCOUNTING:
        if functions == (s.acct, s.unacct):
            return s
    return None


def _health_planners() -> dict:
    # Imported late: plan_health builds on the types above.
    from .plan_health import HEALTH_KPROBE_FUNCTIONS, HEALTH_PLANNERS, HEALTH_TRACEPOINTS

    ALL_TRACEPOINTS.update(HEALTH_TRACEPOINTS)
    ALL_KPROBE_FUNCTIONS.update(HEALTH_KPROBE_FUNCTIONS)
    return HEALTH_PLANNERS


@dataclass(frozen=True)
class Rung:
    point: ProbePoint
    kind: RungKind
    targets: tuple[str, ...] = ()  # functions or tracepoints attached
    gives: str = ""  # what this rung reports
    misses: str = ""  # what it cannot see
    skipped: tuple[str, ...] = field(default_factory=tuple)  # why richer rungs were not used
    # BTF facts beyond struct offsets that the rung's programs read (e.g.
    # "enum:EXT4_FLAGS_EMERGENCY_RO"); resolved with the offsets.
    reads: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.kind is not RungKind.NONE


@dataclass(frozen=True)
class Plan:
    rungs: tuple[Rung, ...]

    def rung(self, point: ProbePoint) -> Rung | None:
        for r in self.rungs:
            if r.point is point:
                return r
        return None

    def summary(self) -> dict[str, str]:
        return {r.point.value: r.kind.value for r in self.rungs}


def _kprobe_skip_reason(facts: KernelFacts, required: tuple[str, ...]) -> str | None:
    if not facts.kprobes:
        return f"kprobe: {facts.kprobes_why_not or 'kprobes unavailable'}"
    missing = [f for f in required if f not in facts.kprobe_functions]
    if missing:
        return f"kprobe: {', '.join(missing)} not a traceable symbol in this kernel (inlined or renamed)"
    return None


def _plan_ext4_error(facts: KernelFacts) -> Rung:
    point = ProbePoint.EXT4_ERROR
    why = _kprobe_skip_reason(facts, EXT4_ERROR_REQUIRED)
    if why is None:
        return Rung(
            point,
            RungKind.KPROBE,
            tuple(f for f in EXT4_ERROR_FUNCTIONS if f in facts.kprobe_functions),
            gives="device, function, line, errno, inode, block, from the function arguments",
        )
    skipped = (why,)
    if facts.has_tracepoint(EXT4_ERROR_TRACEPOINT):
        return Rung(
            point,
            RungKind.TRACEPOINT,
            (EXT4_ERROR_TRACEPOINT,),
            gives="device, function, line",
            misses="errno, inode and block (the tracepoint does not carry them)",
            skipped=skipped,
        )
    return Rung(point, RungKind.NONE, skipped=skipped + (f"tracepoint: {EXT4_ERROR_TRACEPOINT} not present",))


def _plan_mount_drop(facts: KernelFacts) -> Rung:
    point = ProbePoint.MOUNT_DROP
    why = _kprobe_skip_reason(facts, (MOUNT_DROP_FUNCTION,))
    if why is None:
        return Rung(
            point,
            RungKind.KPROBE,
            (MOUNT_DROP_FUNCTION,),
            gives="every drop of a mount when its last reference goes: umount, lazy umount, namespace teardown",
        )
    skipped = (why,)
    if all(facts.has_tracepoint(t) for t in UMOUNT_TRACEPOINTS):
        return Rung(
            point,
            RungKind.TRACEPOINT,
            UMOUNT_TRACEPOINTS,
            gives="successful umount(2) calls (path, flags, caller); superblock teardown "
            "through inotify IN_UNMOUNT (a lazy unmount when its last user lets go)",
            misses="lazy unmounts of a bind mount whose superblock lives on are reported at "
            "detach time; drops in other mount namespaces that fsev never saw; the kernel "
            "filter matches the umount path as the caller spelled it",
            skipped=skipped,
        )
    return Rung(point, RungKind.NONE, skipped=skipped + ("tracepoint: syscalls:sys_*_umount not present",))


POLLED_GIVES = "statfs every few hundred ms from user space, with a per-mount timeout"
POLLED_MISSES = "the pid and comm of the task that caused a crossing; crossings shorter than the poll interval"


def _raw_tp_skip_reason(facts: KernelFacts, tracepoints: tuple[str, ...]) -> str | None:
    if not facts.raw_tracepoints:
        return "raw_tracepoint: not supported by this kernel"
    missing = [t for t in tracepoints if not facts.has_tracepoint(t)]
    if missing:
        return f"raw_tracepoint: {', '.join(missing)} not present"
    if not facts.btf:
        return "raw_tracepoint: no kernel BTF to read the raw arguments safely"
    return None


def _polled(point: ProbePoint, skipped: tuple[str, ...]) -> Rung:
    return Rung(point, RungKind.POLLED, ("statfs",), gives=POLLED_GIVES, misses=POLLED_MISSES, skipped=skipped)


def _plan_thr_tmpfs(facts: KernelFacts) -> Rung:
    point = ProbePoint.THR_TMPFS
    skipped: tuple[str, ...] = ()
    if not facts.kprobes:
        skipped += (f"kprobe: {facts.kprobes_why_not or 'kprobes unavailable'}",)
    else:
        row = next((s for s in SHMEM_ACCOUNTING if {s.acct, s.unacct} <= facts.kprobe_functions), None)
        if row is not None:
            return Rung(point, RungKind.KPROBE, (row.acct, row.unacct),
                        gives=f"every shmem charge and un-charge as it happens (signature of {row.kernels})")
        skipped += ("kprobe: no known pair of shmem accounting functions is traceable "
                    f"(tried {', '.join(SHMEM_FUNCTIONS)})",)
    why = _raw_tp_skip_reason(facts, SHMEM_TRACEPOINTS)
    if why is None:
        return Rung(
            point, RungKind.RAW_TRACEPOINT, tuple(t.split(":")[1] for t in SHMEM_TRACEPOINTS),
            gives="tmpfs folios entering the LRU (after the charge) and leaving the page cache",
            misses="up to 31 folios per CPU batched before the LRU sees them: fsev re-reads statfs "
            "while a crossing may hide in that lag",
            skipped=skipped,
        )
    return _polled(point, skipped + (why,))


def _plan_thr_ext4(facts: KernelFacts) -> Rung:
    point = ProbePoint.THR_EXT4
    why = _raw_tp_skip_reason(facts, EXT4_THR_TRACEPOINTS)
    if why is None:
        return Rung(
            point, RungKind.RAW_TRACEPOINT, tuple(t.split(":")[1] for t in EXT4_THR_TRACEPOINTS),
            gives="every delayed-allocation reservation, block allocation and free",
        )
    return _polled(point, (why,))


def _plan_thr_other(facts: KernelFacts) -> Rung:
    return _polled(ProbePoint.THR_OTHER, ("no kernel rung: fsev knows the block accounting of tmpfs and ext4 only",))


_PLANNERS = {
    ProbePoint.EXT4_ERROR: _plan_ext4_error,
    ProbePoint.MOUNT_DROP: _plan_mount_drop,
    ProbePoint.THR_TMPFS: _plan_thr_tmpfs,
    ProbePoint.THR_EXT4: _plan_thr_ext4,
    ProbePoint.THR_OTHER: _plan_thr_other,
}
_PLANNERS.update(_health_planners())


def plan_probes(facts: KernelFacts, points: "set[ProbePoint] | None" = None) -> Plan:
    """Choose a rung for each probe point (all of them by default)."""
    wanted = [p for p in ProbePoint if points is None or p in points]
    return Plan(tuple(_PLANNERS[p](facts) for p in wanted))
