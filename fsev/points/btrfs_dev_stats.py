"""Probe point btrfs_dev_stats: a btrfs member device's error counters grew
(device_errors events; bpf/btrfs_dev_stats.bpf.c). The counters are read
from user space; the kernel side only says when btrfs counts.

btrfs counts, per member device, write, read and flush I/O errors,
corruption errors (a checksum or tree-block check failed on what the device
returned) and generation errors, and keeps them on disk across mounts
(fsev/linux/btrfs.py reads them: sysfs error_stats, else the
BTRFS_IOC_GET_DEV_STATS ioctl).

Ladder: kprobe on btrfs_dev_stat_inc_and_print(device, index), where btrfs
counts I/O and checksum errors and prints its "bdev D errs: ..." line: a
sign (never emitted) that makes fsev read that filesystem's counters at once
and gives the counting task (pid, comm) to the event; else polled. There is
no tracepoint on the counts (btrfs_dev_stat_inc, which a few paths call
directly, is inline). When fsev reads them:
- at start and when a watched btrfs filesystem is mounted: the baseline (no
  event: counts that predate fsev are not news; every event's `totals` show
  them, as `fsev doctor` does);
- every PERIOD_S (10 s), each watched, mounted btrfs filesystem once
  (multiple mounts of one filesystem are one), one sysfs file per member
  device: nothing else is read, nothing is held open;
- promptly, PROMPT_DELAYS_S after a sign of an error on a filesystem: the
  kprobe (kprobe rung), btrfs's own log lines of it (it prints "bdev D errs: wr W, rd R, ..." on
  each increment, rate-limited), its fs_errors, and block_io_errors on one
  of its member devices;
- once more when fsev stops.
What it misses: errors btrfs does not count per device (a transaction abort
for ENOSPC, an error in memory, a tree block repaired from its other copy:
those are btrfs_error's fs_errors); polled rung: the exact moment and the
task of each increment (an event gives the increase since the last reading,
up to PERIOD_S late if no sign came); both: counters reset (`btrfs device
stats -z`) between two readings, whose increase is then counted from the
reset, and counts btrfs makes without btrfs_dev_stat_inc_and_print (kprobe
rung: they wait for another sign or the period).
"""

from __future__ import annotations

from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType
from fsev.linux.btrfs import COUNTERS, SYSFS, Filesystem, Member, read_counters
from fsev.linux.kernel_log import LogLine
from fsev.linux.mountinfo import MountTable
from fsev.points.btrfs_fs import FS_TYPE, BtrfsMounts, WatchedBtrfs
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, module_btf_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

NAME = "btrfs_dev_stats"
PERIOD_S = 10.0
PROMPT_DELAYS_S = (0.05, 0.5, 2.0)  # the counter is bumped as the failed bio completes: a moment after its sign

MISSES = ("errors btrfs does not count per device (e.g. a transaction abort from ENOSPC: those are "
          "btrfs_error's fs_errors); the task and exact time of each increment (up to "
          f"{PERIOD_S:g} s late without a kernel log line, fs_error or block I/O error as a sign); "
          "counts from before fsev started (the baseline)")


KPROBE = "btrfs_dev_stat_inc_and_print"
# void btrfs_dev_stat_inc_and_print(struct btrfs_device *dev, int index)   6.1 and 6.18 (volumes.c)
KPROBE_OFFSETS = ("super_block.s_dev", "btrfs_device.fs_info", "btrfs_device.devid", "btrfs_fs_info.sb")
_TARGETS = (f"{SYSFS}/<fsid>/devinfo/<devid>/error_stats", "BTRFS_IOC_GET_DEV_STATS")
_GIVES = ("write, read, flush, corruption and generation error counts of each member device of watched btrfs "
          f"filesystems: every {PERIOD_S:g} s, and promptly after ")


def plan_btrfs_dev_stats(facts: KernelFacts) -> Rung:
    why = kprobe_skip_reason(facts, (KPROBE,)) or module_btf_skip_reason(facts, FS_TYPE, "kprobe")
    if why is None:
        return Rung(NAME, RungKind.KPROBE, (KPROBE, *_TARGETS),
                    gives=_GIVES + "each count btrfs prints (kprobe: with the counting task), btrfs log lines, "
                          "fs_errors and block I/O errors on them",
                    misses="errors btrfs does not count per device (e.g. a transaction abort from ENOSPC: those "
                           "are btrfs_error's fs_errors); counts made without " + KPROBE + " (up to "
                           f"{PERIOD_S:g} s late); counts from before fsev started (the baseline)")
    return Rung(NAME, RungKind.POLLED, _TARGETS,
                gives=_GIVES + "btrfs log lines, fs_errors and block I/O errors on them",
                misses=MISSES, skipped=(why,))


Key = tuple[str, int]  # (filesystem dev, devid)


