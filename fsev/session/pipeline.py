"""The user-space half of every probe point, between decoding and emission.

TraceSession hands every decoded kernel event to process() and calls poll()
on each turn of its loop. The pipeline names the mount each event concerns
(Enricher), routes each event to the
half of the point that handles its type (fsev/points/<name>.py), emits what
comes out, numbered in the order it leaves, and shows the emitted events to
the halves that follow other points' events (read-only transitions after an
fs_error, for one). A half that orders (ext4_error_detail) sees every event
first and may hold later ones behind one that waits, so the stream keeps the
kernel's order.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import Device
from fsev.events.numbering import EventNumbers
from fsev.linux.mountinfo import Mount, MountTable
from fsev.points.registry import MODULES, POINTS
from fsev.probes.ladder import Plan
from fsev.probes.point import KernelTables, PointMonitor, SessionContext

_FS_ERROR = EventType.FS_ERROR  # an enum member lookup costs on the flood path
_UMOUNT = EventType.UMOUNT
_KERNEL_LOG = EventType.KERNEL_LOG


def with_mount(ev: Event, m: Mount | None) -> Event:
    """Fill the mount fields in place (events are fresh values at this point)."""
    if m is not None:
        ev.mount_point = m.mount_point
        ev.fs_type = m.fs_type
        ev.source = m.source
        ev.dev = ev.dev or m.dev
        if ev.mnt_id is None:
            ev.mnt_id = m.mnt_id
    return ev


class Enricher:
    """Names the mount an event concerns, preferring the mounts the user watches."""

    def __init__(self, table: MountTable, watched_mount_points: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.watched = watched_mount_points
        # A flood of errors names the same mount again and again: remember the
        # answer until the mount table changes.
        self._cache: dict[tuple[str | None, int | None, str | None], Mount | None] = {}
        self._generation = table.generation

    def set_watched(self, mount_points: frozenset[str]) -> None:
        self.watched = mount_points
        self._cache.clear()  # its answers preferred the mounts watched before

    def _pick(self, mounts: list[Mount]) -> Mount | None:
        if not mounts:
            return None
        for m in mounts:
            if m.mount_point in self.watched:
                return m
        return mounts[0]

    def mount_for(self, ev: Event) -> Mount | None:
        if ev.mnt_id is not None:
            m = self.table.by_id(ev.mnt_id)
            if m is not None:
                return m
        if ev.path is not None:
            m = self.table.by_mount_point(ev.path) or self.table.departed_by_mount_point(ev.path)
            if m is not None:
                return m
        if ev.dev is not None:
            d = Device.parse(ev.dev)
            return self._pick(self.table.by_dev(d.major, d.minor)) or self._pick(
                self.table.departed_by_dev(d.major, d.minor))
        return None

    def enrich(self, ev: Event) -> Event:
        if self._generation != self.table.generation:
            self._cache.clear()
            self._generation = self.table.generation
        key = (ev.dev, ev.mnt_id, ev.path)
        try:
            m = self._cache[key]
        except KeyError:
            m = self._cache[key] = self.mount_for(ev)
        if m is not None:  # with_mount(), inlined: every kernel event comes here
            ev.mount_point = m.mount_point
            ev.fs_type = m.fs_type
            ev.source = m.source
            ev.dev = ev.dev or m.dev
            if ev.mnt_id is None:
                ev.mnt_id = m.mnt_id
        return ev


def _poll_order(monitors: list[PointMonitor]) -> list[PointMonitor]:
    """The order halves poll in: the one that orders first, then each half
    before those that observe the types it handles (a remount call before the
    read-only transition it explains)."""
    placed = [m for m in monitors if m.orders]
    rest = [m for m in monitors if not m.orders]
    while rest:
        free = next((m for m in rest if not any(o is not m and o.handles & m.observes for o in rest)), rest[0])
        placed.append(free)
        rest.remove(free)
    return placed


class DormantPoints(PointMonitor):
    """Points planned with nothing to watch because their filesystem's module
    was not loaded when fsev started (Rung.absent): fsev cannot attach to a
    module loaded later, so a watched filesystem of that kind mounted since is
    untraced by them. Says so once per mount (stderr, the service's log); the
    metric's dormant label turns false for it too."""

    def __init__(self, ctx: SessionContext, points: dict[str, list[str]]) -> None:
        self.ctx = ctx
        self._points = points  # module -> its points planned absent
        self._told: set[tuple[int, str]] = set()  # (mnt_id, mount point)
        self._notes: list[str] = []
        self._generation = (ctx.table.generation, ctx.watch_generation)  # mounts at start: the plan saw them

    @classmethod
    def of(cls, ctx: SessionContext) -> list[PointMonitor]:
        points: dict[str, list[str]] = {}
        for r in ctx.plan.rungs:
            module = MODULES.get(r.name)
            if r.absent and module is not None:
                points.setdefault(module, []).append(r.name)
        return [cls(ctx, points)] if points else []

    def mounts_changed(self) -> None:
        ctx = self.ctx
        generation = (ctx.table.generation, ctx.watch_generation)
        if generation == self._generation:
            return
        self._generation = generation
        for m in ctx.table:
            names = self._points.get(m.fs_type)
            if names and (m.mnt_id, m.mount_point) not in self._told and ctx.mount_watched(m):
                self._told.add((m.mnt_id, m.mount_point))
                self._notes.append(f"{m.mount_point} ({m.dev}): {m.fs_type} mounted after fsev started without the "
                                   f"{m.fs_type} module loaded: {', '.join(names)} cannot trace it until fsev restarts")

    def poll(self) -> list[Event]:
        self.mounts_changed()  # fsev serve re-watches without calling it
        return []

    def notes(self) -> list[str]:
        out, self._notes = self._notes, []
        return out


class EventPipeline:
    def __init__(self, plan: Plan, classes: frozenset[EventClass], table: MountTable, clock: Clock,
                 watched: list[Mount], probes: KernelTables | None, numbers: EventNumbers,
                 now: Callable[[], float] = time.monotonic, enricher: Enricher | None = None,
                 dynamic: bool = False) -> None:
        self.table = table
        self.enricher = enricher or Enricher(table, frozenset(m.mount_point for m in watched))
        self.clock = clock
        self.classes = classes
        self.numbers = numbers
        self.now = now
        self.watch_all = not watched and not dynamic
        # The classes watched on each watched mount, by mount point and by device.
        self._points: dict[str, frozenset[EventClass]] = {m.mount_point: classes for m in watched}
        self._devs: dict[str | None, frozenset[EventClass]] = {m.dev: classes for m in watched}
        self._every: frozenset[EventClass] = frozenset()  # fsev serve's `*` (set_watch)
        self.ctx = ctx = SessionContext(plan=plan, classes=classes, table=table, clock=clock, watched=list(watched),
                                        probes=probes, now=now, make_event=clock.user_event,
                                        mount_watched=self._mount_watched, dynamic=dynamic)
        self.monitors = _poll_order([m for p in POINTS if (m := p.monitor(ctx)) is not None]
                                    + DormantPoints.of(ctx))
        self._order = next((m for m in self.monitors if m.orders), None)
        self._handler: dict[EventType, PointMonitor] = {t: m for m in self.monitors for t in m.handles}
        self._observers: dict[EventType, list[PointMonitor]] = {}
        for m in self.monitors:
            for t in m.observes:
                self._observers.setdefault(t, []).append(m)
        self._fs_error_observers = tuple(self._observers.get(_FS_ERROR, ()))
        self._fast_fs_error = _FS_ERROR not in self._handler

    # -- helpers -----------------------------------------------------------
    def _mount_watched(self, m: Mount) -> bool:
        return self.watch_all or bool(self._every) or m.mount_point in self._points or m.dev in self._devs

    def _wanted(self, ev: Event) -> bool:
        if ev.cls not in self.classes:
            return False
        if self.watch_all or ev.cls in self._every:
            return True
        got = self._points.get(ev.mount_point) if ev.mount_point is not None else None
        if got is None:
            got = self._devs.get(ev.dev)
        return got is not None and ev.cls in got

    def set_watch(self, mounts: Iterable[tuple[Mount, frozenset[EventClass]]],
                  every: frozenset[EventClass] = frozenset()) -> None:
        """fsev serve: watch exactly these mounts, each for its classes, and
        `every` class on any mount, also one not in the table now (it came and
        went between two reads), from now on. The halves see the new set at
        the mounts_changed() that follows."""
        mounts = list(mounts)
        self._every = every
        points: dict[str, frozenset[EventClass]] = {}
        devs: dict[str | None, frozenset[EventClass]] = {}
        for m, cl in mounts:
            points[m.mount_point] = points.get(m.mount_point, frozenset()) | cl
            devs[m.dev] = devs.get(m.dev, frozenset()) | cl
        self._points, self._devs = points, devs
        self.ctx.watched[:] = [m for m, _ in mounts]
        self.ctx.watch_generation += 1
        self.enricher.set_watched(frozenset(points))

    def _emit(self, events: Iterable[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            # Keys that start with "_" are fsev's own, for the halves on the way.
            if ev.extra:
                for k in [k for k in ev.extra if k.startswith("_")]:
                    del ev.extra[k]
            if not self._wanted(ev):
                continue
            self.numbers.assign(ev)
            for m in self._observers.get(ev.type, ()):
                m.observe(ev)
            out.append(ev)
        return out

    # -- the pipeline --------------------------------------------------------
    def process(self, ev: Event) -> list[Event]:
        """One decoded kernel event -> the events to emit now."""
        return self.process_all([ev])

    def process_all(self, evs: list[Event]) -> list[Event]:
        """Decoded kernel events, in the kernel's order -> the events to emit
        now, in one list: one loop over a batch (TraceSession hands over what
        one read of the ring gave)."""
        out: list[Event] = []
        append = out.append
        enrich = self.enricher.enrich
        order = self._order.process if self._order is not None else None
        fast = self._fast_fs_error
        observers = self._fs_error_observers
        assign = self.numbers.assign
        for ev in evs:
            typ = ev.type
            if typ is _KERNEL_LOG:
                # Straight to the readers (fsev/points/kernel_log.py), past the
                # ordering half: it must not hold a line behind the error that
                # waits for that very line.
                out += self._dispatch([ev])
                continue
            if typ is _UMOUNT:
                self.table.refresh()  # the mount is gone from it: remember it as departed
            enrich(ev)
            if order is None:
                ready = [ev]
            else:
                ready = order(ev)
            if typ is _FS_ERROR and fast and len(ready) == 1 and ready[0] is ev:
                # The flood path (fs_errors by the hundred thousand a second): the
                # kernel filtered class and mount already.
                assign(ev)
                for m in observers:
                    m.observe(ev)
                append(ev)
            elif ready:
                out += self._dispatch(ready)
        return out

    def _dispatch(self, ready: list[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in ready:
            handler = self._handler.get(ev.type)
            out += self._emit(handler.process(ev) if handler is not None else [ev])
        return out

    def poll(self) -> list[Event]:
        """Events due now from user-space sources and waits."""
        out: list[Event] = []
        for m in self.monitors:
            got = m.poll()
            if got:
                out += self._dispatch(got) if m is self._order else self._emit(got)
        return out

    def flush(self) -> list[Event]:
        """At the end: everything still waiting, and the last counts."""
        out: list[Event] = []
        for m in self.monitors:
            got = m.flush()
            if got:
                out += self._dispatch(got) if m is self._order else self._emit(got)
        return out

    def mounts_changed(self) -> None:
        for m in self.monitors:
            m.mounts_changed()

    def wake_fds(self) -> list[int]:
        return [fd for m in self.monitors for fd in m.wake_fds()]

    def notes(self) -> list[str]:
        return [n for m in self.monitors for n in m.notes()]

    def timeout_ms(self, default: int) -> int:
        """How long the session may block: short while an event waits."""
        return min([default] + [m.timeout_ms(default) for m in self.monitors])

    def close(self) -> None:
        for m in self.monitors:
            m.close()
