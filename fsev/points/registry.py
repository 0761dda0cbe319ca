"""The probe points, in one tuple, and what fsev asks of all of them at once.

Nothing registers itself on import: a point is in POINTS or it is not. The
order is the plan's order (what `fsev doctor` and `fsev trace` show) and the
order of the points' #defines in the preamble.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import TYPE_CHECKING, Mapping

from fsev.events import Event, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import Finish, RecordDecoder
from fsev.points import (
    block_io_error,
    btrfs_dev_stats,
    btrfs_error,
    enospc,
    ext4_error,
    ext4_error_detail,
    fserror,
    kernel_log,
    mount_drop,
    mount_topology,
    read_only,
    thr_ext4,
    thr_other,
    thr_tmpfs,
    wb_error,
    xfs_error,
    xfs_shutdown,
)
from fsev.probes import program
from fsev.probes.ladder import Plan, Rung
from fsev.probes.point import Point
from fsev.probes.program import ProgramConfig

if TYPE_CHECKING:
    from fsev.kernel.thr_slots import Hook

POINTS: tuple[Point, ...] = (
    ext4_error.POINT,
    mount_drop.POINT,
    thr_tmpfs.POINT,
    thr_ext4.POINT,
    thr_other.POINT,
    ext4_error_detail.POINT,
    read_only.POINT,
    enospc.POINT,
    block_io_error.POINT,
    wb_error.POINT,
    mount_topology.POINT,
    kernel_log.POINT,
    btrfs_error.POINT,
    btrfs_dev_stats.POINT,
    xfs_error.POINT,
    xfs_shutdown.POINT,
    fserror.POINT,
)


class ProbePoint(str, enum.Enum):
    """The points' names, as plans, `fsev doctor` and journals spell them."""

    EXT4_ERROR = ext4_error.NAME
    MOUNT_DROP = mount_drop.NAME
    THR_TMPFS = thr_tmpfs.NAME
    THR_EXT4 = thr_ext4.NAME
    THR_OTHER = thr_other.NAME
    EXT4_ERROR_DETAIL = ext4_error_detail.NAME
    READ_ONLY = read_only.NAME
    ENOSPC = enospc.NAME
    BLOCK_IO_ERROR = block_io_error.NAME
    WB_ERROR = wb_error.NAME
    MOUNT_TOPOLOGY = mount_topology.NAME
    KERNEL_LOG = kernel_log.NAME
    BTRFS_ERROR = btrfs_error.NAME
    BTRFS_DEV_STATS = btrfs_dev_stats.NAME
    XFS_ERROR = xfs_error.NAME
    XFS_SHUTDOWN = xfs_shutdown.NAME
    FSERROR = fserror.NAME


# Threshold points with a kernel rung (thr_other is always polled): what fsev
# serve compiles in, so that levels configured later need no new program.
KERNEL_THR_POINTS: frozenset[str] = frozenset({ProbePoint.THR_TMPFS.value, ProbePoint.THR_EXT4.value})
ALL_TRACEPOINTS: frozenset[str] = frozenset(t for p in POINTS for t in p.tracepoints)
ALL_KPROBE_FUNCTIONS: frozenset[str] = frozenset(f for p in POINTS for f in p.kprobe_functions)
# Per-page programs attached only near a level, by hook group (fsev/thresholds/gate.py).
GATED_PROGRAMS: dict[str, Hook] = {prog: hook for p in POINTS for prog, hook in p.gated.items()}


def plan_probes(facts: KernelFacts, points: "set[ProbePoint] | None" = None) -> Plan:
    """Choose a rung for each probe point (all of them by default)."""
    rungs = []
    for p in POINTS:
        if points is None or p.name in points:
            r = p.plan(facts)
            # Named by the enum member, so that callers may test it with `is`.
            rungs.append(replace(r, point=ProbePoint(r.point)))
    return Plan(tuple(rungs))


# -- the kernel side -----------------------------------------------------------
def required_offsets(plan: Plan, config: ProgramConfig | None = None) -> list[str]:
    return program.required_offsets(POINTS, plan, config)


def preamble(plan: Plan, config: ProgramConfig, offsets: dict[str, int]) -> str:
    return program.preamble(POINTS, plan, config, offsets)


def source(plan: Plan, config: ProgramConfig, offsets: dict[str, int]) -> str:
    return program.source(POINTS, plan, config, offsets)


def kprobe_attachments(plan: Plan, config: ProgramConfig) -> list[tuple[str, str]]:
    return program.kprobe_attachments(POINTS, plan, config)


def raw_tracepoint_attachments(plan: Plan, config: ProgramConfig) -> list[tuple[str, str, str]]:
    return program.raw_tracepoint_attachments(POINTS, plan, config)


# -- records and text ------------------------------------------------------------
def _finishers() -> Mapping[int, Finish]:
    out: dict[int, Finish] = {}
    for p in POINTS:
        if p.record_type is not None and type(p).finish is not Point.finish:
            out.setdefault(int(p.record_type), p.finish)
    return out


_DECODER = RecordDecoder({int(p.record_type): p.event_type for p in POINTS
                          if p.record_type is not None and p.event_type is not None}, _finishers())
decode = _DECODER.decode
decode_runs = _DECODER.decode_runs  # what RingReader.read_runs gives, a batch at once
_DESCRIBE = {p.event_type: p for p in reversed(POINTS) if p.event_type is not None and p.fs_type is None}
# Points that describe one filesystem's events of a type another point describes too.
_DESCRIBE_FS = {(p.event_type, p.fs_type): p for p in POINTS if p.event_type is not None and p.fs_type is not None}


MODULES = {p.name: p.module for p in POINTS if p.module is not None}
# The modules whose BTF struct offsets may come from (/sys/kernel/btf/<module>)
# on distribution kernels: ext4's (a module on Debian; many points read its
# structs) and every point's own.
BTF_MODULES = tuple(dict.fromkeys(("ext4", *MODULES.values())))


def dormant(rung: Rung, mounted_fs_types: "set[str]") -> bool:
    """A point with nothing to watch (Rung.absent) that misses nothing yet: its
    module's filesystem is not mounted (a point with no module: never)."""
    if not rung.absent:
        return False
    module = MODULES.get(rung.name)
    return module is None or module not in mounted_fs_types


def describe(ev: Event) -> str:
    """The event-specific part of a human line, from the point that made it."""
    p = _DESCRIBE_FS.get((ev.type, ev.fs_type)) if ev.fs_type is not None else None
    p = p or _DESCRIBE.get(ev.type)
    return p.describe(ev) if p is not None else ""


def describes(t: EventType) -> bool:
    return t in _DESCRIBE
