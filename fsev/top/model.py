"""The state behind `fsev top`: header counters, one row per mount, the event feed.

Fed by two sources: Events from the session (apply) and a periodic snapshot of
mountinfo, statfs and ext4's sysfs error state (update_mounts). Plain data
and plain Python: the view (fsev.top.view) is a pure function of it, and unit
tests drive both without root.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

from fsev.events import Event, EventType
from fsev.linux.mountinfo import Mount
from fsev.points.registry import describe
from fsev.thresholds.levels import Levels, ThresholdState
from fsev.top.feed import Feed, Filter
from fsev.top.fs_snapshot import Ext4ErrorState, FsStats, historical_events

RATE_WINDOW_S = 5
SORT_KEYS = ("severity", "usage", "avail", "errors", "mount")


@dataclass
class ErrorNote:
    """The last fs error of a superblock, from an event or from ext4's record."""

    function: str | None
    line: int | None
    errno_name: str | None
    wall_time: float
    historical: bool = False
    detail: str | None = None  # what the error was, where it names no function (XFS health marks)


@dataclass
class SuperState:
    """What fsev learned about one superblock (keyed by device: bind mounts share it)."""

    dev: str
    errors: int = 0  # fs errors seen in this session
    errors_recorded: int | None = None  # ext4's errors_count (on disk, all time)
    last_error: ErrorNote | None = None
    last_event: float | None = None  # wall time
    levels: dict[str, int] = field(default_factory=dict)  # "L1"/"L2" -> available blocks
    thr_depth: int = 0  # 0 above L1, 1 at/below L1, 2 at/below L2
    tracker: ThresholdState | None = None  # follows statfs between threshold events
    avail_event: int | None = None  # available blocks from the last threshold event
    # Read-only after an error, as a read_only event said (its flag): latched
    # until an event says read-write again. Mountinfo may never show it
    # (6.12-6.14: ext4's emergency_ro; ext4's aborted state; an XFS shutdown),
    # and after it ext4 drops further errors, so neither the mount table nor
    # the error counter can tell it later.
    ro_after_error: str | None = None


@dataclass
class MountRow:
    mount: Mount
    stats: FsStats | None = None
    shadowed: bool = False  # another mount sits on top of the same mount point
    ro_after_error: bool = False  # its superblock's SuperState.ro_after_error

    @property
    def emergency_ro(self) -> bool:
        """Read-only after an error: ext4's emergency_ro in mountinfo (statfs
        still says rw), or latched from a read_only event of cause error (any
        filesystem: also where mountinfo shows nothing)."""
        return self.ro_after_error or "emergency_ro" in self.mount.super_options \
            or "emergency_ro" in self.mount.options

    @property
    def read_only(self) -> bool:
        return self.mount.read_only or self.emergency_ro or bool(self.stats and self.stats.read_only)


def ro_by_error(row: MountRow, st: SuperState | None) -> bool:
    """Read-only because of an error: ext4's emergency_ro, or (any filesystem)
    a read_only event that said so: btrfs's SB_RDONLY after an abort shows in
    mountinfo too; a shutdown (XFS) or ext4's aborted state shows nowhere but
    in the event."""
    return row.emergency_ro or (st is not None and st.ro_after_error is not None)


def severity(row: MountRow, st: SuperState | None) -> int:
    """Higher is worse: what an admin should look at first."""
    if ro_by_error(row, st):
        return 5
    if st is None:
        return 0
    if st.thr_depth >= 2:
        return 4
    if st.errors:
        return 3
    if st.thr_depth == 1:
        return 2
    if st.errors_recorded or (st.last_error and st.last_error.historical):
        return 1
    return 0


