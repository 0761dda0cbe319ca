"""Probe point xfs_error: XFS met corrupt metadata (bpf/xfs_error.bpf.c).

Events are `fs_error`s (fs_type "xfs") with keys health, scope, group, inode,
structures, btree, btree_level, and on the kprobe rung file, line, function.

Ladder:
- kprobe: xfs_corruption_error (file, line, tag), xfs_buf_verifier_error and
  xfs_inode_verifier_error (the verifier's name, errno) with the address they
  failed at, named from /proc/kallsyms; and the health marks
  xfs_{fs,group,inode}_mark_{sick,corrupt} (xfs_ag_mark_sick before 6.13).
- raw tracepoints xfs:xfs_{fs,group,inode}_mark_{sick,corrupt} (the health
  marks: which structures, from the mask). bcc cannot compile a
  TRACEPOINT_PROBE for xfs_group_mark_* (its `enum xfs_group_type` field is an
  incomplete type to it), so the arguments are read at BTF offsets instead.
Both attach xfs:xfs_btree_corrupt where it exists (raw: the buffer gives the
btree's name, its level and the allocation group), and both read xfs's
structs, so both need the module's BTF (5.11+). On the raw tracepoint rung
the user-space half reads XFS's kernel log lines (point kernel_log) for what
only they tell there: the verifier and the function of a verifier failure,
the file and line of an internal error (XfsLogReader).
- tracepoint: those lines alone (printk:console), where neither rung can run
  (Debian 11's 5.10: no module BTF; an xfs module loaded after fsev started).

"healthy" marks (scrub or repair found or made a structure good) are left
out: an admin's tool asked for them and reports them itself, and a cleared
mark is no error. Never the health-monitor ioctl: it allows one monitor per
mount and would lock out xfs_healer.
"""

from __future__ import annotations

import bisect
import functools
import re
from typing import TYPE_CHECKING

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import FSEV_H, FUNC_LEN, RecordClass, RecordType, XfsReport, XfsScope, c_string
from fsev.points.kernel_log import CONSOLE_TRACEPOINT, event_of_line
from fsev.points.xfs_fs import ABSENT, FS_TYPE, xfs_present
from fsev.probes.ladder import Rung, RungKind, module_btf_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

if TYPE_CHECKING:
    from fsev.linux.kernel_log import LogLine

NAME = "xfs_error"

# Kernel functions of the kprobe rung. Signatures (read from the kernel
# source; the same in 6.1 and 6.18, checked against 6.18's BTF):
#   xfs_corruption_error(tag, level, mp, buf, bufsize, filename, linenum, failaddr)
#   xfs_buf_verifier_error(bp, error, name, buf, bufsz, failaddr)
#   xfs_inode_verifier_error(ip, error, name, buf, bufsz, failaddr)
#   xfs_fs_mark_sick(mp, mask), xfs_fs_mark_corrupt(mp, mask)          (corrupt: 6.10+)
#   xfs_group_mark_sick(xg, mask), xfs_group_mark_corrupt(xg, mask)    6.13+
#   xfs_ag_mark_sick(pag, mask)                                        before 6.13
#   xfs_inode_mark_sick(ip, mask), xfs_inode_mark_corrupt(ip, mask)
KPROBE_REQUIRED = ("xfs_corruption_error", "xfs_buf_verifier_error")
KPROBE_FUNCTIONS = KPROBE_REQUIRED + (
    "xfs_inode_verifier_error", "xfs_fs_mark_sick", "xfs_fs_mark_corrupt", "xfs_group_mark_sick",
    "xfs_group_mark_corrupt", "xfs_ag_mark_sick", "xfs_inode_mark_sick", "xfs_inode_mark_corrupt")
# Health tracepoints (raw: TP_PROTO (mp|xg|ip, flags)). Before 6.13 the
# group ones were xfs_ag_mark_* with (mp, agno, flags): not read here.
HEALTH_TRACEPOINTS = tuple(f"xfs:xfs_{obj}_mark_{h}" for obj in ("fs", "group", "inode") for h in ("sick", "corrupt"))
BTREE_TRACEPOINT = "xfs:xfs_btree_corrupt"  # raw: (struct xfs_buf *bp, unsigned long caller_ip)

