"""Probe point read_only: a filesystem turned read-only, or back (bpf/read_only.bpf.c).

Ladder: kprobes around ext4_handle_error (every error-caused transition, in
any context) and reconfigure_super (remounts), else the raw ext4_error and
sys_exit tracepoints (the state at the error and when the erroring task
leaves its syscall), else /proc/self/mountinfo alone.

Read-only state of mounts, and its transitions:

mount_read_only() answers "is this mount read-only, and why" from
/proc/self/mountinfo, which shows ext4's emergency read-only flag (6.12+)
where statfs does not. ReadOnlyTracker turns changes into `read_only`
events: `err` when an error caused them (linked to that error's seq),
`info` when an admin remounted.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.events.device import Device
from fsev.kernel.facts import (
    EXT4_ABORTED,
    EXT4_EMERGENCY_RO,
    EXT4_FLAGS_SHUTDOWN_VALUE,
    EXT4_SHUTDOWN,
    KernelFacts,
)
from fsev.kernel.records import Call, RecordClass, RecordType, RoBits
from fsev.linux.mountinfo import Mount, MountTable
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, raw_tp_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig, offset_macro

NAME = "read_only"
RAW_SYS_EXIT = "raw_syscalls:sys_exit"  # raw: sys_exit(struct pt_regs *, long ret)
RAW_EXT4_ERROR = "ext4:ext4_error"  # raw: ext4_error(struct super_block *, function, line)
# kprobe rung. Known signatures:
#   static void ext4_handle_error(struct super_block *sb, ...)  sb first in every version
#   int reconfigure_super(struct fs_context *fc)                5.2+
RO_KPROBE = "ext4_handle_error"
RO_KPROBE_REMOUNT = "reconfigure_super"

_RO = ("super_block.s_dev", "super_block.s_flags")
_RO_EXT4_FLAGS = ("super_block.s_fs_info", "ext4_sb_info.s_ext4_flags")
_RO_EXT4_MOUNT_FLAGS = ("super_block.s_fs_info", "ext4_sb_info.s_mount_flags")
OFFSETS = {
    RungKind.RAW_TRACEPOINT: _RO,
    RungKind.KPROBE: (*_RO, "fs_context.root", "dentry.d_sb"),
}

# rung.reads: EXT4_FLAGS_SHUTDOWN at its known value (no BTF enum to resolve).
SHUTDOWN_KNOWN = f"known:EXT4_FLAGS_SHUTDOWN={EXT4_FLAGS_SHUTDOWN_VALUE}"

EMERGENCY_RO = "emergency_ro"  # ext4 6.12+, after an error with errors=remount-ro
SHUTDOWN = "shutdown"  # ext4 shut down (errors=remount-ro on 6.7-6.11, the ioctl), or a `shutdown` event (XFS)
ABORTED = "aborted"  # ext4's journal aborted, writes refused (kernel record only: mountinfo does not show it)
SB_RDONLY = "sb_rdonly"  # the superblock is read-only (every mount of it)
MNT_READONLY = "mnt_readonly"  # only this mount is (mount -o remount,ro,bind)

# States the kernel records tell and mountinfo may not show (aborted never,
# shutdown only from 6.12): a table without them is no way back to
# read-write; ext4 keeps them until the filesystem is unmounted.
_KERNEL_ONLY = frozenset({ABORTED, SHUTDOWN})

DESCRIPTIONS = {
    EMERGENCY_RO: "read-only after an error (ext4 emergency_ro; statfs still says read-write)",
    SHUTDOWN: "shut down: no reads or writes (statfs still says read-write, and mountinfo may too)",
    ABORTED: "read-only after an error (ext4 aborted; mountinfo and statfs still say read-write)",
    SB_RDONLY: "filesystem read-only",
    MNT_READONLY: "this mount read-only",
}


def mount_read_only(m: Mount) -> str | None:
    """Why a mount is read-only now (EMERGENCY_RO, SHUTDOWN, SB_RDONLY, MNT_READONLY), or
    None. Kernels from 6.7 to 6.11 set ext4's shutdown flag after an error
    without showing it in mountinfo: only the kernel record tells those."""
    if EMERGENCY_RO in m.super_options:
        return EMERGENCY_RO
    if SHUTDOWN in m.super_options:
        return SHUTDOWN
    if "ro" in m.super_options:
        return SB_RDONLY
    if "ro" in m.options:
        return MNT_READONLY
    return None


# Re-read mountinfo this long after an ext4 error, for transitions no kernel
# record reported (errors raised outside a syscall on the raw rung).
CHECK_DELAYS_S = (0.05, 0.3, 1.0)
# A transition this soon after an error on its device, or a remount call on
# its mount point, is attributed to it.
CAUSE_WINDOW_S = 3.0
CAUSE_SLACK_NS = 1_000_000
_FS_ERROR = EventType.FS_ERROR  # an enum member lookup costs on the flood path


# A mount, as the tracker keeps its state: the kernel reuses mount ids, so a
# mount made at another place (or of another device) under an unmounted
# one's id between two reads of the table is a new mount, not that one with
# its kernel-only state (shutdown, aborted) still on.
MountKey = tuple[int, str, str]


def _key(m: Mount) -> MountKey:
    return (m.mnt_id, m.dev, m.mount_point)


class ReadOnlyTracker:
    def __init__(self, table: MountTable, watched: Callable[[Mount], bool],
                 now: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.watched = watched
        self.now = now
        self._state: dict[MountKey, str | None] = {_key(m): mount_read_only(m) for m in table}
        self._generation = table.generation
        # dev -> (seq, kernel ts_ns) of its latest fs_errors
        self._errors: dict[str, deque[tuple[int, int]]] = {}
        self._calls: list[tuple[float, Event]] = []  # recent remount-like calls
        self._due: list[float] = []
        self._pending: list[Event] = []  # read_only events a shutdown caused, for the next poll

    # -- inputs ------------------------------------------------------------
    def on_fs_error(self, ev: Event) -> None:
        """An emitted (numbered) fs_error event. On the flood path: cheap."""
        t = ev.ts_ns * 1e-9  # CLOCK_MONOTONIC, as self.now()
        recent = self._errors.get(ev.dev)  # type: ignore[arg-type]  # an fs_error always names its device
        if recent is None:
            recent = self._errors[ev.dev] = deque(maxlen=64)  # type: ignore[index]  # an fs_error always names its device
        recent.append((ev.seq, ev.ts_ns))
        if not self._due or self._due[-1] < t:  # a flood of errors shares one round of checks
            self._due += [t + d for d in CHECK_DELAYS_S]

    def on_shutdown(self, ev: Event, make_event: Callable[..., Event]) -> None:
        """An emitted `shutdown` event: its filesystem is read-only now (XFS
        refuses every write; nothing in mountinfo or statfs shows it), once
        per mount of it, unless a kernel record told already."""
        mounts = [m for m in self._mounts_of(ev.dev) if self._state.get(_key(m)) != SHUTDOWN]
        if not mounts and self._mounts_of(ev.dev):
            return
        for m in mounts:
            self._state[_key(m)] = SHUTDOWN
        m0 = next((m for m in mounts if m.mnt_id == ev.mnt_id), mounts[0] if mounts else None)
        out = make_event(
            cls=EventClass.ERR, type=EventType.READ_ONLY, rung=ev.rung, dev=ev.dev,
            mount_point=m0.mount_point if m0 else ev.mount_point, fs_type=m0.fs_type if m0 else ev.fs_type,
            source=m0.source if m0 else ev.source, mnt_id=m0.mnt_id if m0 else ev.mnt_id,
            extra={"read_only": True, "flag": SHUTDOWN, "cause": "error", "caused_by_seq": ev.seq})
        out.pid, out.tgid, out.comm = ev.pid, ev.tgid, ev.comm
        self._pending.append(out)

    def on_mount_call(self, ev: Event) -> None:
        if ev.extra.get("action") in ("remount", "reconfigure", "setattr"):
            self._calls.append((self.now(), ev))

    def on_kernel_record(self, ev: Event) -> Event | None:
        """A kernel read_only record: the event to emit, or None when the
        mount table already told (and fsev reported) this transition."""
        read_only = bool(ev.extra.get("read_only"))
        flag = ev.extra.get("flag")
        new = flag if read_only else None
        mounts = self._mounts_of(ev.dev)
        changed = not mounts or any(self._state.get(_key(m)) != new for m in mounts)
        for m in mounts:
            self._state[_key(m)] = new
        if not changed:
            return None
        cause_ts = ev.extra.pop("_cause_ts", None)
        if ev.extra.get("cause") == "error":
            ev.cls = EventClass.ERR
            self._link_error(ev, cause_ts)
        else:
            ev.cls = EventClass.INFO
        return ev

    # -- the mount table ---------------------------------------------------
    def poll(self, make_event: Callable[..., Event]) -> list[Event]:
        out: list[Event] = self._pending
        self._pending = []
        return out + self._poll_table(make_event)

    def _poll_table(self, make_event: Callable[..., Event]) -> list[Event]:
        now = self.now()
        if self._due and self._due[0] <= now:
            self._due = [t for t in self._due if t > now]
            self.table.refresh()
        self._calls = [(t, e) for t, e in self._calls if now - t < CAUSE_WINDOW_S]
        if self.table.generation == self._generation:
            return []
        self._generation = self.table.generation
        out: list[Event] = []
        seen: set[MountKey] = set()
        for m in self.table:
            key = _key(m)
            seen.add(key)
            new = mount_read_only(m)
            if key not in self._state:
                self._state[key] = new  # a new mount: no transition
                continue
            old = self._state[key]
            if new == old or (new is None and old in _KERNEL_ONLY):
                continue
            self._state[key] = new
            if self.watched(m):
                out.append(self._transition(m, old, new, make_event))
        for gone in set(self._state) - seen:
            del self._state[gone]
        return out

    def _transition(self, m: Mount, old: str | None, new: str | None, make_event: Callable[..., Event]) -> Event:
        now = self.now()
        call = next((e for t, e in reversed(self._calls) if self._call_names(e, m)), None)
        err = self._errors.get(m.dev)
        recent_error = bool(err and now - err[-1][1] * 1e-9 < CAUSE_WINDOW_S)
        by_error = new == EMERGENCY_RO or (new is not None and call is None and recent_error)
        if new == SHUTDOWN:  # the ioctl (a tool asked) unless an error just came
            by_error = recent_error
        ev = make_event(
            cls=EventClass.ERR if by_error else EventClass.INFO, type=EventType.READ_ONLY, rung="polled",
            dev=m.dev, mount_point=m.mount_point, fs_type=m.fs_type, source=m.source, mnt_id=m.mnt_id,
            extra={"read_only": new is not None, "flag": new or old,
                   "cause": "error" if by_error else "remount"},
        )
        if by_error:
            self._link_error(ev, None)
        elif call is not None:
            ev.pid, ev.tgid, ev.comm = call.pid, call.tgid, call.comm
            if "call" in call.extra:
                ev.extra["call"] = call.extra["call"]
        return ev

    @staticmethod
    def _call_names(call: Event, m: Mount) -> bool:
        # fsconfig works on an fd: any recent reconfigure may be the one. A
        # remount changes the superblock, so every mount of it follows.
        return call.extra.get("action") == "reconfigure" or call.mount_point == m.mount_point \
            or call.path == m.mount_point or (call.dev == m.dev and call.extra.get("action") == "remount")

    def _link_error(self, ev: Event, cause_ts: int | None) -> None:
        """The error that caused a transition: with the kernel's timestamp of
        the error handling that made it (kernel records), the last error on
        the device up to then (ext4 turns read-only inside the error's own
        handling; a second error may follow before the record is sent);
        else the last error on the device."""
        recent = self._errors.get(ev.dev or "")
        if not recent or self.now() - recent[-1][1] * 1e-9 >= CAUSE_WINDOW_S:
            return
        if cause_ts:
            # The error's own record and the handling are a few µs apart
            # (and on the raw rung taken by two programs in either order).
            before = [seq for seq, ts in recent if ts <= cause_ts + CAUSE_SLACK_NS]
            if before:
                ev.extra["caused_by_seq"] = before[-1]
                return
        ev.extra["caused_by_seq"] = recent[-1][0]

    def _mounts_of(self, dev: str | None) -> list[Mount]:
        if dev is None:
            return []
        d = Device.parse(dev)
        return self.table.by_dev(d.major, d.minor)

    def read_only_mounts(self) -> dict[str, str]:
        """Mount point -> reason, for every mount read-only now (for `top`)."""
        return {m.mount_point: r for m in self.table if (r := mount_read_only(m))}


# -- the ladder ----------------------------------------------------------------
def ro_flag_description(facts: KernelFacts) -> str:
    """Which read-only states the programs read: what this kernel's BTF has."""
    flags = ["super_block.s_flags SB_RDONLY (up to 6.6)"]
    if facts.ext4_aborted_bit is not None:
        flags.append(f"ext4_sb_info.s_mount_flags EXT4_MF_FS_ABORTED ({facts.ext4_aborted_bit}; up to 6.5)")
    if facts.ext4_shutdown_bit is not None:
        known = ", its known value: BTF has no EXT4_FLAGS_* enum" if facts.ext4_shutdown_known else ""
        flags.append(f"ext4_sb_info.s_ext4_flags EXT4_FLAGS_SHUTDOWN ({facts.ext4_shutdown_bit}{known}; "
                     "6.7-6.14, backports)")
    if facts.ext4_emergency_ro_bit is not None:
        flags.append(f"EXT4_FLAGS_EMERGENCY_RO ({facts.ext4_emergency_ro_bit}; 6.12+)")
    else:
        flags.append("no EXT4_FLAGS_EMERGENCY_RO (a kernel before 6.12)")
    return ", ".join(flags)