class TopModel:
    def __init__(
        self,
        host: str,
        kernel: str,
        rungs: Iterable[tuple[str, str]] = (),
        started: float = 0.0,
        show_all: bool = False,
        sort: str = "severity",
        watched: Iterable[str] = (),
        levels: dict[str, Levels] | None = None,
    ) -> None:
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")
        self.host = host
        self.kernel = kernel
        self.rungs = list(rungs)
        self.started = started
        self.show_all = show_all
        self.sort = sort
        self.watched = frozenset(watched)  # mount points; empty: every mount
        self.levels = dict(levels or {})  # dev -> configured levels (--thr)
        self.total = 0
        self.drops = 0
        self.drops_baseline = 0
        self._buckets: collections.deque[list[int]] = collections.deque(maxlen=RATE_WINDOW_S + 2)
        self.rows: list[MountRow] = []
        self._row_by_mount_point: dict[str, MountRow] = {}
        self.supers: dict[str, SuperState] = {}
        self.feed = Feed()
        self.frozen_feed: Feed | None = None  # the feed as it was when paused
        self.new_while_paused = 0
        self.filter = Filter()
        self.prompt: str | None = None  # the filter being typed
        self.show_help = False
        self.version = 0  # bumped on every change the screen should show

    # -- events ------------------------------------------------------------
    def _super(self, dev: str) -> SuperState:
        st = self.supers.get(dev)
        if st is None:
            st = self.supers[dev] = SuperState(dev)
            lv = self.levels.get(dev)
            if lv is not None:
                st.levels = {"L1": lv.l1} if lv.l2 is None else {"L1": lv.l1, "L2": lv.l2}
        return st

    def _super_for(self, ev: Event) -> SuperState | None:
        if ev.dev:
            return self._super(ev.dev)
        row = self._row_by_mount_point.get(ev.mount_point or "")
        return self._super(row.mount.dev) if row else None

    def apply(self, ev: Event, now: float) -> None:
        """One event from the session; `now` is wall time (for the rate)."""
        self.version += 1
        if ev.type is EventType.LOSS:
            self.drops = max(self.drops, ev.lost_total or 0)
        else:
            self.total += 1
            sec = int(now)
            b = self._buckets
            if b and b[-1][0] == sec:
                b[-1][1] += 1
            else:
                b.append([sec, 1])
            st = self._super_for(ev)
            if st is not None:
                st.last_event = ev.wall_time
                if ev.type is EventType.FS_ERROR:
                    st.errors += 1
                    st.last_error = ErrorNote(ev.function, ev.line, ev.errno_name, ev.wall_time,
                                              detail=None if ev.function else describe(ev) or None)
                elif ev.type is EventType.THRESHOLD:
                    self._apply_threshold(st, ev)
                elif ev.type is EventType.READ_ONLY:
                    self._apply_read_only(st, ev)
        self.feed.add(ev)
        if self.frozen_feed is not None:
            self.new_while_paused += 1

    def _apply_read_only(self, st: SuperState, ev: Event) -> None:
        x = ev.extra
        if x.get("read_only") and x.get("cause") == "error":
            st.ro_after_error = x.get("flag") or "read_only"
        elif x.get("read_only") is False:
            st.ro_after_error = None
        else:
            return
        for row in self.rows:
            if row.mount.dev == st.dev:
                row.ro_after_error = st.ro_after_error is not None

    @staticmethod
    def _apply_threshold(st: SuperState, ev: Event) -> None:
        k = 2 if ev.level == "L2" else 1
        if ev.level_blocks is not None and ev.level:
            st.levels[ev.level] = ev.level_blocks
        st.thr_depth = k if ev.direction == "down" else k - 1
        if st.tracker is not None:
            st.tracker.depth = st.thr_depth
        if ev.avail_blocks is not None:
            st.avail_event = ev.avail_blocks

    def set_drops(self, lost_total: int) -> None:
        if lost_total > self.drops:
            self.drops = lost_total
            self.version += 1

    def rate(self, now: float) -> float:
        """Events per second over the last RATE_WINDOW_S seconds (less at the start)."""
        first = max(int(now) - RATE_WINDOW_S, self.started)
        span = now - first
        if span <= 0:
            return 0.0
        n = sum(c for s, c in self._buckets if s >= int(first))
        return n / max(span, 1.0)

    @property
    def drops_shown(self) -> int:
        return self.drops - self.drops_baseline

    # -- snapshots -----------------------------------------------------------
    def wants(self, m: Mount) -> bool:
        """Is this mount one the table may show (before the / filter)?"""
        if self.watched:
            return m.mount_point in self.watched
        return self.show_all or not m.pseudo

    def update_mounts(
        self,
        mounts: Iterable[Mount],
        stats: dict[int, FsStats | None] | None = None,
        ext4: dict[str, Ext4ErrorState] | None = None,
    ) -> None:
        """A fresh mountinfo (+ statfs by mount id, ext4 error state by dev)."""
        mounts = list(mounts)
        stats = stats or {}
        ext4 = ext4 or {}
        top: dict[str, int] = {}
        for m in mounts:
            top[m.mount_point] = m.mnt_id  # mountinfo lists the topmost mount last
        rows = []
        for m in mounts:
            if not self.wants(m):
                continue
            row = MountRow(m, stats.get(m.mnt_id), shadowed=top[m.mount_point] != m.mnt_id)
            if row.shadowed and not self.show_all:
                continue
            rows.append(row)
        self.rows = rows
        self._row_by_mount_point = {r.mount.mount_point: r for r in rows if not r.shadowed}
        mounted = {m.dev for m in mounts}
        for dev in [d for d in self.supers if d not in mounted]:
            del self.supers[dev]  # unmounted: its events stay in the feed
        for row in rows:
            st = self._super(row.mount.dev)
            row.ro_after_error = st.ro_after_error is not None
            es = ext4.get(row.mount.dev)
            if es is not None:
                st.errors_recorded = es.errors_count
            if st.levels and row.stats is not None and not row.shadowed:
                if st.tracker is None:
                    st.tracker = ThresholdState(self.levels.get(row.mount.dev) or _levels(st), row.stats.avail)
                    st.thr_depth = st.tracker.depth
                else:
                    st.tracker.update(row.stats.avail)
                    st.thr_depth = st.tracker.depth
        self.version += 1

    def load_history(self, mount: Mount, state: Ext4ErrorState) -> None:
        """ext4's recorded errors from before fsev started: table state and first feed entries."""
        st = self._super(mount.dev)
        st.errors_recorded = state.errors_count
        hist = historical_events(mount, state)
        for ev in hist:
            self.feed.add(ev)
        if hist and st.last_error is None:
            last = hist[-1]
            st.last_error = ErrorNote(
                last.function, last.line, last.extra.get("errcode_name"), last.wall_time, historical=True
            )
        self.version += 1

    # -- keys ------------------------------------------------------------------
    def toggle_pause(self) -> None:
        if self.frozen_feed is None:
            self.frozen_feed = self.feed.copy()
            self.new_while_paused = 0
        else:
            self.frozen_feed = None
        self.version += 1

    @property
    def paused(self) -> bool:
        return self.frozen_feed is not None

    def clear_counters(self) -> None:
        self.total = 0
        self._buckets.clear()
        self.drops_baseline = self.drops
        self.new_while_paused = 0
        for st in self.supers.values():
            st.errors = 0
        self.version += 1

    def cycle_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.version += 1

    def set_filter(self, text: str) -> None:
        self.filter = Filter(text.strip())
        self.version += 1

    def key(self, k: str) -> bool:
        """One key press (an escape sequence arrives whole); True: quit."""
        self.version += 1
        if self.prompt is not None:  # typing a filter
            if k in ("\r", "\n"):
                self.set_filter(self.prompt)
                self.prompt = None
            elif k == "\x1b":
                self.prompt = None
            elif k in ("\x7f", "\b"):
                self.prompt = self.prompt[:-1]
            elif len(k) == 1 and k.isprintable() and len(self.prompt) < 64:
                self.prompt += k
            return False
        if k in ("q", "Q"):
            return True
        if self.show_help:  # any other key closes the help
            self.show_help = False
            return False
        if k == "p":
            self.toggle_pause()
        elif k == "c":
            self.clear_counters()
        elif k in ("/", "f"):
            self.prompt = self.filter.text
        elif k == "s":
            self.cycle_sort()
        elif k == "?":
            self.show_help = True
        elif k == "\x1b":
            self.set_filter("")
        return False

    # -- what the view shows -------------------------------------------------------
    def state_of(self, row: MountRow) -> SuperState | None:
        return self.supers.get(row.mount.dev)

    def visible_rows(self) -> list[tuple[MountRow, SuperState | None]]:
        pairs = [(r, self.state_of(r)) for r in self.rows if self.filter.mount_ok(r.mount.mount_point)]
        return sorted(pairs, key=self._sort_key)

    def _sort_key(self, pair: tuple[MountRow, SuperState | None]) -> tuple:
        row, st = pair
        usage = -(row.stats.used_fraction if row.stats else -1.0)
        avail = avail_blocks(row, st)
        by = {
            "severity": (-severity(row, st), usage),
            "usage": (usage,),
            "avail": (avail if avail is not None else float("inf"),),
            "errors": (-(st.errors if st else 0), -((st.errors_recorded or 0) if st else 0)),
            "mount": (),
        }[self.sort]
        return (*by, row.mount.mount_point, row.mount.mnt_id)

    def visible_feed(self, limit: int) -> list[Event]:
        """Newest first, filtered, at most `limit`."""
        src = self.frozen_feed if self.frozen_feed is not None else self.feed
        return src.newest(limit, self.filter)


def avail_blocks(row: MountRow, st: SuperState | None) -> int | None:
    if row.stats is not None:
        return row.stats.avail
    return st.avail_event if st else None


def _levels(st: SuperState) -> Levels:
    l1 = st.levels.get("L1", st.levels.get("L2", 0))
    l2 = st.levels.get("L2")
    return Levels(max(l1, l2 or 0), l2)