_MOUNT = ("xfs_mount.m_super", "super_block.s_dev")
_INODE = ("xfs_inode.i_mount", "xfs_inode.i_ino")
_GROUP = ("xfs_group.xg_mount", "xfs_group.xg_gno", "xfs_group.xg_type")  # 6.13+
_PERAG = ("xfs_perag.pag_mount", "xfs_perag.pag_agno")  # before 6.13
_BUF = ("xfs_buf.b_mount", "xfs_buf.b_ops", "xfs_buf.b_addr", "xfs_buf.b_pag", "xfs_buf_ops.name")

# Mask bits of each scope, from Linux 6.18 fs/xfs/libxfs/xfs_health.h
# (XFS_SICK_FS_*, XFS_SICK_RG_*, XFS_SICK_AG_*, XFS_SICK_INO_*); older kernels
# use a prefix of each table. Unknown bits decode as "bit<N>".
FS_STRUCTURES = ("counters", "uquota", "gquota", "pquota", "quotacheck", "nlinks", "metadir", "metapath")
RTGROUP_STRUCTURES = ("super", "bitmap", "summary", "rmapbt", "refcountbt")
AG_STRUCTURES = ("sb", "agf", "agfl", "agi", "bnobt", "cntbt", "inobt", "finobt", "rmapbt", "refcountbt", "inodes")
INODE_STRUCTURES = ("inode_core", "bmbt_data", "bmbt_attr", "bmbt_cow", "directory", "xattr", "symlink", "parent",
                    "bmbt_data_zapped", "bmbt_attr_zapped", "directory_zapped", "symlink_zapped", "forget",
                    "dirtree")

SCOPE_NAMES = {int(XfsScope.FS): "fs", int(XfsScope.AG): "ag", int(XfsScope.RTGROUP): "rtgroup",
               int(XfsScope.INODE): "inode"}
STRUCTURES = {"fs": FS_STRUCTURES, "ag": AG_STRUCTURES, "rtgroup": RTGROUP_STRUCTURES, "inode": INODE_STRUCTURES}
HEALTH = {int(XfsReport.MARK_SICK): "sick", int(XfsReport.MARK_CORRUPT): "corrupt"}


def decode_mask(scope: str, mask: int) -> list[str]:
    """The structures a health mask names, lowest bit first."""
    names = STRUCTURES.get(scope, ())
    return [names[b] if b < len(names) else f"bit{b}" for b in range(mask.bit_length()) if mask >> b & 1]


# -- the ladder ----------------------------------------------------------------
def plan_xfs_error(facts: KernelFacts) -> Rung:
    no_btf = module_btf_skip_reason(facts, FS_TYPE, "kprobe")
    btree = (BTREE_TRACEPOINT,) if facts.raw_tracepoints and no_btf is None \
        and facts.has_tracepoint(BTREE_TRACEPOINT) else ()
    skipped: tuple[str, ...] = ()
    if not facts.kprobes:
        skipped += (f"kprobe: {facts.kprobes_why_not or 'kprobes unavailable'}",)
    elif missing := [f for f in KPROBE_REQUIRED if f not in facts.kprobe_functions]:
        skipped += (f"kprobe: {', '.join(missing)} not traceable (is the xfs module loaded?)",)
    elif no_btf:
        skipped += (no_btf,)
    else:
        fns = tuple(f for f in KPROBE_FUNCTIONS if f in facts.kprobe_functions)
        return Rung(NAME, RungKind.KPROBE, fns + btree,
                    gives="corruption and verifier reports with file, line, function and verifier name; "
                          "health marks with their structures" + ("; btree corruption" if btree else ""))
    tps = tuple(t for t in HEALTH_TRACEPOINTS if facts.has_tracepoint(t))
    if not facts.raw_tracepoints:
        skipped += ("raw_tracepoint: no raw tracepoints",)
    elif (raw_no_btf := module_btf_skip_reason(facts, FS_TYPE, "raw_tracepoint")) and tps:
        skipped += (raw_no_btf,)
    elif not tps:
        skipped += ("raw_tracepoint: no xfs:xfs_*_mark_sick tracepoints (6.13+; is the xfs module loaded?)",)
    else:
        return Rung(NAME, RungKind.RAW_TRACEPOINT, tps + btree,
                    gives="health marks (filesystem, allocation/realtime group, inode) with their structures"
                          + ("; btree corruption with btree, level and group" if btree else ""),
                    misses="the check's file, line and function except where XFS's kernel log line gives them "
                           "(point kernel_log: lines may be rate-limited or cut short)",
                    skipped=skipped)
    if facts.has_tracepoint(CONSOLE_TRACEPOINT):
        # Also for a module loaded after fsev started: its lines come all the same.
        return Rung(NAME, RungKind.TRACEPOINT, (CONSOLE_TRACEPOINT,),
                    gives="XFS's corruption and verifier reports from its kernel log lines (the kernel_log "
                          "point): function, errno, inode or block and verifier",
                    misses="health marks and their structures, btree corruption; reports the console's rate "
                           "limit drops or that are cut short",
                    skipped=skipped)
    absent = "" if xfs_present(facts) else ABSENT
    return Rung(NAME, RungKind.NONE, absent=absent,
                skipped=skipped + (f"tracepoint: {CONSOLE_TRACEPOINT} not present",))


