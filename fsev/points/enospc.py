"""Probe point enospc: a write, fallocate, create or mkdir failed with ENOSPC (bpf/enospc.bpf.c).

Ladder: the raw sys_exit tracepoint with security_inode_create/mkdir kprobes
(the parent directory's superblock), else raw sys_exit alone (create/mkdir
resolved from the path by fsev). Both decode x86-64 syscall numbers.

ENOSPC storms: one event, then an exact count per second. The kernel counts every ENOSPC failure per
superblock with an atomic add and sends a record only for the first failure
after a quiet second; the record carries its ordinal n (this was failure
number n on that superblock). Every second fsev reads the per-superblock
totals. A summary covers the failures up to the total read one tick earlier
(by then every record numbered within it has been sent, or was lost and
counted as loss), minus those already reported one by one. So the counts of
all events add up exactly to the failures, with no lock in the kernel.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.events.device import Device
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import CALL_NAMES, FSEV_H, Call, Field, RecordClass, RecordType, c_string
from fsev.linux.mountinfo import Mount
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, raw_tp_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

NAME = "enospc"
RAW_SYS_EXIT = "raw_syscalls:sys_exit"  # raw: sys_exit(struct pt_regs *, long ret)
# kprobe rung. Known signatures (2.6+):
#   int security_inode_create(struct inode *dir, struct dentry *, umode_t)
#   int security_inode_mkdir(struct inode *dir, struct dentry *, umode_t)
ENOSPC_KPROBES = ("security_inode_create", "security_inode_mkdir")
OFFSETS = ("super_block.s_dev", "pt_regs.orig_ax", "pt_regs.di", "pt_regs.si", "task_struct.files",
           "files_struct.fdt", "fdtable.fd", "fdtable.max_fds", "file.f_inode", "inode.i_sb", "inode.i_ino",
           "task_struct.fs", "fs_struct.root.mnt", "fs_struct.pwd.mnt", "vfsmount.mnt_sb")
# A storm is over after this long without a failure: the next one is sent.
ENOSPC_QUIET_NS = FSEV_H.FSEV_ENOSPC_QUIET_NS
# Calls that fail with ENOSPC for want of room for data, and those that need
# room for a new inode or directory entry (metadata).
DATA_CALLS = frozenset({Call.WRITE, Call.PWRITE64, Call.WRITEV, Call.PWRITEV, Call.PWRITEV2, Call.FALLOCATE})
METADATA_CALLS = frozenset({Call.OPEN, Call.OPENAT, Call.OPENAT2, Call.CREAT, Call.MKDIR, Call.MKDIRAT})
_F_PATH_EXACT = int(Field.PATH_EXACT)

TICK_S = 1.0


@dataclass
class _Key:
    """One kernel counter (a superblock, or the lookup base of path calls)."""

    snapshots: list[tuple[float, int]] = field(default_factory=list)  # (time, total) per tick
    summarized: int = 0  # every failure <= this is in some emitted event
    details: list[int] = field(default_factory=list)  # ordinals > summarized reported one by one
    last_detail: Event | None = None  # names the mount and call of a summary
    last_summary: float = -1e18


@dataclass(frozen=True)
class KernelTotal:
    """What the kernel's enospc_states holds for one key."""

    failures: int
    last_pid: int = 0
    last_call: str | None = None
    last_comm: str | None = None


