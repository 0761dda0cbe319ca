"""`fsev top --from FILE`: a journal in place of the kernel, for reviewing an incident.

JournalSession stands where TopApp expects a TraceSession: the same events(),
table, lost_total, stop() and close(), with events read from the journal
instead of the ring buffer. ReviewApp is TopApp on the journal's clock (the
wall time of the last event shown), so ages, rates and the uptime read as
they did then, with mount rows from the events themselves: statfs of this
machine's mounts would describe today, not the incident.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

from fsev.events import Event, EventType
from fsev.events.device import Device
from fsev.journal.replay import record_event
from fsev.journal.store import Journal, Recording
from fsev.linux.mountinfo import Mount
from fsev.top.app import TopApp

# Records handed to the screen per tick when not paced: enough to read a
# million-event journal in seconds, few enough that keys stay responsive.
CHUNK = 20000


class ReviewTable:
    """The mounts a journal's events name, in the shape TopApp reads a MountTable."""

    def __init__(self) -> None:
        self._by_point: dict[str, Mount] = {}
        self.generation = 0

    def __iter__(self) -> Iterator[Mount]:
        return iter(list(self._by_point.values()))

    def see(self, ev: Event) -> None:
        if ev.type is EventType.UMOUNT:
            if self._by_point.pop(ev.mount_point or ev.path or "", None) is not None:
                self.generation += 1
            return
        mp = ev.mount_point
        if ev.type is EventType.READ_ONLY and mp in self._by_point:
            # the RO column: a recorded transition is all a review knows of it
            ro = bool(ev.extra.get("read_only"))
            error = ev.extra.get("cause") == "error"
            self._by_point[mp] = dataclasses.replace(
                self._by_point[mp], options=("ro",) if ro else ("rw",),
                super_options=("emergency_ro",) if ro and error else ())
            self.generation += 1
            return
        if not mp or not ev.dev or mp in self._by_point:
            return
        try:
            d = Device.parse(ev.dev)
            m = Mount(ev.mnt_id or 0, 0, d.major, d.minor, "/", mp, (), ev.fs_type or "?", ev.source or "", ())
        except ValueError:
            return
        self._by_point[mp] = m
        self.generation += 1


class JournalSession:
    """A journal's events, at once (speed None) or paced at `speed` times the recorded pace."""

    def __init__(self, path: str, speed: float | None = None) -> None:
        self.path = path
        self.speed = speed
        self.journal = Journal.open(path)
        self.recordings: list[Recording] = self.journal.recordings()
        self.table = ReviewTable()
        self.lost_total = 0
        self.stopping = False
        self.done = False  # every record shown
        first = self.recordings[0] if self.recordings else None
        self.clock = first.started_at if first is not None else time.time()
        self._records = self.journal.records()
        self._pending: Event | None = None
        self._pace: tuple[float, float] | None = None  # (monotonic, wall) of the first paced event

    @property
    def rungs(self) -> list[tuple[str, str]]:
        plan = self.recordings[-1].plan if self.recordings else []
        return [(str(p.get("point")), str(p.get("kind"))) for p in plan]

    @property
    def host(self) -> str:
        return self.recordings[-1].host if self.recordings else "?"

    @property
    def kernel(self) -> str:
        return self.recordings[-1].kernel if self.recordings else "?"

    def now(self) -> float:
        return self.clock

    def start(self) -> None:
        pass

    def _next(self) -> Event | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        for rec in self._records:
            ev = record_event(rec)
            if ev is not None:  # a type this fsev does not know cannot be drawn
                return ev
        if not self.done:
            self.done = True
            last = self.recordings[-1] if self.recordings else None
            end = last and (last.stopped_at or last.last_commit_at)
            self.clock = max(self.clock, end or self.clock)
        return None

    def events(self, poll_ms: int, until: float) -> Iterator[Event]:
        """Events due before the monotonic time `until`."""
        n = 0
        while not self.stopping and n < CHUNK:
            ev = self._next()
            if ev is None:
                left = until - time.monotonic()
                if left > 0:
                    time.sleep(left)
                return
            if self.speed is not None:
                if self._pace is None:
                    self._pace = (time.monotonic(), ev.wall_time)
                due = self._pace[0] + (ev.wall_time - self._pace[1]) / self.speed
                if due > until:
                    self._pending = ev
                    time.sleep(max(0.0, until - time.monotonic()))
                    self.clock = self._pace[1] + (until - self._pace[0]) * self.speed
                    return
                time.sleep(max(0.0, due - time.monotonic()))
            self.clock = ev.wall_time
            if ev.type is EventType.LOSS:
                self.lost_total = max(self.lost_total, ev.lost_total or 0)
            self.table.see(ev)
            n += 1
            yield ev

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        self.journal.close()


class ReviewApp(TopApp):
    """TopApp driven by a JournalSession: no ext4 history, no statfs snapshots."""

    session: JournalSession

    def _now(self) -> float:
        return self.session.now()

    def _start(self) -> None:
        self.session.start()
        self.model.started = self.session.now()

    def _refresh_mounts(self, thr_seen: bool) -> None:
        if self.session.table.generation != self._generation:
            self._generation = self.session.table.generation
            self.model.update_mounts(list(self.session.table))

    def _collect(self, window: float) -> None:
        """--once: the whole journal, then the snapshot."""
        while not self.session.done and not self._quit:
            self._pump(time.monotonic() + window, None)