def plan_read_only(facts: KernelFacts) -> Rung:
    flag = ro_flag_description(facts)
    shutdown = SHUTDOWN_KNOWN if facts.ext4_shutdown_known else EXT4_SHUTDOWN
    reads = tuple(spec for spec, bit in ((EXT4_EMERGENCY_RO, facts.ext4_emergency_ro_bit),
                                         (shutdown, facts.ext4_shutdown_bit),
                                         (EXT4_ABORTED, facts.ext4_aborted_bit)) if bit is not None)
    admin = "; admin remounts ro/rw from /proc/self/mountinfo changes and mount(2) calls"
    why = kprobe_skip_reason(facts, (RO_KPROBE,))
    if why is None:
        targets = (RO_KPROBE,) + ((RO_KPROBE_REMOUNT,) if RO_KPROBE_REMOUNT in facts.kprobe_functions else ())
        return Rung(NAME, RungKind.KPROBE, targets,
                    gives=f"every error-caused transition, in any context, from {flag} before and after "
                    f"ext4_handle_error; remounts from reconfigure_super{admin}", reads=reads)
    skipped = (why,)
    why = raw_tp_skip_reason(facts, (RAW_EXT4_ERROR, RAW_SYS_EXIT), x86_64=True)
    if why is None:
        return Rung(NAME, RungKind.RAW_TRACEPOINT, ("ext4_error", "sys_exit"),
                    gives=f"{flag} at the error and again when the erroring task leaves its syscall{admin}",
                    misses="errors raised outside a syscall (writeback, journal threads): fsev sees those "
                    "read-only states in /proc/self/mountinfo after the error (rung polled)",
                    skipped=skipped, reads=reads)
    return Rung(NAME, RungKind.POLLED, ("/proc/self/mountinfo",),
                gives="read-only states (ro, emergency_ro) in /proc/self/mountinfo, checked after each "
                "ext4 error and each mount-table change",
                misses="the exact moment and the task of an error-caused transition",
                skipped=skipped + (why,))


