"""Probe point thr_ext4: free space of ext4 mounts near a level (bpf/thr_ext4.bpf.c).

Ladder: raw tracepoints on ext4's block accounting (every delayed-allocation
reservation, block allocation and free; there is nothing richer to kprobe),
else statfs polling. Kernel records are hints; fsev/thresholds/monitor.py
confirms each with statfs.
"""

from __future__ import annotations

from fsev.kernel.facts import KernelFacts
from fsev.points.free_space import FreeSpacePoint, Hook
from fsev.probes.ladder import Rung, RungKind, polled, raw_tp_skip_reason
from fsev.probes.program import ProgramConfig

NAME = "thr_ext4"
EXT4_THR_TRACEPOINTS = (
    "ext4:ext4_da_reserve_space", "ext4:ext4_allocate_blocks", "ext4:ext4_da_update_reserve_space",
    "ext4:ext4_da_release_space", "ext4:ext4_free_blocks",
)
# ext4's per-page reservation: plain only (its one pointer is read once); the
# per-extent programs are RAW_TRACEPOINT_PROBEs that bcc attaches.
EXT4_RAW_TPS = (("ext4_da_reserve_space", "", "thr_ext4_reserve"),)
OFFSETS = (
    "super_block.s_dev", "super_block.s_fs_info", "inode.i_sb",
    "ext4_sb_info.s_freeclusters_counter.count", "ext4_sb_info.s_dirtyclusters_counter.count",
    "ext4_sb_info.s_resv_clusters", "ext4_sb_info.s_cluster_bits", "ext4_sb_info.s_es",
    "ext4_super_block.s_r_blocks_count_lo", "ext4_super_block.s_r_blocks_count_hi",
    "ext4_super_block.s_feature_incompat",
    "ext4_allocation_request.inode", "ext4_allocation_request.flags", "ext4_allocation_request.len",
    # ext4_da_reserve_space gained nr_resv (clusters) after 6.1 (6.18 has it); before, one
    # cluster a call. A raw program that reads an argument the tracepoint
    # does not pass is refused at attach (Debian 12's 6.1).
    "tp_args:ext4_da_reserve_space",
)


def plan_thr_ext4(facts: KernelFacts) -> Rung:
    why = raw_tp_skip_reason(facts, EXT4_THR_TRACEPOINTS)
    if why is None:
        return Rung(
            NAME, RungKind.RAW_TRACEPOINT, tuple(t.split(":")[1] for t in EXT4_THR_TRACEPOINTS),
            gives="every delayed-allocation reservation, block allocation and free",
        )
    return polled(NAME, (why,))


class ThrExt4(FreeSpacePoint):
    name = NAME
    tracepoints = frozenset(EXT4_THR_TRACEPOINTS)
    gated = {"thr_ext4_reserve": Hook.EXT4_CHARGE}

    switches = {RungKind.RAW_TRACEPOINT: "FSEV_THR_EXT4_RAW_TP"}
    single_switch = "FSEV_THR_EXT4_SINGLE"
    rung_offsets = {RungKind.RAW_TRACEPOINT: OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_thr_ext4(facts)

    def raw_tracepoints(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str, str]]:
        return list(EXT4_RAW_TPS) if self.compiled_as(rung, config, RungKind.RAW_TRACEPOINT) else []


POINT = ThrExt4()