def _modern_groups(rung: Rung) -> bool:
    """struct xfs_group (6.13+) rather than xfs_perag's own agno."""
    return any(t.endswith("xfs_group_mark_sick") for t in rung.targets)


# -- records and text ------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _kallsyms() -> tuple[list[int], list[str]]:
    """Text symbols of the running kernel (and its modules), sorted by address."""
    syms: list[tuple[int, str]] = []
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    addr = int(parts[0], 16)
                    if addr:
                        syms.append((addr, parts[2]))
    except OSError:
        pass
    syms.sort()
    return [a for a, _ in syms], [n for _, n in syms]


def symbolize(addr: int) -> str | None:
    """The kernel function an address points into (None: unknown, or addresses hidden)."""
    if not addr:
        return None
    addrs, names = _kallsyms()
    i = bisect.bisect_right(addrs, addr) - 1
    return names[i].removesuffix(".cold") if i >= 0 else None


def finish_xfs_error(ev: Event, value: int, level: int, group: int, addr: int, arg: int, text: bytes) -> None:
    ev.fs_type = FS_TYPE
    x = ev.extra
    report, scope_i = arg & 0xFF, arg >> FSEV_H.FSEV_XFS_SCOPE_SHIFT
    name, tag = c_string(text[:FUNC_LEN]), c_string(text[FUNC_LEN:])
    scope = SCOPE_NAMES.get(scope_i)
    if report in HEALTH:
        x["health"] = HEALTH[report]
    if scope is not None:
        x["scope"] = scope
    if scope in ("ag", "rtgroup"):
        x["group"] = group
    if report in HEALTH and scope is not None:
        x["structures"] = decode_mask(scope, value)
    elif report == XfsReport.BTREE_CORRUPT:
        x["btree"] = name.removeprefix("xfs_") or "unknown"
        if level:
            x["btree_level"] = level - 1
        x["daddr"] = value
    elif report in (XfsReport.VERIFIER_ERROR, XfsReport.INODE_VERIFIER):
        if name:
            x["verifier"] = name.removeprefix("xfs_")
    elif report == XfsReport.CORRUPTION_ERROR:
        if name:
            x["file"] = name
        if tag:
            x["tag"] = tag
    fn = symbolize(addr)
    if fn is not None:
        ev.function = fn


def describe_xfs_error(ev: Event) -> str:
    x = ev.extra
    parts = []
    if "health" in x:
        parts.append(f"{x['health']}")
    if "btree" in x:
        parts.append(f"btree {x['btree']}" + (f" level {x['btree_level']}" if "btree_level" in x else ""))
    if "verifier" in x:
        parts.append(f"verifier {x['verifier']}")
    if "scope" in x:
        where = x["scope"] + (f" {x['group']}" if "group" in x else "")
        if ev.inode is not None:
            where += f" {ev.inode}"
        parts.append(where)
    if x.get("structures"):
        parts.append(",".join(x["structures"]))
    if ev.function:
        parts.append(f"at {ev.function}")
    if "file" in x:
        parts.append(f"{x['file']}:{ev.line}")
    if ev.errno is not None:
        parts.append(f"{ev.errno_name}({ev.errno})")
    return " ".join(parts)


# -- the kernel log (raw tracepoint rung) -------------------------------------------
# What XFS prints where the raw tracepoint rung has no hook (fs/xfs/xfs_error.c,
# the same words in 6.1 and 6.18); the kprobe rung has all of it from the
# arguments. %pS prints "function+0xoff/0xsize" (" [xfs]" when a module).
_VERIFIER_LINE = re.compile(r"Metadata (?P<what>CRC error|corruption) detected at "
                            r"(?P<fn>[\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\w+\])?"
                            r"(?:, (?:inode 0x(?P<ino>[0-9a-f]+)|(?P<ops>\w+) block 0x(?P<daddr>[0-9a-f]+))"
                            r"(?P<end>[ ,]|$))?")