class EnospcAggregator:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self._keys: dict[int, _Key] = {}
        self._last_activity = -1e18

    def quiet(self, quiet_s: float = 10 * TICK_S) -> bool:
        """No record and no growing count for quiet_s: nothing a tick could
        summarise, and the kernel's counters need not be read (an idle
        service's wake-ups stay cheap). A new storm starts with a record."""
        return self.now() - self._last_activity > quiet_s

    def on_record(self, kernel_dev: int, ev: Event) -> Event:
        """A kernel ENOSPC record (first of a storm): reported now, counting one."""
        self._last_activity = self.now()
        k = self._keys.setdefault(kernel_dev, _Key())
        n = int(ev.extra.pop("_ordinal", 0))
        if n > k.summarized:
            bisect.insort(k.details, n)
            ev.extra["count"] = 1
        else:  # a summary already counted it (it came more than a tick late)
            ev.extra["count"] = 0
        k.last_detail = ev
        return ev

    def tick(self, totals: dict[int, KernelTotal], make_event: Callable[..., Event], final: bool = False
             ) -> list[Event]:
        """Summaries due now. totals: the kernel's counters read just now.
        final: fsev is stopping; cover everything read (a record still on its
        way is then counted here instead of reported)."""
        now = self.now()
        out: list[Event] = []
        for dev, total in totals.items():
            k = self._keys.setdefault(dev, _Key())
            if not k.snapshots or total.failures != k.snapshots[-1][1] or total.failures > k.summarized:
                self._last_activity = now
            k.snapshots.append((now, total.failures))
            if not final and now - k.last_summary < TICK_S - 1e-9:
                continue  # at most one summary a second
            # The newest snapshot at least one tick old; at the end, the last.
            due = [s for s in k.snapshots if final or now - s[0] >= TICK_S - 1e-9]
            if not due:
                continue
            since, upto = due[-1]
            k.snapshots = [s for s in k.snapshots if s[0] > since]
            if upto <= k.summarized:
                continue
            cut = bisect.bisect_right(k.details, upto)
            reported = cut
            count = upto - k.summarized - reported
            first = k.summarized + 1
            k.details = k.details[cut:]
            k.summarized = upto
            if count <= 0:
                continue
            k.last_summary = now
            out.append(self._summary(dev, k, total, count, first, upto, make_event))
        return out

    def _summary(self, dev: int, k: _Key, total: KernelTotal, count: int, first: int, upto: int,
                 make_event: Callable[..., Event]) -> Event:
        base = k.last_detail
        extra: dict[str, object] = {"count": count, "count_total": upto, "storm": True}
        if total.last_call:
            extra["call"] = total.last_call
        if base is not None:
            for key in ("space",):
                if key in base.extra:
                    extra[key] = base.extra[key]
        return make_event(
            cls=EventClass.WARN, type=EventType.ENOSPC, rung=base.rung if base else "raw_tracepoint",
            dev=base.dev if base else str(Device.from_kernel(dev)),
            mount_point=base.mount_point if base else None, fs_type=base.fs_type if base else None,
            source=base.source if base else None, mnt_id=base.mnt_id if base else None,
            pid=total.last_pid or None, tgid=None, comm=total.last_comm, errno=FSEV_H.FSEV_ENOSPC, extra=extra,
        )


