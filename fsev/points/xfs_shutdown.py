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
adds nothing to it. Both read xfs_mount, so both need the xfs module's BTF
(5.11+). Else the line xfs_do_force_shutdown prints (the kernel_log point,
printk:console): reasons from its flags, the caller, file and line where the
line is not cut short; it also serves a module loaded after fsev started.
"""

from __future__ import annotations

import functools
import os
import re

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import TRACEFS, KernelFacts
from fsev.kernel.records import RecordClass, RecordType, c_string
from fsev.linux.kernel_log import LogLine
from fsev.points.kernel_log import CONSOLE_TRACEPOINT, event_of_line
from fsev.points.kernel_log import NAME as KERNEL_LOG_POINT
from fsev.points.xfs_fs import ABSENT, FS_TYPE, xfs_present
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, module_btf_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "xfs_shutdown"
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
    no_btf = module_btf_skip_reason(facts, FS_TYPE, "raw_tracepoint")
    if facts.raw_tracepoints and no_btf is None and facts.has_tracepoint(TRACEPOINT):
        return Rung(NAME, RungKind.RAW_TRACEPOINT, (TRACEPOINT,),
                    gives="the shutdown with its reasons, file and line, once per filesystem")
    skipped += (no_btf if no_btf and facts.has_tracepoint(TRACEPOINT) else
                f"raw_tracepoint: {TRACEPOINT} not present (or no raw tracepoints; is the xfs module loaded?)",)
    why = kprobe_skip_reason(facts, (KPROBE,)) or module_btf_skip_reason(facts, FS_TYPE, "kprobe")
    if why is None:
        return Rung(NAME, RungKind.KPROBE, (KPROBE,),
                    gives="the shutdown with its reasons, file and line (the first call per mount)",
                    skipped=skipped)
    skipped += (why,)
    if facts.has_tracepoint(CONSOLE_TRACEPOINT):
        return Rung(NAME, RungKind.TRACEPOINT, (CONSOLE_TRACEPOINT,),
                    gives="the shutdown from the line XFS prints (the kernel_log point): reasons, caller, file "
                          "and line",
                    misses="file and line where the line is cut short (fsev keeps 111 bytes of it); a shutdown "
                           "whose line the console's rate limit drops; before 5.18, a shutdown a user asked for "
                           "(xfs_io shutdown, the GOINGDOWN ioctl), which XFS did not log",
                    skipped=skipped)
    absent = "" if xfs_present(facts) else ABSENT
    return Rung(NAME, RungKind.NONE, absent=absent,
                skipped=skipped + (f"tracepoint: {CONSOLE_TRACEPOINT} not present",))


# xfs_do_force_shutdown's line (fs/xfs/xfs_fsops.c). 5.18+ alerts once, as
# the filesystem goes down: "WHY (0xFLAGS) detected at CALLER+0x../0x.. [xfs]
# (FILE:LINE).  Shutting down filesystem." Before, a notice on every call:
# "xfs_do_force_shutdown(0xFLAGS) called from line LINE of file FILE.  Return
# address = ...".
_ALERT_LINE = re.compile(r"[A-Za-z/ -]+ \(0x(?P<flags>[0-9a-f]+)\) detected at (?P<fn>[\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+"
                         r"(?: \[\w+\])?(?: \((?P<file>[^:()\s]+):(?P<line>\d+)\))?")
_CALL_LINE = re.compile(r"xfs_do_force_shutdown\(0x(?P<flags>[0-9a-f]+)\) called from line (?P<line>\d+) of file "
                        r"(?P<file>\S+?)\.(?:\s|$)")


def shutdown_fields(body: str) -> dict | None:
    """flags, and function, file and line where given, of XFS's shutdown line; None for other lines."""
    m = _ALERT_LINE.match(body) or _CALL_LINE.match(body)
    if m is None:
        return None
    got = m.groupdict()
    out: dict = {"flags": int(got["flags"], 16), "function": got.get("fn")}
    if got.get("line"):
        out["file"], out["line"] = got["file"], int(got["line"])
    return out


def describe_shutdown(ev: Event) -> str:
    x = ev.extra
    text = "shut down: " + (",".join(x.get("reasons") or []) or "no reason given")
    if x.get("file"):
        text += f" at {x['file']}:{ev.line}"
    return text


# Rungs that see every call of xfs_do_force_shutdown: the kprobe, and before
# 5.18 the line it prints.
_EVERY_CALL = frozenset({RungKind.KPROBE.value, KERNEL_LOG_POINT})


class ShutdownOnce(PointMonitor):
    """The kprobe rung sees every call of xfs_do_force_shutdown (as does its
    log line before 5.18): the first per mount goes on, later ones (the
    filesystem is down already) are dropped."""

    handles = frozenset({EventType.SHUTDOWN})

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._down: dict[str, int] = {}  # dev -> mnt_id of the mount it went down in

    def process(self, ev: Event) -> list[Event]:
        if ev.rung not in _EVERY_CALL or ev.dev is None:
            return [ev]
        mnt = ev.mnt_id if ev.mnt_id is not None else -1
        if self._down.get(ev.dev) == mnt:
            return []
        self._down[ev.dev] = mnt
        return [ev]


class ShutdownLogReader(ShutdownOnce):
    """The kernel log rung: a shutdown event from XFS's line, the first per mount."""

    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        ctx.read_kernel_log(FS_TYPE, self.read)

    def read(self, line: LogLine) -> list[Event]:
        got = shutdown_fields(line.body)
        if got is None or line.dev is None:
            return []
        ev = event_of_line(self.ctx, line, EventType.SHUTDOWN, FS_TYPE, function=got["function"],
                           line=got.get("line"), extra={"reasons": decode_reasons(got["flags"])})
        if got.get("file"):
            ev.extra["file"] = got["file"]
        return self.process(ev)


class XfsShutdown(Point):
    name = NAME
    module = FS_TYPE
    record_type = RecordType.SHUTDOWN
    event_type = EventType.SHUTDOWN
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({TRACEPOINT, CONSOLE_TRACEPOINT})
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
        kind = ctx.plan.kind(NAME)
        if EventClass.ERR not in ctx.classes:
            return None
        if kind is RungKind.TRACEPOINT and ctx.plan.kind(KERNEL_LOG_POINT) is not None:
            return ShutdownLogReader(ctx)
        return ShutdownOnce(ctx) if kind is RungKind.KPROBE else None


POINT = XfsShutdown()
