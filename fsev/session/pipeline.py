"""The user-space half of the health events, between decoding and emission.

TraceSession hands every decoded, enriched kernel event to process() and
calls poll() on each turn of its loop. HealthMonitor:
- completes fs_errors with errno and inode (fsev.points.fs_error_detail),
- reports read-only transitions (fsev.points.readonly), linked to their error,
- counts ENOSPC storms (fsev.points.enospc),
- maps block I/O errors to the mounts on the device (fsev.linux.blockdev),
- reports mount topology and namespace-teardown drops (fsev.points.topology),
and numbers what it emits (events may wait briefly, so seq is given late).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from fsev.linux.blockdev import disk_of, partition_of
from fsev.probes.decode import Clock
from fsev.points.enospc import TICK_S, EnospcAggregator, KernelTotal, resolve_create_path
from fsev.events import Event, EventClass, EventType
from fsev.linux.fanotify import FsErrorWatch
from fsev.points.fs_error_detail import Ext4ErrorDetail
from fsev.probes.health_records import CALL_NAMES
from fsev.linux.mountinfo import Mount, MountTable
from fsev.probes.plan import Plan, ProbePoint, RungKind
from fsev.points.readonly import ReadOnlyTracker
from fsev.kernel.records import kernel_dev
from fsev.points.topology import Topology

_HELD_POLL_MS = 2  # loop turn while events wait for fanotify
# Types whose decoding leaves fsev-internal "_" keys in extra (health_records).
_WITH_PRIVATE_KEYS = frozenset({EventType.ENOSPC, EventType.MOUNT})
_FS_ERROR = EventType.FS_ERROR


def _parse_dev(dev: str) -> tuple[int, int]:
    major, _, minor = dev.partition(":")
    return int(major), int(minor)


class HealthMonitor:
    def __init__(self, plan: Plan, classes: frozenset[EventClass], table: MountTable, clock: Clock,
                 watched: list[Mount], probes: object | None, number: Callable[[Event], Event],
                 now: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.clock = clock
        self.classes = classes
        self.probes = probes
        self.number = number
        self.now = now
        self.watch_all = not watched
        self._points = {m.mount_point for m in watched}
        self._devs = {m.dev for m in watched}
        self._generation = -1
        self._wb_errseq: dict[tuple[str | None, int | None], object] = {}

        def usable(point: ProbePoint) -> RungKind | None:
            r = plan.rung(point)
            return r.kind if r is not None and r.usable else None

        err, warn, info = (c in classes for c in (EventClass.ERR, EventClass.WARN, EventClass.INFO))
        detail = usable(ProbePoint.EXT4_ERROR_DETAIL)
        fan = None
        if err and detail is RungKind.FANOTIFY:
            try:
                fan = FsErrorWatch()
            except OSError:
                fan = None
        self.detail = Ext4ErrorDetail(fan, now) if err and detail else None
        self.readonly = ReadOnlyTracker(table, self._mount_watched, now) if (
            (err or info) and usable(ProbePoint.READ_ONLY)) else None
        self.enospc = EnospcAggregator(now) if warn and usable(ProbePoint.ENOSPC) else None
        self._last_tick = now()
        topo = usable(ProbePoint.MOUNT_TOPOLOGY)
        self.topology = Topology(table, self._make, fanotify=topo is RungKind.FANOTIFY,
                                 mark_all_namespaces=self.watch_all, now=now) if info and topo else None
        if probes is not None and not self.watch_all:
            probes.set_keys("watched_disks", [kernel_dev(*_parse_dev(disk_of(m.dev))) for m in watched])
        self._watch_ext4()

    # -- helpers -----------------------------------------------------------
    def _make(self, **fields: object) -> Event:
        """A user-space event, numbered when it is emitted."""
        ts = time.monotonic_ns()
        return Event(seq=0, ts_ns=ts, wall_time=self.clock.wall(ts), **fields)  # type: ignore[arg-type]

    def _mount_watched(self, m: Mount) -> bool:
        return self.watch_all or m.mount_point in self._points or m.dev in self._devs

    def _wanted(self, ev: Event) -> bool:
        if ev.cls not in self.classes:
            return False
        return self.watch_all or ev.mount_point in self._points or ev.dev in self._devs

    def _watch_ext4(self) -> None:
        if self.detail is None or self._generation == self.table.generation:
            return
        self._generation = self.table.generation
        self.detail.watch([m for m in self.table if m.fs_type == "ext4" and self._mount_watched(m)])

    def _emit(self, events: Iterable[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if ev.type in _WITH_PRIVATE_KEYS:
                for k in [k for k in ev.extra if k.startswith("_")]:
                    del ev.extra[k]
            if not self._wanted(ev):
                continue
            self.number(ev)
            if ev.type is EventType.FS_ERROR and self.readonly is not None:
                self.readonly.on_fs_error(ev)
            out.append(ev)
        return out

    # -- the pipeline --------------------------------------------------------
    def process(self, ev: Event) -> list[Event]:
        """One decoded, enriched kernel event -> the events to emit now."""
        ready = self.detail.process(ev) if self.detail is not None else [ev]
        if ev.type is _FS_ERROR and len(ready) == 1 and ready[0] is ev:
            # The flood path (fs_errors by the hundred thousand a second): the
            # kernel filtered class and mount already.
            self.number(ev)
            if self.readonly is not None:
                self.readonly.on_fs_error(ev)
            return ready
        return self._dispatch(ready)

    def _dispatch(self, ready: list[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in ready:
            t = ev.type
            if t is EventType.READ_ONLY and self.readonly is not None:
                got = self.readonly.on_kernel_record(ev)
                out += self._emit([got] if got else [])
            elif t is EventType.ENOSPC and self.enospc is not None:
                out += self._emit([self._enospc(ev)])
            elif t is EventType.BLOCK_IO_ERROR:
                out += self._emit([self._block(ev)])
            elif t is EventType.WB_ERROR:
                # An errseq that did not change records nothing new: the error
                # is set already and nobody has seen it yet (measured: ext4
                # records a failed write-back twice).
                key = (ev.dev, ev.inode)
                if ev.extra.get("errseq") != self._wb_errseq.get(key):
                    if len(self._wb_errseq) > 4096:
                        self._wb_errseq.clear()
                    self._wb_errseq[key] = ev.extra.get("errseq")
                    out += self._emit([ev])
            elif t is EventType.MOUNT:
                done = self.topology.on_record(ev) if self.topology is not None else []
                out += self._mount_events(done)
            else:
                if t is EventType.UMOUNT and self.topology is not None:
                    self.topology.on_umount(ev)
                out += self._emit([ev])
        return out

    def _mount_events(self, events: list[Event]) -> list[Event]:
        for e in events:
            if self.readonly is not None and e.type is EventType.MOUNT:
                self.readonly.on_mount_call(e)
        return self._emit(events)

    def _enospc(self, ev: Event) -> Event:
        assert self.enospc is not None and ev.dev is not None
        key = kernel_dev(*_parse_dev(ev.dev))
        if not ev.extra.get("_path_exact") and ev.path:
            m = resolve_create_path(ev.path, ev.tgid or 0, self.table.containing)
            if isinstance(m, Mount):
                ev.dev, ev.mount_point, ev.fs_type, ev.source, ev.mnt_id = (
                    m.dev, m.mount_point, m.fs_type, m.source, m.mnt_id)
        return self.enospc.on_record(key, ev)

    def _block(self, ev: Event) -> Event:
        """The request names the disk; the filesystem sits on it or on a partition."""
        if ev.dev is None:
            return ev
        disk = ev.dev
        part = partition_of(disk, int(ev.extra.get("sector") or 0))
        mounts = self.table.by_dev(*_parse_dev(part))
        if part != disk:
            ev.extra["disk"] = disk
            ev.dev = part
        if mounts:
            m = next((m for m in mounts if self._mount_watched(m)), mounts[0])
            ev.mount_point, ev.fs_type, ev.source, ev.mnt_id = m.mount_point, m.fs_type, m.source, m.mnt_id
            if len(mounts) > 1:
                ev.extra["mount_points"] = [x.mount_point for x in mounts]
        return ev

    def poll(self) -> list[Event]:
        """Events due now from user-space sources and waits."""
        self._watch_ext4()
        out: list[Event] = []
        if self.detail is not None:
            out += self._dispatch(self.detail.poll())
        if self.topology is not None:
            out += self._mount_events(self.topology.poll())
        if self.readonly is not None:
            out += self._emit(self.readonly.poll(self._make))
        if self.enospc is not None and self.now() - self._last_tick >= TICK_S / 4:
            self._last_tick = self.now()
            out += self._emit(self.enospc.tick(self._enospc_totals(), self._make))
        return out

    def flush(self) -> list[Event]:
        """At the end: everything still waiting, and the last ENOSPC counts."""
        out: list[Event] = []
        if self.detail is not None:
            out += self._dispatch(self.detail.flush())
        if self.topology is not None:
            out += self._mount_events(self.topology.poll(final=True))
        if self.enospc is not None:
            out += self._emit(self.enospc.tick(self._enospc_totals(), self._make, final=True))
        return out

    def _enospc_totals(self) -> dict[int, KernelTotal]:
        if self.probes is None:
            return {}
        out = {}
        for key, v in self.probes.table_items("enospc_states"):  # type: ignore[attr-defined]
            out[key] = KernelTotal(int(v.failures), int(v.last_pid), CALL_NAMES.get(int(v.last_call)),
                                   bytes(v.last_comm).split(b"\0", 1)[0].decode("utf-8", "replace"))
        return out

    def timeout_ms(self, default: int) -> int:
        """How long the session may block: short while events wait on fanotify."""
        if self.detail is not None and self.detail.holding:
            return min(default, _HELD_POLL_MS)
        if self.topology is not None and self.topology.waiting:
            return min(default, 10 * _HELD_POLL_MS)
        return default

    def close(self) -> None:
        if self.detail is not None:
            self.detail.close()
        if self.topology is not None:
            self.topology.close()
