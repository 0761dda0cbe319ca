"""Probe point xfs_shutdown: an XFS filesystem was forced to shut down
(bpf/xfs_shutdown.bpf.c).

A `shutdown` event (class err) with its reasons (the SHUTDOWN_* flags, named
as the kernel's tracepoint names them), file and line; read_only's half then
reports the read-only state that follows (flag `shutdown`, cause `error`,
caused_by_seq this event's seq): XFS never sets SB_RDONLY for it, so
mountinfo and statfs do not show it.

Ladder: the raw tracepoint xfs:xfs_force_shutdown (fires once, as the
filesystem goes down), else a kprobe on xfs_do_force_shutdown (every call,
also on a filesystem already down: the user-space half reports the first
per mount). The tracepoint comes first here: it is exact, and the kprobe
adds nothing to it.
"""

from __future__ import annotations

import functools
import os
import re

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import TRACEFS, KernelFacts
from fsev.kernel.records import RecordClass, RecordType, c_string
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "xfs_shutdown"
FS_TYPE = "xfs"
TRACEPOINT = "xfs:xfs_force_shutdown"  # raw: (mp, int ptag, int flags, const char *fname, int line_num)
# void xfs_do_force_shutdown(struct xfs_mount *mp, uint32_t flags, char *fname, int lnnum)
# (the same in 6.1 and 6.18)
KPROBE = "xfs_do_force_shutdown"
OFFSETS = ("xfs_mount.m_super", "super_block.s_dev")

# SHUTDOWN_* (fs/xfs/xfs_mount.h, Linux 6.18; bit 4, SHUTDOWN_CORRUPT_ONDISK,
# exists from 5.19 to 6.x and is gone in 6.18), used when the tracepoint's
# format file (its __print_flags table) cannot be read.
SHUTDOWN_REASONS = {1 << 0: "metadata_io", 1 << 1: "log_io", 1 << 2: "force_umount", 1 << 3: "corruption",
                    1 << 4: "corruption_ondisk", 1 << 5: "device_removed"}

_PRINT_FLAGS = re.compile(r"__print_flags\(REC->(\w+),\s*\"[^\"]*\",\s*((?:\{[^}]*\}\s*,?\s*)+)\)")
_FLAG = re.compile(r"\{\s*(?:\(\s*)?(0x[0-9a-fA-F]+|\d+)u?\s*(?:<<\s*(\d+)\s*\))?\s*,\s*\"(\w+)\"\s*\}")


def flags_table(fmt: str, field: str) -> dict[int, str]:
    """The names __print_flags gives `field`'s bits in a tracepoint format file."""
    for m in _PRINT_FLAGS.finditer(fmt):
        if m.group(1) != field:
            continue
        out: dict[int, str] = {}
        for f in _FLAG.finditer(m.group(2)):
            bit = int(f.group(1), 0) << int(f.group(2) or 0)
            if bit:
                out[bit] = f.group(3)
        return out
    return {}


@functools.lru_cache(maxsize=1)
def shutdown_reasons() -> dict[int, str]:
    """The running kernel's names for the reason flags, else SHUTDOWN_REASONS."""
    try:
        with open(os.path.join(TRACEFS, "events", "xfs", "xfs_force_shutdown", "format")) as f:
            got = flags_table(f.read(), "flags")
    except OSError:
        got = {}
    return got or dict(SHUTDOWN_REASONS)


def decode_reasons(flags: int, table: dict[int, str] | None = None) -> list[str]:
    table = shutdown_reasons() if table is None else table
    out = [name for bit, name in sorted(table.items()) if flags & bit]
    rest = flags & ~sum(table)
    out += [f"bit{b}" for b in range(rest.bit_length()) if rest >> b & 1]
    return out


def plan_xfs_shutdown(facts: KernelFacts) -> Rung:
    skipped: tuple[str, ...] = ()
    if facts.raw_tracepoints and facts.btf and facts.has_tracepoint(TRACEPOINT):
        return Rung(NAME, RungKind.RAW_TRACEPOINT, (TRACEPOINT,),
                    gives="the shutdown with its reasons, file and line, once per filesystem")
    skipped += (f"raw_tracepoint: {TRACEPOINT} not present (or no raw tracepoints / BTF; "
                "is the xfs module loaded?)",)
    why = kprobe_skip_reason(facts, (KPROBE,))
    if why is None and facts.btf:
        return Rung(NAME, RungKind.KPROBE, (KPROBE,),
                    gives="the shutdown with its reasons, file and line (the first call per mount)",
                    skipped=skipped)
    # No tracepoint and no function of XFS's: the module is not loaded.
    absent = "" if facts.has_tracepoint(TRACEPOINT) or KPROBE in facts.kprobe_functions else (
        "the xfs module is not loaded: no XFS filesystem is mounted (restart fsev after one is)")
    return Rung(NAME, RungKind.NONE, absent=absent,
                skipped=skipped + (why or "kprobe: no kernel BTF to read xfs_mount",))


def describe_shutdown(ev: Event) -> str:
    x = ev.extra
    text = "shut down: " + (",".join(x.get("reasons") or []) or "no reason given")
    if x.get("file"):
        text += f" at {x['file']}:{ev.line}"
    return text


class ShutdownOnce(PointMonitor):
    """The kprobe rung sees every call of xfs_do_force_shutdown: the first per
    mount goes on, later ones (the filesystem is down already) are dropped."""

    handles = frozenset({EventType.SHUTDOWN})

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._down: dict[str, int] = {}  # dev -> mnt_id of the mount it went down in

    def process(self, ev: Event) -> list[Event]:
        if ev.rung != RungKind.KPROBE.value or ev.dev is None:
            return [ev]
        mnt = ev.mnt_id if ev.mnt_id is not None else -1
        if self._down.get(ev.dev) == mnt:
            return []
        self._down[ev.dev] = mnt
        return [ev]


class XfsShutdown(Point):
    name = NAME
    module = FS_TYPE
    record_type = RecordType.SHUTDOWN
    event_type = EventType.SHUTDOWN
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({TRACEPOINT})
    kprobe_functions = frozenset({KPROBE})
    switches = {RungKind.RAW_TRACEPOINT: "FSEV_XFS_SHUTDOWN_RAW_TP", RungKind.KPROBE: "FSEV_XFS_SHUTDOWN_KPROBE"}
    rung_offsets = {RungKind.RAW_TRACEPOINT: OFFSETS, RungKind.KPROBE: OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_xfs_shutdown(facts)

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        ev.fs_type = FS_TYPE
        ev.extra["reasons"] = decode_reasons(value)
        fname = c_string(func)
        if fname:
            ev.extra["file"] = fname

    def describe(self, ev: Event) -> str:
        return describe_shutdown(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        if EventClass.ERR not in ctx.classes or ctx.plan.kind(NAME) is not RungKind.KPROBE:
            return None
        return ShutdownOnce(ctx)


POINT = XfsShutdown()