# -- records and text ------------------------------------------------------------
def ro_flag_name(bits: int) -> str | None:
    """The read-only mechanism a superblock's bits show, the most telling first."""
    if bits & RoBits.EMERGENCY:
        return "emergency_ro"
    if bits & RoBits.SHUTDOWN:
        return "shutdown"
    if bits & RoBits.SB_RDONLY:
        return "sb_rdonly"
    if bits & RoBits.ABORTED:
        return "aborted"
    return None


def describe_read_only(ev: Event) -> str:
    x = ev.extra
    if not x.get("read_only"):
        return "read-write again" + (f" ({x['call']})" if x.get("call") else "")
    text = DESCRIPTIONS.get(x.get("flag") or "", "read-only")
    if x.get("cause") == "error":
        text += f", after error #{x['caused_by_seq']}" if "caused_by_seq" in x else ", after an error"
    elif x.get("call"):
        text += f" ({x['call']})"
    return text


class ReadOnlyMonitor(PointMonitor):
    """Kernel read_only records, mountinfo changes after errors and remounts."""

    handles = frozenset({EventType.READ_ONLY})
    observes = frozenset({EventType.FS_ERROR, EventType.MOUNT, EventType.SHUTDOWN})

    def __init__(self, ctx: SessionContext, tracker: ReadOnlyTracker) -> None:
        self.ctx = ctx
        self.tracker = tracker

    def process(self, ev: Event) -> list[Event]:
        got = self.tracker.on_kernel_record(ev)
        return [got] if got is not None else []

    def observe(self, ev: Event) -> None:
        if ev.type is _FS_ERROR:
            self.tracker.on_fs_error(ev)
        elif ev.type is EventType.SHUTDOWN:
            self.tracker.on_shutdown(ev, self.ctx.make_event)
        else:
            self.tracker.on_mount_call(ev)

    def poll(self) -> list[Event]:
        return self.tracker.poll(self.ctx.make_event)

    def flush(self) -> list[Event]:
        return self.tracker.poll(self.ctx.make_event)  # a shutdown's read-only state, still pending


