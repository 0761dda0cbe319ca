"""Probe point kernel_log: the kernel log lines of ext4, btrfs and XFS, for the
points of those filesystems (bpf/kernel_log.bpf.c).

Why: some details reach the kernel log and nowhere else fsev can read. ext4
prints the inode and block of an error that fanotify cannot report (a
filesystem with a zero fsid cannot be marked) and sysfs did not record (a
read-only device); btrfs has no error tracepoint at all, but prints every
error and transaction abort with function, line and errno.

Ladder: the printk:console tracepoint, the one rung. It fires as printk
stores a line, in the printing task (its pid and comm are the erroring
task's), right after the filesystem's own tracepoint for the same error, so
a line arrives in the ring after the record it explains. On older kernels
(before the printk rework of 5.15) it fires when a console prints the line,
from whichever task flushes the console, and only for lines the console
loglevel lets through: the task and the timing are then not the error's.

What it misses: lines a filesystem rate-limited (ext4: ext4_msg_ratelimit,
10 lines per 5 s by default; btrfs: printk_ratelimit for most messages), the
part of a line past the record's text (FSEVTEXT_LEN - 1 bytes: LogLine.truncated),
and it cannot tell a line root wrote to /dev/kmsg from the kernel's own.

The interface for other points: a user-space half calls
`ctx.read_kernel_log("btrfs", reader)` when it is made (SessionContext,
fsev/probes/point.py); each line of that filesystem, parsed into a
fsev.linux.kernel_log.LogLine (device name resolved to the block device's
major:minor), goes to every reader of its filesystem in arrival order, and
the events a reader returns are emitted. The lines themselves are never
emitted. They pass the ordering half (ext4_error_detail) untouched: a reader
that completes an error the ordering half holds does so through that half's
own state (fsev/session/pipeline.py routes KERNEL_LOG events past it).
"""

from __future__ import annotations

from typing import Any

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import TEXT_LEN, RecordClass, RecordType
from fsev.linux.kernel_log import LogLine, parse_line
from fsev.linux.mountinfo import Mount
from fsev.probes.ladder import Rung, RungKind
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "kernel_log"
CONSOLE_TRACEPOINT = "printk:console"


def plan_kernel_log(facts: KernelFacts) -> Rung:
    if facts.has_tracepoint(CONSOLE_TRACEPOINT):
        return Rung(NAME, RungKind.TRACEPOINT, (CONSOLE_TRACEPOINT,),
                    gives="ext4, btrfs and XFS kernel log lines with the printing task, "
                          "for those filesystems' points",
                    misses="lines the filesystem rate-limited; text past "
                           f"{TEXT_LEN - 1} bytes")
    return Rung(NAME, RungKind.NONE, skipped=(f"tracepoint: {CONSOLE_TRACEPOINT} not present",))


def event_of_line(ctx: SessionContext, log: LogLine, event_type: EventType, fs_type: str,
                  mount: Mount | None = None, **fields: Any) -> Event:
    """An err event made from one of a filesystem's log lines (rung
    kernel_log), for the readers of other points: the printing task's, stamped
    when the kernel printed the line, on `mount` (btrfs names its filesystem
    by a member device: its reader finds the mount), else on the watched mount
    of the line's device, else the first mount of it, else on none."""
    if mount is None and log.dev is not None:
        major, minor = (int(x) for x in log.dev.split(":"))
        mounts = ctx.table.by_dev(major, minor)
        mount = next((m for m in mounts if ctx.mount_watched(m)), mounts[0]) if mounts else None
    ev = ctx.make_event(cls=EventClass.ERR, type=event_type, rung=NAME, dev=mount.dev if mount else log.dev,
                        fs_type=fs_type, pid=log.pid, tgid=log.tgid, comm=log.comm, **fields)
    if mount is not None:
        ev.mount_point, ev.source, ev.mnt_id = mount.mount_point, mount.source, mount.mnt_id
    ev.ts_ns, ev.wall_time = log.ts_ns, ctx.clock.wall(log.ts_ns)
    return ev


class KernelLogMonitor(PointMonitor):
    """Hands each line to the readers of its filesystem."""

    handles = frozenset({EventType.KERNEL_LOG})

    def __init__(self, ctx: SessionContext) -> None:
        self._readers = ctx.log_readers  # the dict itself: readers made after this one register too
        self.lines = 0  # lines seen, for `fsev doctor` and tests
        self.unread = 0  # lines no reader took (no point reads that filesystem)

    def process(self, ev: Event) -> list[Event]:
        line = ev.extra.get("_log")
        if not isinstance(line, LogLine):
            return []
        self.lines += 1
        readers = self._readers.get(line.fs)
        if not readers:
            self.unread += 1
            return []
        out: list[Event] = []
        for read in readers:
            out += read(line)
        return out


class KernelLog(Point):
    name = NAME
    record_type = RecordType.KERNEL_LOG
    event_type = EventType.KERNEL_LOG
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({CONSOLE_TRACEPOINT})
    switches = {RungKind.TRACEPOINT: "FSEV_KLOG_TP"}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_kernel_log(facts)

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        raw = func.split(b"\0", 1)[0]
        text = raw.decode("utf-8", "replace")
        ev.extra["_log"] = parse_line(text, ts_ns=ev.ts_ns, pid=ev.pid or 0, tgid=ev.tgid or 0,
                                      comm=ev.comm or "", truncated=len(raw) >= TEXT_LEN - 1)

    def describe(self, ev: Event) -> str:
        line = ev.extra.get("_log")
        return line.text if isinstance(line, LogLine) else ""

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        rung = ctx.plan.rung(NAME)
        if rung is None or not rung.usable:
            return None
        return KernelLogMonitor(ctx)


POINT = KernelLog()
