"""Probe point thr_tmpfs: free space of tmpfs mounts near a level (bpf/thr_tmpfs.bpf.c).

Ladder: kprobes on shmem's block accounting (every charge and un-charge as
it happens; the functions differ by kernel generation, table below), else
raw tracepoints on the page cache (folios entering the LRU after the charge,
and leaving the page cache), else statfs polling. Kernel records are hints;
fsev/thresholds/monitor.py confirms each with statfs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsev.kernel.facts import KernelFacts
from fsev.points.free_space import FreeSpacePoint, Hook
from fsev.probes.ladder import Rung, RungKind, polled, raw_tp_skip_reason
from fsev.probes.program import ProgramConfig

NAME = "thr_tmpfs"


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
# Raw tracepoints whose program comes in two forms: BTF-typed, loaded as
# tp_btf by fsev/kernel/tp_btf.py, and plain, for kernels that refuse it.
TMPFS_RAW_TPS = (
    ("mm_lru_insertion", "thr_lru_typed", "thr_lru_plain"),
    ("mm_filemap_delete_from_page_cache", "thr_delete_typed", "thr_delete_plain"),
)
_SB_FIELDS = ("super_block.s_dev", "super_block.s_fs_info", "inode.i_sb")
_SHMEM_FIELDS = ("shmem_sb_info.max_blocks", "shmem_sb_info.used_blocks.count")
OFFSETS = {
    RungKind.RAW_TRACEPOINT: (*_SB_FIELDS, *_SHMEM_FIELDS, "folio.mapping", "address_space.host", "folio.flags",
                              "enum:PG_locked"),
    RungKind.KPROBE: (*_SB_FIELDS, *_SHMEM_FIELDS),
}


def shmem_accounting(functions: tuple[str, ...]) -> ShmemAccounting | None:
    """The table row a kprobe rung's targets came from."""
    for s in SHMEM_ACCOUNTING:
        if functions == (s.acct, s.unacct):
            return s
    return None


def plan_thr_tmpfs(facts: KernelFacts) -> Rung:
    skipped: tuple[str, ...] = ()
    if not facts.kprobes:
        skipped += (f"kprobe: {facts.kprobes_why_not or 'kprobes unavailable'}",)
    else:
        row = next((s for s in SHMEM_ACCOUNTING if {s.acct, s.unacct} <= facts.kprobe_functions), None)
        if row is not None:
            return Rung(NAME, RungKind.KPROBE, (row.acct, row.unacct),
                        gives=f"every shmem charge and un-charge as it happens (signature of {row.kernels})")
        skipped += ("kprobe: no known pair of shmem accounting functions is traceable "
                    f"(tried {', '.join(SHMEM_FUNCTIONS)})",)
    why = raw_tp_skip_reason(facts, SHMEM_TRACEPOINTS)
    if why is None and not facts.folio:
        # Debian 11's 5.10: the tracepoints pass a struct page, the programs read a folio.
        why = "raw_tracepoint: no struct folio in BTF (a kernel before 5.16: the page cache tracepoints pass pages)"
    if why is None:
        return Rung(
            NAME, RungKind.RAW_TRACEPOINT, tuple(t.split(":")[1] for t in SHMEM_TRACEPOINTS),
            gives="tmpfs folios entering the LRU (after the charge) and leaving the page cache",
            misses="up to 31 folios per CPU batched before the LRU sees them: fsev re-reads statfs "
            "while a crossing may hide in that lag",
            skipped=skipped,
        )
    return polled(NAME, skipped + (why,))


class ThrTmpfs(FreeSpacePoint):
    name = NAME
    tracepoints = frozenset(SHMEM_TRACEPOINTS)
    kprobe_functions = frozenset(SHMEM_FUNCTIONS)
    gated = {
        "thr_lru_typed": Hook.SHMEM_CHARGE, "thr_lru_plain": Hook.SHMEM_CHARGE, "kp_thr_shmem_acct": Hook.SHMEM_CHARGE,
        "thr_delete_typed": Hook.SHMEM_FREE, "thr_delete_plain": Hook.SHMEM_FREE,
        "kp_thr_shmem_unacct": Hook.SHMEM_FREE,
    }

    switches = {RungKind.RAW_TRACEPOINT: "FSEV_THR_SHMEM_RAW_TP", RungKind.KPROBE: "FSEV_THR_SHMEM_KPROBE"}
    single_switch = "FSEV_THR_SHMEM_SINGLE"
    rung_offsets = OFFSETS

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_thr_tmpfs(facts)

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        d = super().defines(rung, config)
        kprobe = self.compiled_as(rung, config, RungKind.KPROBE)
        row = shmem_accounting(rung.targets) if rung is not None and kprobe else None
        if row is not None:
            def arg(pos: int) -> str:
                return f"PT_REGS_PARM{pos}(ctx)" if pos else "0"

            d += [("THR_KP_ACCT_INODE(ctx)", arg(row.acct_inode)),
                  ("THR_KP_ACCT_PAGES(ctx)", arg(row.acct_pages)),
                  ("THR_KP_UNACCT_INODE(ctx)", arg(row.unacct_inode)),
                  ("THR_KP_UNACCT_PAGES(ctx)", arg(row.unacct_pages)),
                  ("THR_KP_UNACCT_SETTLE", "0" if row.unacct_pages else "1")]
        return d

    def kprobes(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str]]:
        if not self.compiled_as(rung, config, RungKind.KPROBE):
            return []
        acct, unacct = rung.targets
        return [(acct, "kp_thr_shmem_acct"), (unacct, "kp_thr_shmem_unacct")]

    def raw_tracepoints(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str, str]]:
        return list(TMPFS_RAW_TPS) if self.compiled_as(rung, config, RungKind.RAW_TRACEPOINT) else []


POINT = ThrTmpfs()