class ReadOnly(Point):
    name = NAME
    record_type = RecordType.READ_ONLY
    event_type = EventType.READ_ONLY
    # Error transitions are err; kprobe remounts are info.
    classes = frozenset({RecordClass.ERR, RecordClass.INFO})
    tracepoints = frozenset({RAW_SYS_EXIT, RAW_EXT4_ERROR})
    kprobe_functions = frozenset({RO_KPROBE, RO_KPROBE_REMOUNT})

    switches = {RungKind.RAW_TRACEPOINT: "FSEV_RO_RAW_TP", RungKind.KPROBE: "FSEV_RO_KPROBE"}
    rung_offsets = OFFSETS

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_read_only(facts)

    def offsets(self, rung: Rung, config: ProgramConfig | None) -> tuple[str, ...]:
        specs = list(super().offsets(rung, config))
        if not specs:
            return ()
        for spec in (EXT4_EMERGENCY_RO, EXT4_SHUTDOWN):
            if spec in rung.reads:
                specs += [*_RO_EXT4_FLAGS, spec]
        if SHUTDOWN_KNOWN in rung.reads:
            specs += _RO_EXT4_FLAGS  # the bit comes from defines()
        if EXT4_ABORTED in rung.reads:
            specs += [*_RO_EXT4_MOUNT_FLAGS, EXT4_ABORTED]
        return tuple(specs)

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        d = super().defines(rung, config)
        if rung is not None and SHUTDOWN_KNOWN in rung.reads and self.offsets(rung, config):
            d.append((offset_macro(EXT4_SHUTDOWN), str(EXT4_FLAGS_SHUTDOWN_VALUE)))
        return d

    def kprobes(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.compiled_as(rung, config, RungKind.KPROBE):
            for fn in (RO_KPROBE, RO_KPROBE_REMOUNT):
                if fn in rung.targets:
                    out += [(fn, f"kp_{fn}"), (fn, f"kretp_{fn}")]
        return out

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        x = ev.extra
        x["read_only"] = bool(value)
        x["flag"] = ro_flag_name(value) or ro_flag_name(arg)
        x["cause"] = "error" if call == Call.EXT4_ERROR else "remount"

    def describe(self, ev: Event) -> str:
        return describe_read_only(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        if not ({EventClass.ERR, EventClass.INFO} & ctx.classes) or ctx.plan.kind(NAME) is None:
            return None
        return ReadOnlyMonitor(ctx, ReadOnlyTracker(ctx.table, ctx.mount_watched, ctx.now))


POINT = ReadOnly()