class CounterDeltas:
    """Readings -> increases. The first reading of a device is its baseline."""

    def __init__(self) -> None:
        self.last: dict[Key, dict[str, int]] = {}
        self.baselines: dict[Key, dict[str, int]] = {}

    def update(self, key: Key, totals: dict[str, int]) -> dict[str, int] | None:
        """The counters that grew since the last reading (name -> increase), or None."""
        prev = self.last.get(key)
        self.last[key] = dict(totals)
        if prev is None:
            self.baselines[key] = dict(totals)
            return None
        # A counter that fell was reset (btrfs device stats -z): it starts again from its value now.
        grew = {k: v - prev[k] for k, v in totals.items() if k in prev and v > prev[k]}
        return grew or None

    def keep(self, keys: set[Key]) -> None:
        """Forget devices no longer watched: a filesystem mounted again gets a new baseline."""
        for k in [k for k in self.last if k not in keys]:
            del self.last[k]
            self.baselines.pop(k, None)


class DevStatsMonitor(PointMonitor):
    # DEVICE_ERRORS records of the kprobe rung are signs (extra "_count"), never emitted.
    handles = frozenset({EventType.DEVICE_ERRORS})
    observes = frozenset({EventType.FS_ERROR, EventType.BLOCK_IO_ERROR})

    def __init__(self, ctx: SessionContext, mounts: BtrfsMounts,
                 read: Callable[[Filesystem, Member, str], dict[str, int]] = read_counters) -> None:
        self.ctx = ctx
        self.mounts = mounts
        self.read = read
        self.deltas = CounterDeltas()
        self.unreadable: dict[str, str] = {}  # "mount point devid" -> why its counters could not be read
        self._due: dict[str, list[float]] = {}  # filesystem dev -> when to read it
        self._next_period = ctx.now() + PERIOD_S
        self.readings = 0  # member readings made (for tests and the cost bound)
        self._counting: dict[Key, Event] = {}  # the last kprobe sign of each device since its last reading
        ctx.read_kernel_log(FS_TYPE, self._on_line)
        # The baseline now, while the session starts: counts made once fsev
        # says it is attached are events. (Read at the first poll instead, an
        # error in between became part of the baseline: seen in the 6.1 guest.)
        self._sync_mounts()  # first readings: baselines, never events

    # -- signs -------------------------------------------------------------
    def _schedule(self, w: WatchedBtrfs) -> None:
        now = self.ctx.now()
        due = self._due.get(w.dev)
        if due and due[-1] > now + PROMPT_DELAYS_S[-1] * 0.5:
            return  # a burst of signs shares one round of readings
        self._due[w.dev] = sorted(set((due or []) + [now + d for d in PROMPT_DELAYS_S]))

    def _on_line(self, line: LogLine) -> list[Event]:
        self.mounts.refresh(self.ctx.watch_generation)
        found = self.mounts.by_member(line.dev, line.device)
        if found is not None:
            self._schedule(found[0])
        return []

    def process(self, ev: Event) -> list[Event]:
        """A kprobe sign: btrfs is counting an error on this device now."""
        w = self.mounts.by_dev.get(ev.dev or "")
        if w is None:
            self.mounts.refresh(self.ctx.watch_generation)
            w = self.mounts.by_dev.get(ev.dev or "")
        if w is not None:
            self._counting[(w.dev, int(ev.extra.get("_devid") or 0))] = ev
            self._schedule(w)
        return []

    def observe(self, ev: Event) -> None:
        if ev.type is EventType.FS_ERROR:
            w = self.mounts.by_dev.get(ev.dev or "") if ev.fs_type == FS_TYPE else None
        else:  # a block I/O error names the member device (or its disk)
            found = self.mounts.by_member(ev.dev) or self.mounts.by_member(ev.extra.get("disk"))
            w = found[0] if found else None
        if w is not None:
            self._schedule(w)

    # -- readings ----------------------------------------------------------
    def _read_fs(self, w: WatchedBtrfs) -> list[Event]:
        out: list[Event] = []
        for mem in w.fs.members:
            try:
                totals = self.read(w.fs, mem, w.mount.mount_point)
            except OSError as e:
                self.unreadable[f"{w.mount.mount_point} {mem.devid}"] = e.strerror or str(e)
                continue
            self.readings += 1
            grew = self.deltas.update((w.dev, mem.devid), totals)
            if grew:
                out.append(self._event(w, mem, grew, totals))
        return out

    def _event(self, w: WatchedBtrfs, mem: Member, grew: dict[str, int], totals: dict[str, int]) -> Event:
        m = w.mount
        ev = self.ctx.make_event(cls=EventClass.ERR, type=EventType.DEVICE_ERRORS, rung="polled", dev=m.dev,
                                 mount_point=m.mount_point, fs_type=m.fs_type, source=m.source, mnt_id=m.mnt_id,
                                 extra={"counters": grew, "totals": dict(totals), "devid": mem.devid,
                                        "device": mem.path})
        sign = self._counting.pop((w.dev, mem.devid), None)
        if sign is not None:  # kprobe rung: the task that counted last (the counts are still read, rung polled)
            ev.pid, ev.tgid, ev.comm = sign.pid, sign.tgid, sign.comm
        return ev

    def _sync_mounts(self) -> list[Event]:
        """Baselines of filesystems newly watched; devices gone are forgotten."""
        self.mounts.refresh(self.ctx.watch_generation)
        out: list[Event] = []
        for w in self.mounts.by_dev.values():
            if any((w.dev, mem.devid) not in self.deltas.last for mem in w.fs.members):
                out += self._read_fs(w)
        self.deltas.keep({(w.dev, mem.devid) for w in self.mounts.by_dev.values() for mem in w.fs.members})
        return out

    def poll(self) -> list[Event]:
        now = self.ctx.now()
        out = self._sync_mounts()
        if now >= self._next_period:
            self._next_period = now + PERIOD_S
            self._due.clear()
            for w in self.mounts.by_dev.values():
                out += self._read_fs(w)
            return out
        for dev in [d for d, due in self._due.items() if due[0] <= now]:
            left = [t for t in self._due[dev] if t > now]
            if left:
                self._due[dev] = left
            else:
                del self._due[dev]
            due_fs = self.mounts.by_dev.get(dev)
            if due_fs is not None:
                out += self._read_fs(due_fs)
        return out

    def flush(self) -> list[Event]:
        out: list[Event] = []
        for w in self.mounts.by_dev.values():
            out += self._read_fs(w)
        return out

    def timeout_ms(self, default: int) -> int:
        """Until the next reading due: a sign's, or the period's while a btrfs filesystem is watched
        (fsev serve waits long between events)."""
        times = [due[0] for due in self._due.values()]
        if self.mounts.by_dev:
            times.append(self._next_period)
        if not times:
            return default
        wait = min(times) - self.ctx.now()
        return max(0, min(default, int(wait * 1000) + 1))

    def mounts_changed(self) -> None:
        self.mounts.refresh(self.ctx.watch_generation)