def resolve_create_path(path: str, pid: int, containing: Callable[[str], object]) -> object | None:
    """The mount a create/mkdir path names (the tracepoint rung sends the path
    as the caller passed it): absolute paths directly, relative ones through
    the task's cwd while it still lives. None when it cannot be told."""
    if not path:
        return None
    if not path.startswith("/"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        path = os.path.join(cwd, path)
    parent = os.path.dirname(os.path.normpath(path)) or "/"
    return containing(parent)


def plan_enospc(facts: KernelFacts) -> Rung:
    misses = ("io_uring, aio and in-kernel writers (nfsd, loop); splice, sendfile, copy_file_range; "
              "ENOSPC reported late by close or fsync; 32-bit (compat) processes, whose syscall numbers "
              "differ; whether a write lacked room for data or for metadata (told by the call only)")
    raw_why = raw_tp_skip_reason(facts, (RAW_SYS_EXIT,), x86_64=True)
    why = kprobe_skip_reason(facts, ENOSPC_KPROBES) or raw_why
    if why is None:
        return Rung(NAME, RungKind.KPROBE, ("sys_exit", *ENOSPC_KPROBES),
                    gives="failed write/fallocate (superblock from the fd) and create/mkdir (superblock of "
                    "the parent directory, from security_inode_create/mkdir)",
                    misses=misses)
    skipped = (why,)
    if raw_why is None:
        return Rung(NAME, RungKind.RAW_TRACEPOINT, ("sys_exit",),
                    gives="failed write/fallocate (superblock from the task's fd table) and create/mkdir "
                    "(path as passed)",
                    misses=misses + "; for create/mkdir the mount is resolved from the path by fsev (absolute, "
                    "or relative to the task's cwd while it lives), so symlinks and other mount "
                    "namespaces can mislead it",
                    skipped=skipped)
    return Rung(NAME, RungKind.NONE, skipped=skipped + (raw_why,))


def describe_enospc(ev: Event) -> str:
    x = ev.extra
    what = f"{x.get('call', '?')}: no space ({x.get('space', 'data')})"
    if ev.path:
        what += f" {ev.path}"
    if x.get("storm"):
        return f"{x.get('count')} more ENOSPC ({x.get('count_total')} in all), last {what}"
    return what


class EnospcMonitor(PointMonitor):
    """Names the mount of a failed create by its path; counts storms."""

    handles = frozenset({EventType.ENOSPC})

    def __init__(self, ctx: SessionContext, aggregator: EnospcAggregator) -> None:
        self.ctx = ctx
        self.enospc = aggregator
        self._last_tick = ctx.now()

    def process(self, ev: Event) -> list[Event]:
        assert ev.dev is not None
        key = Device.parse(ev.dev).kernel
        if not ev.extra.get("_path_exact") and ev.path:
            m = resolve_create_path(ev.path, ev.tgid or 0, self.ctx.table.containing)
            if isinstance(m, Mount):
                ev.dev, ev.mount_point, ev.fs_type, ev.source, ev.mnt_id = (
                    m.dev, m.mount_point, m.fs_type, m.source, m.mnt_id)
        return [self.enospc.on_record(key, ev)]

    def poll(self) -> list[Event]:
        if self.ctx.now() - self._last_tick < TICK_S / 4 or self.enospc.quiet():
            return []
        self._last_tick = self.ctx.now()
        return self.enospc.tick(self._totals(), self.ctx.make_event)

    def flush(self) -> list[Event]:
        return self.enospc.tick(self._totals(), self.ctx.make_event, final=True)

    def _totals(self) -> dict[int, KernelTotal]:
        probes = self.ctx.probes
        if probes is None:
            return {}
        out = {}
        for key, v in probes.table_items("enospc_states"):
            out[key] = KernelTotal(int(v.failures), int(v.last_pid), CALL_NAMES.get(int(v.last_call)),  # type: ignore[attr-defined]  # bcc table leaves are built at run time
                                   c_string(bytes(v.last_comm)))  # type: ignore[attr-defined]  # as above
        return out


class Enospc(Point):
    name = NAME
    record_type = RecordType.ENOSPC
    event_type = EventType.ENOSPC
    classes = frozenset({RecordClass.WARN})
    tracepoints = frozenset({RAW_SYS_EXIT})
    kprobe_functions = frozenset(ENOSPC_KPROBES)

    switches = {RungKind.RAW_TRACEPOINT: "FSEV_ENOSPC_RAW_TP", RungKind.KPROBE: "FSEV_ENOSPC_KPROBE"}
    rung_offsets = {RungKind.RAW_TRACEPOINT: OFFSETS, RungKind.KPROBE: OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_enospc(facts)

    def kprobes(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str]]:
        if self.compiled_as(rung, config, RungKind.KPROBE):
            return [(fn, f"kp_{fn}") for fn in ENOSPC_KPROBES]
        return []

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        x = ev.extra
        x["space"] = "data" if call in DATA_CALLS else "metadata"
        x["_ordinal"] = value
        x["_path_exact"] = bool(f & _F_PATH_EXACT) or call in DATA_CALLS

    def describe(self, ev: Event) -> str:
        return describe_enospc(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        if EventClass.WARN not in ctx.classes or ctx.plan.kind(NAME) is None:
            return None
        return EnospcMonitor(ctx, EnospcAggregator(ctx.now))


POINT = Enospc()