_INTERNAL_LINE = re.compile(r"Internal error (?P<tag>.+?) at line (?P<line>\d+) of file (?P<file>\S+?)\.\s+"
                            r"Caller (?P<fn>[\w.]+)")
EBADMSG, EUCLEAN = 74, 117  # XFS's EFSBADCRC, EFSCORRUPTED


def log_fields(body: str, truncated: bool = False) -> dict | None:
    """An XFS corruption line's details (Event keys and extra), or None for
    other lines. truncated: the line may go on past body, so a number that
    ends the text may be cut short and is left out."""
    m = _VERIFIER_LINE.match(body)
    if m is not None:
        out: dict = {"function": m.group("fn").removesuffix(".cold"),
                     "errno": EBADMSG if m.group("what") == "CRC error" else EUCLEAN, "extra": {}}
        if truncated and not m.group("end"):
            return out
        if m.group("ino"):
            out["inode"] = int(m.group("ino"), 16)
            out["extra"]["verifier"] = "inode"
        elif m.group("ops"):
            out["extra"]["verifier"] = m.group("ops").removeprefix("xfs_")
            out["extra"]["daddr"] = int(m.group("daddr"), 16)
        return out
    m = _INTERNAL_LINE.match(body)
    if m is not None:
        return {"function": m.group("fn").removesuffix(".cold"), "line": int(m.group("line")),
                "extra": {"file": m.group("file"), "tag": m.group("tag")}}
    return None


class XfsLogReader(PointMonitor):
    """On the raw tracepoint and tracepoint rungs: XFS's verifier and
    corruption lines (which name the function that found the damage) as
    fs_errors of rung kernel_log."""

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        ctx.read_kernel_log(FS_TYPE, self.read)

    def read(self, line: "LogLine") -> list[Event]:
        got = log_fields(line.body, line.truncated)
        if got is None or line.dev is None:
            return []
        return [event_of_line(self.ctx, line, EventType.FS_ERROR, FS_TYPE, function=got["function"],
                              line=got.get("line"), errno=got.get("errno"), inode=got.get("inode"),
                              extra=got["extra"])]


class XfsError(Point):
    name = NAME
    fs_type = FS_TYPE
    module = FS_TYPE
    record_type = RecordType.XFS_ERROR
    event_type = EventType.FS_ERROR
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset(HEALTH_TRACEPOINTS + (BTREE_TRACEPOINT, CONSOLE_TRACEPOINT))
    kprobe_functions = frozenset(KPROBE_FUNCTIONS)
    switches = {RungKind.KPROBE: "FSEV_XFS_ERROR_KPROBE", RungKind.RAW_TRACEPOINT: "FSEV_XFS_ERROR_RAW_TP"}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_xfs_error(facts)

    def compiled(self, rung: Rung, config: ProgramConfig | None) -> bool:
        # The tracepoint rung is the kernel_log point's program: none of its own.
        return rung.kind in self.switches and super().compiled(rung, config)

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        d = super().defines(rung, config)
        if rung is not None and self.compiled(rung, config):
            d += [(f"ATTACH_{t.removeprefix('xfs:').upper()}", "1") for t in rung.targets]
        return d

    def offsets(self, rung: Rung, config: ProgramConfig | None) -> tuple[str, ...]:
        if not self.compiled(rung, config):
            return ()
        modern = _modern_groups(rung)
        specs = _MOUNT + _INODE + (_GROUP if modern else ())
        if "xfs_ag_mark_sick" in rung.targets:
            specs += _PERAG
        if BTREE_TRACEPOINT in rung.targets or "xfs_buf_verifier_error" in rung.targets:
            specs += _BUF + (("xfs_perag.pag_group.xg_gno",) if modern else ("xfs_perag.pag_agno",))
        return tuple(dict.fromkeys(specs))

    def kprobes(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str]]:
        if self.compiled_as(rung, config, RungKind.KPROBE):
            return [(fn, f"kp_{fn}") for fn in rung.targets if ":" not in fn]
        return []

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        finish_xfs_error(ev, value, level, direction, mntns, arg, func)

    def describe(self, ev: Event) -> str:
        return describe_xfs_error(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        # The kprobe rung reads the same from the functions' arguments.
        if EventClass.ERR not in ctx.classes or ctx.plan.kind(NAME) not in (RungKind.RAW_TRACEPOINT,
                                                                            RungKind.TRACEPOINT):
            return None
        if ctx.plan.kind("kernel_log") is None:
            return None
        return XfsLogReader(ctx)


POINT = XfsError()