class BtrfsDevStats(Point):
    name = NAME
    module = FS_TYPE
    record_type = RecordType.BTRFS_DEV_STAT
    event_type = EventType.DEVICE_ERRORS
    classes = frozenset({RecordClass.ERR})
    kprobe_functions = frozenset({KPROBE})
    switches = {RungKind.KPROBE: "FSEV_BTRFS_DEV_STATS_KPROBE"}
    rung_offsets = {RungKind.KPROBE: KPROBE_OFFSETS}

    def kprobes(self, rung: Rung, config: ProgramConfig) -> list[tuple[str, str]]:
        return [(KPROBE, f"kp_{KPROBE}")] if self.compiled_as(rung, config, RungKind.KPROBE) else []

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        ev.extra["_devid"] = value
        ev.extra["_counter"] = COUNTERS[arg] if 0 <= arg < len(COUNTERS) else arg

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_btrfs_dev_stats(facts)

    def describe(self, ev: Event) -> str:
        return describe_device_errors(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        if EventClass.ERR not in ctx.classes or ctx.plan.kind(NAME) is None:
            return None
        return DevStatsMonitor(ctx, BtrfsMounts(ctx.table, ctx.mount_watched))


def describe_device_errors(ev: Event) -> str:
    x = ev.extra
    grew = ", ".join(f"{k} +{v}" for k, v in sorted((x.get("counters") or {}).items()))
    totals = x.get("totals") or {}
    now = ", ".join(f"{k} {totals[k]}" for k in sorted(totals) if totals[k])
    return f"{x.get('device', '?')} (devid {x.get('devid', '?')}): {grew} (now {now or 'none'})"


def counters_now(table: MountTable) -> list[tuple[str, str, int, dict[str, int] | str]]:
    """(mount point, member device, devid, counters or why they could not be
    read) of every mounted btrfs filesystem, once each: what a session would
    take as its baseline (`fsev doctor` shows it)."""
    mounts = BtrfsMounts(table, lambda m: True)
    mounts.refresh()
    out: list[tuple[str, str, int, dict[str, int] | str]] = []
    for w in mounts.by_dev.values():
        for mem in w.fs.members:
            try:
                got: dict[str, int] | str = read_counters(w.fs, mem, w.mount.mount_point)
            except OSError as e:
                got = e.strerror or str(e)
            out.append((w.mount.mount_point, mem.path, mem.devid, got))
    out += [(mp, "-", 0, why) for mp, why in mounts.unreadable.items()]
    return out


POINT = BtrfsDevStats()

