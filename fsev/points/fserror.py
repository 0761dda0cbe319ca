"""Probe point fserror: a filesystem reported an error through fserror_report() (bpf/fserror.bpf.c).

Linux 7.0 gave filesystems one hook for their errors (fs/fserror.c):

    void fserror_report(struct super_block *sb, struct inode *inode,
                        enum fserror_type type, loff_t pos, u64 len,
                        int error, gfp_t gfp);

ext4 calls it from every __ext4_error* and __ext4_std_error (type metadata,
the inode where ext4 has one), XFS for metadata it marks sick and for its
shutdowns, iomap for failed buffered and direct I/O (with the inode, the byte
range and the errno), for every filesystem built on iomap. It queues the
FAN_FS_ERROR event from a work item; the call itself runs in the erroring
task, so a kprobe there sees that task.

Ladder: a kprobe on fserror_report where kallsyms has it (7.0+); there is no
tracepoint for it (7.0 has none). Else nothing: before 7.0 the filesystems'
own points are all there is.

Never twice: an ext4 error is ext4_error's (kprobes on __ext4_error* and
__ext4_std_error give function, line, errno, inode and block; the call to
fserror_report inside it adds only the type, always "metadata", and no
range). So a metadata report of an ext4 superblock that follows an ext4 error
of the same task and device within FOLD_S is folded into that error: it is
dropped (counted in `folded`). Every other report stands alone as an
fs_error (rung kprobe, function "fserror_report") with errno, inode, `pos`,
`len` and `error_type`: iomap's I/O errors on any filesystem (ext4's direct
I/O too), and any other filesystem that calls it. FOLDED_BY names the
filesystems whose own point carries their metadata errors: ext4's
(ext4_error) and XFS's (xfs_error marks the same sick structure with more:
scope, group, structure names, and on its kprobe rung file and line).
"""

from __future__ import annotations

from fsev.events import Event, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType, c_string
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

NAME = "fserror"
FSERROR_FUNCTION = "fserror_report"
# enum fserror_type (include/linux/fserror.h, 7.0); the record's level is the value + 1.
FSERROR_TYPES = ("buffered_read", "buffered_write", "directio_read", "directio_write", "data_lost", "metadata")
KPROBE_OFFSETS = ("super_block.s_dev", "inode.i_ino", "super_block.s_type", "file_system_type.name")
# Filesystem type -> the point whose own events carry its metadata errors.
FOLDED_BY = {"ext4": "ext4_error", "xfs": "xfs_error"}
# A filesystem's error and its fserror_report call are one call chain in one task:
# microseconds apart. A second is far more than enough and far less than
# the next error of the same task is likely to come after a first.
FOLD_S = 1.0


def plan_fserror(facts: KernelFacts) -> Rung:
    why = kprobe_skip_reason(facts, (FSERROR_FUNCTION,))
    if why is None:
        return Rung(NAME, RungKind.KPROBE, (FSERROR_FUNCTION,),
                    gives="errno, inode, byte range and error type of every report, for every filesystem that "
                    "calls it (ext4, XFS, iomap I/O errors)",
                    misses="function and line (ext4_error has them for ext4's own errors, into which those "
                    "reports are folded)")
    # BTF's struct fserror_event tells 7.0+ where kallsyms cannot (no kprobes).
    absent = "" if facts.fserror or FSERROR_FUNCTION in facts.kprobe_functions else "fserror_report is Linux 7.0+"
    return Rung(NAME, RungKind.NONE, absent=absent,
                skipped=(why + " (fserror_report is Linux 7.0+)", "tracepoint: fserror_report has none"))


class FserrorMonitor(PointMonitor):
    """Folds the reports that repeat an ext4 error; lets the others stand alone."""

    handles = frozenset({EventType.FS_ERROR})

    def __init__(self) -> None:
        self._last: dict[tuple[str | None, int | None], int] = {}  # (dev, pid) -> ts_ns of its last error
        self.folded = 0

    def process(self, ev: Event) -> list[Event]:
        fs = ev.extra.get("_fserror")
        if fs is None:  # another point's error: remember its task, for the report that may follow
            if len(self._last) > 4096:
                self._last.clear()
            self._last[(ev.dev, ev.pid)] = ev.ts_ns
            return [ev]
        if fs in FOLDED_BY and ev.extra.get("error_type") == "metadata":
            ts = self._last.get((ev.dev, ev.pid))
            if ts is not None and 0 <= ev.ts_ns - ts <= FOLD_S * 1e9:
                self.folded += 1
                return []
        return [ev]


class Fserror(Point):
    name = NAME
    record_type = RecordType.FSERROR
    event_type = EventType.FS_ERROR
    classes = frozenset({RecordClass.ERR})
    kprobe_functions = frozenset({FSERROR_FUNCTION})
    switches = {RungKind.KPROBE: "FSEV_FSERROR_KPROBE"}
    rung_offsets = {RungKind.KPROBE: KPROBE_OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_fserror(facts)

    def offsets(self, rung: Rung, config: ProgramConfig | None) -> tuple[str, ...]:
        return KPROBE_OFFSETS if self.compiled_as(rung, config, RungKind.KPROBE) else ()

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        ev.extra["_fserror"] = c_string(func) or "?"
        ev.function = FSERROR_FUNCTION
        ev.extra["error_type"] = FSERROR_TYPES[level - 1] if 0 < level <= len(FSERROR_TYPES) else f"type{level - 1}"
        if value or mntns:
            ev.extra["pos"] = value
            ev.extra["len"] = mntns
        if ev.errno is not None:
            ev.extra["errno_source"] = "kprobe"
        if ev.inode is not None:
            ev.extra["inode_source"] = "kprobe"

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        return FserrorMonitor() if ctx.plan.kind(NAME) is RungKind.KPROBE else None


POINT = Fserror()
