"""The service's Prometheus metrics: state fed by events, exposed without blocking.

FsMetrics keeps, per watched mount, what the events said (error counts,
read-only latches, threshold state, ENOSPC, writeback errors, unmounts) and
what a sampler read (statfs, ext4's errors_count). Three kinds of thread
write it, each with one short dict update under one lock:
- the session's thread: observe(ev) for every event, set_watch(watch) when
  the watched set changes (Service.watch_for);
- one statfs thread per mount (fsev.thresholds.monitor.PolledStatfs, every
  SAMPLE_S), so a mount whose statfs hangs (a dead NFS server, a hung FUSE
  daemon) stalls only its own thread, and stat_stuck says so after STUCK_S;
- a housekeeping thread, awake only when something is due: ext4's
  errors_count when a mount is first watched and RECORDED_DELAY_S after its
  fs_error events (ext4 counts an error from a work item a moment later),
  and the expiry of gone mounts. Idle, it sleeps for good (the service's idle
  CPU goal is 0.5 % of a core).
A scrape (collect()) copies the state under the lock and builds the metric
families from the copy: it never calls statfs, never reads /sys, never waits
for anything but that lock.

Pseudo filesystems (fsev.linux.mountinfo.PSEUDO_FS_TYPES: proc, sysfs,
cgroup, autofs, ...) have no series, as node_exporter's default excludes them.

Cardinality is bounded:
- at most MAX_MOUNTS mounts have series. A new one past that evicts the gone
  mount gone longest; with none gone it is refused, said in one log line
  (again only once the count has fallen below the cap and reached it anew);
- at most MAX_FUNCTIONS `function` values per mount: later functions count
  under `function="other"` (ext4 raises errors from a few dozen functions;
  a corruption storm usually from one or two);
- a mount that is gone (unmounted, or no longer configured) keeps its series
  for GONE_GRACE_S, then they are dropped; one that comes back within it
  continues its counters;
- `device` of block I/O errors: one per block device the kernel reported,
  bounded by MAX_MOUNTS as well.
Label values are the mount's own strings (quotes, backslashes and newlines
are escaped by the exposition format); bytes that are not UTF-8 are written
as \\xNN escapes, since exposition text must be UTF-8.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fsev import __version__
from fsev.events import Event, EventType
from fsev.linux.mountinfo import Mount
from fsev.points.read_only import EMERGENCY_RO, SHUTDOWN, mount_read_only
from fsev.points.registry import dormant
from fsev.probes.ladder import Plan
from fsev.session.trace import Watch
from fsev.thresholds.arming import StatfsResult
from fsev.thresholds.monitor import PolledStatfs

# Long enough that Prometheus scrapes a gone mount's last increments several
# times over (scrape intervals are 15-60 s) and that increase()/rate() windows
# of a few minutes in alert rules still see them; short enough that mounts
# that churn (containers, automounts) do not pile up series.
GONE_GRACE_S = 300.0
MAX_MOUNTS = 2000
MAX_FUNCTIONS = 20
OTHER_FUNCTION = "other"
SAMPLE_S = 5.0  # statfs of each mount
STUCK_S = 2.0  # a statfs unanswered this long: stat_stuck 1
RECORDED_DELAY_S = 0.5  # errors_count read this long after an fs_error
EXT4_TYPES = frozenset({"ext4", "ext3", "ext2"})
EXT4_SYSFS = "/sys/fs/ext4"
SYS_DEV_BLOCK = "/sys/dev/block"
LEVELS = ("L1", "L2")
DIRECTIONS = ("down", "up")

Statfs = Callable[[str], StatfsResult]


def label(text: str) -> str:
    """A label value: valid UTF-8 whatever the kernel's bytes were."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def _log(msg: str) -> None:
    print(f"fsev serve: metrics: {msg}", file=sys.stderr, flush=True)


@dataclass
class _Fs:
    """One mount's series (by mount point, the `mountpoint` label)."""

    mount_point: str
    device: str
    fstype: str
    dev: str  # major:minor, for errors_count and superblock-wide read-only
    gone_at: float | None = None  # monotonic; None while watched
    errors: dict[str, int] = field(default_factory=dict)  # function -> count
    last_error: float | None = None  # wall time
    recorded: int | None = None  # ext4 errors_count
    recorded_due: float | None = None  # monotonic: read errors_count then
    readonly: dict[str, int] = field(default_factory=lambda: {"error": 0, "admin": 0})
    avail: int | None = None  # bytes
    size: int | None = None
    block_size: int | None = None
    levels: tuple[str, ...] = ()  # armed levels
    thr_active: dict[str, int] = field(default_factory=dict)
    crossings: dict[tuple[str, str], int] = field(default_factory=dict)
    enospc: int = 0
    wb_errors: int = 0
    unmounts: int = 0
    shutdowns: int = 0
    sampler: PolledStatfs | None = None

    def labels(self) -> list[str]:
        return [label(self.device), label(self.mount_point), label(self.fstype)]


class FsMetrics:
    """See the module docstring. `lost` gives the listener and journal losses
    (the hub's and the journal writer's counters) at scrape time: plain reads."""

    def __init__(self, plan: Plan | None = None, lost: Callable[[], dict[str, int]] | None = None,
                 statfs: Statfs = os.statvfs, sample_s: float = SAMPLE_S, start: bool = True,
                 log: Callable[[str], None] = _log, max_mounts: int = MAX_MOUNTS,
                 grace_s: float = GONE_GRACE_S, sysfs: str = EXT4_SYSFS, sys_dev_block: str = SYS_DEV_BLOCK) -> None:
        self.plan = plan
        self._lost = lost or (lambda: {})
        self._statfs = statfs
        self._sample_s = sample_s
        self._start_samplers = start
        self._logf = log
        self.max_mounts = max_mounts
        self.grace_s = grace_s
        self._sysfs = sysfs
        self._sys_dev_block = sys_dev_block
        self._lock = threading.Lock()
        self._fs: dict[str, _Fs] = {}
        self._block_io: dict[str, int] = {}  # device -> count
        self._device_errors: dict[tuple[str, str], int] = {}  # (member device, counter) -> increase seen
        self._dev_names: dict[str, str] = {}  # major:minor -> /dev/NAME
        self._kernel_lost = 0
        self._refusing = False
        self.up = True  # False once the service stops: the textfile's last write says so
        self._stop = threading.Event()
        self._due = threading.Event()  # something new is due: the housekeeping thread looks again
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._housekeeping, name="fsev-metrics", daemon=True)
            self._thread.start()

    # -- the session's thread ---------------------------------------------------
    def set_watch(self, watch: Watch) -> None:
        now = time.monotonic()
        armed = {a.mount.mount_point: a for a in watch.thresholds}
        with self._lock:
            seen: set[str] = set()
            for m, _classes in watch.mounts:
                if m.pseudo:
                    # proc, sysfs, cgroup, autofs, ...: nothing to say, and a statfs of an autofs
                    # mount point would mount what it stands for every SAMPLE_S.
                    continue
                seen.add(m.mount_point)
                st = self._fs.get(m.mount_point)
                if st is None or (st.gone_at is not None and st.dev != m.dev):
                    st = self._add(m, now)
                    if st is None:
                        continue
                st.gone_at = None
                a = armed.get(m.mount_point)
                if a is not None:
                    st.block_size = a.block_size
                    if st.size is None:
                        st.size = a.total_blocks * a.block_size
                    st.levels = ("L1",) if a.levels.l2 is None else LEVELS
                else:
                    st.levels = ()
                for lvl in list(st.thr_active):
                    if lvl not in st.levels:
                        del st.thr_active[lvl]
                if st.sampler is None and self._start_samplers:
                    st.sampler = PolledStatfs(m.mount_point, self._sample_s, self._sampling(st), keep=False)
            for st in self._fs.values():
                if st.mount_point not in seen and st.gone_at is None:
                    self._gone(st, now)

    def _add(self, m: Mount, now: float) -> _Fs | None:
        """A new mount's state (the lock is held); None when the cap refuses it."""
        old = self._fs.pop(m.mount_point, None)
        if old is not None and old.sampler is not None:
            old.sampler.close()
        if len(self._fs) >= self.max_mounts:
            gone = [s for s in self._fs.values() if s.gone_at is not None]
            if not gone:
                if not self._refusing:
                    self._refusing = True
                    self._logf(f"{self.max_mounts} mounts have series already: {m.mount_point} and later "
                               "mounts get none until some go")
                return None
            self._drop(min(gone, key=lambda s: s.gone_at or 0.0))
        self._refusing = False
        st = _Fs(m.mount_point, m.source, m.fs_type, m.dev)
        flag = mount_read_only(m)
        if flag is not None:
            st.readonly["error" if flag in (EMERGENCY_RO, SHUTDOWN) else "admin"] = 1
        if m.fs_type in EXT4_TYPES:
            st.recorded_due = now  # the housekeeping thread reads it
            self._due.set()
        self._fs[m.mount_point] = st
        return st

    def _gone(self, st: _Fs, now: float) -> None:
        st.gone_at = now
        self._due.set()
        if st.sampler is not None:
            st.sampler.close()
            st.sampler = None

    def _drop(self, st: _Fs) -> None:
        self._fs.pop(st.mount_point, None)
        if st.sampler is not None:
            st.sampler.close()

    def observe(self, ev: Event) -> None:
        """One event (the session's thread): a few dict updates under the lock."""
        t = ev.type
        if t is EventType.LOSS:
            if ev.rung == "ringbuf" and ev.lost:
                with self._lock:
                    self._kernel_lost += ev.lost
            return
        if t is EventType.BLOCK_IO_ERROR:
            dev = ev.extra.get("disk") or ev.dev
            if dev is not None:
                name = self._dev_name(dev)
                with self._lock:
                    if name in self._block_io or len(self._block_io) < self.max_mounts:
                        self._block_io[name] = self._block_io.get(name, 0) + 1
            return
        if t is EventType.DEVICE_ERRORS:  # a member device's own counters (btrfs), by device
            self._count_device_errors(ev)
            return
        if ev.mount_point is None:
            return
        with self._lock:
            st = self._fs.get(ev.mount_point)
            if st is None:
                return  # not watched (or refused by the cap)
            if t is EventType.FS_ERROR:
                fn = ev.function or "unknown"
                if fn not in st.errors and len(st.errors) >= MAX_FUNCTIONS - (OTHER_FUNCTION not in st.errors):
                    fn = OTHER_FUNCTION
                st.errors[fn] = st.errors.get(fn, 0) + 1
                st.last_error = ev.wall_time
                if st.fstype in EXT4_TYPES and st.recorded_due is None:  # a storm wakes it once
                    st.recorded_due = time.monotonic() + RECORDED_DELAY_S
                    self._due.set()
            elif t is EventType.READ_ONLY:
                self._read_only(st, ev)
            elif t is EventType.THRESHOLD:
                if ev.level in LEVELS and ev.direction in DIRECTIONS:
                    key = (ev.level, ev.direction)
                    st.crossings[key] = st.crossings.get(key, 0) + 1
                    st.thr_active[ev.level] = 1 if ev.direction == "down" else 0
                if ev.avail_blocks is not None and st.block_size:
                    st.avail = ev.avail_blocks * st.block_size
            elif t is EventType.ENOSPC:
                st.enospc += int(ev.extra.get("count", 1))
            elif t is EventType.WB_ERROR:
                st.wb_errors += 1
            elif t is EventType.UMOUNT:
                st.unmounts += 1
            elif t is EventType.SHUTDOWN:
                st.shutdowns += 1

    def _count_device_errors(self, ev: Event) -> None:
        device = str(ev.extra.get("device") or ev.dev)
        grew = ev.extra.get("counters") or {}
        with self._lock:
            for counter, n in grew.items():
                key = (device, str(counter))
                if key in self._device_errors or len(self._device_errors) < self.max_mounts * 5:
                    self._device_errors[key] = self._device_errors.get(key, 0) + int(n)

    def _read_only(self, st: _Fs, ev: Event) -> None:
        # A superblock-wide state (every flag but a bind mount's own MNT_READONLY) is every
        # mount of that device's; the read-write transition clears both causes.
        targets = [st] if ev.extra.get("flag") == "mnt_readonly" else \
            [s for s in self._fs.values() if s.dev == st.dev and s.gone_at is None] or [st]
        ro = ev.extra.get("read_only")
        cause = "error" if ev.extra.get("cause") == "error" else "admin"
        for s in targets:
            if ro:
                s.readonly[cause] = 1
            elif ro is not None:
                s.readonly = {"error": 0, "admin": 0}

    def _dev_name(self, dev: str) -> str:
        name = self._dev_names.get(dev)
        if name is None:
            try:
                name = "/dev/" + os.path.basename(os.readlink(os.path.join(self._sys_dev_block, dev)))
            except OSError:
                name = dev
            if len(self._dev_names) < self.max_mounts:
                self._dev_names[dev] = name
        return name

    # -- the samplers' and housekeeping threads -------------------------------------
    def _sampling(self, st: _Fs) -> Statfs:
        def statfs(path: str) -> StatfsResult:
            r = self._statfs(path)
            bs = r.f_frsize or 4096
            with self._lock:
                st.block_size = st.block_size or bs
                st.avail, st.size = r.f_bavail * bs, r.f_blocks * bs
            return r
        return statfs

    def _housekeeping(self) -> None:
        while not self._stop.is_set():
            self._due.clear()
            nxt = self.housekeeping()
            # Woken early only by what sets _due: a mount's first error since its last read, a
            # new ext4 mount, a mount gone; so at most a few passes a second, and none idle.
            self._due.wait(None if nxt is None else max(0.05, nxt - time.monotonic()))

    def housekeeping(self, now: float | None = None) -> float | None:
        """errors_count where due, and gone mounts past their grace dropped; returns when
        something is due next (monotonic), None if nothing is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(s, s.dev) for s in self._fs.values() if s.recorded_due is not None and s.recorded_due <= now]
            for s, _ in due:
                s.recorded_due = None
            for s in [s for s in self._fs.values() if s.gone_at is not None and now - s.gone_at >= self.grace_s]:
                self._drop(s)
            times = [s.recorded_due for s in self._fs.values() if s.recorded_due is not None]
            times += [s.gone_at + self.grace_s for s in self._fs.values() if s.gone_at is not None]
        for s, dev in due:  # sysfs reads outside the lock
            count = self._errors_count(dev)
            if count is not None:
                with self._lock:
                    s.recorded = count
        return min(times, default=None)

    def _errors_count(self, dev: str) -> int | None:
        try:
            name = os.path.basename(os.readlink(os.path.join(self._sys_dev_block, dev)))
            with open(os.path.join(self._sysfs, name, "errors_count")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        with self._lock:
            for s in self._fs.values():
                if s.sampler is not None:
                    s.sampler.close()
                    s.sampler = None

    # -- a scrape ---------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        with self._lock:
            rows = [(s.labels(), dict(s.errors), s.last_error, s.recorded, dict(s.readonly), s.avail, s.size,
                     s.sampler.stalled(now, STUCK_S) if s.sampler is not None else False, s.levels,
                     dict(s.thr_active), dict(s.crossings), s.enospc, s.wb_errors, s.unmounts, s.shutdowns)
                    for s in self._fs.values()]
            block_io = dict(self._block_io)
            device_errors = dict(self._device_errors)
            kernel_lost = self._kernel_lost
            mounted = {s.fstype for s in self._fs.values() if s.gone_at is None}
        lost = {"kernel": kernel_lost, "listener": 0, "journal": 0}
        lost.update(self._lost())
        fs = ["device", "mountpoint", "fstype"]
        errors = CounterMetricFamily("fsev_filesystem_errors", "Filesystem errors fsev saw (fs_error events: ext4 "
                                     "and btrfs errors, XFS corruption reports and health marks), by the kernel "
                                     "function that raised them (unknown: none named)", labels=fs + ["function"])
        last = GaugeMetricFamily("fsev_filesystem_last_error_timestamp_seconds",
                                 "When fsev last saw a filesystem error, seconds since the epoch", labels=fs)
        recorded = GaugeMetricFamily("fsev_filesystem_recorded_errors",
                                     "Errors the superblock has recorded, all time (ext4 errors_count)", labels=fs)
        readonly = GaugeMetricFamily("fsev_filesystem_readonly", "1 while read-only, by cause (error: the "
                                     "filesystem turned read-only after an error; admin: a remount)",
                                     labels=fs + ["cause"])
        avail = GaugeMetricFamily("fsev_filesystem_avail_bytes", "Space available to unprivileged users "
                                  "(statfs f_bavail), sampled off the scrape path", labels=fs)
        size = GaugeMetricFamily("fsev_filesystem_size_bytes", "Filesystem size (statfs f_blocks)", labels=fs)
        stuck = GaugeMetricFamily("fsev_filesystem_stat_stuck", f"1 while statfs of the mount has not answered "
                                  f"for {STUCK_S:g} s", labels=fs)
        active = GaugeMetricFamily("fsev_threshold_active", "1 while available space is at or below the level",
                                   labels=fs + ["level"])
        crossings = CounterMetricFamily("fsev_threshold_crossings", "Free-space level crossings (down: space fell "
                                        "to the level; up: rose back above it)", labels=fs + ["level", "direction"])
        enospc = CounterMetricFamily("fsev_enospc", "Writes, creates and mkdirs that failed with ENOSPC", labels=fs)
        wb = CounterMetricFamily("fsev_writeback_errors", "Writeback errors recorded on files", labels=fs)
        unmounts = CounterMetricFamily("fsev_unmounts", "Unmounts of the mount", labels=fs)
        shutdowns = CounterMetricFamily("fsev_filesystem_shutdowns", "Forced shutdowns of the filesystem "
                                        "(shutdown events: every read and write fails after one)", labels=fs)
        for (lbl, errs, last_error, rec, ro, av, sz, is_stuck, levels, act, cross, nospc, wbe, um, sd) in rows:
            for fn, n in errs.items():
                errors.add_metric(lbl + [label(fn)], n)
            if last_error is not None:
                last.add_metric(lbl, last_error)
            if rec is not None:
                recorded.add_metric(lbl, rec)
            for cause, v in ro.items():
                readonly.add_metric(lbl + [cause], v)
            if av is not None:
                avail.add_metric(lbl, av)
            if sz is not None:
                size.add_metric(lbl, sz)
            stuck.add_metric(lbl, 1 if is_stuck else 0)
            for lvl in levels:
                active.add_metric(lbl + [lvl], act.get(lvl, 0))
            for key in sorted(set(cross) | {(lvl, d) for lvl in levels for d in DIRECTIONS}):
                crossings.add_metric(lbl + list(key), cross.get(key, 0))
            enospc.add_metric(lbl, nospc)
            wb.add_metric(lbl, wbe)
            unmounts.add_metric(lbl, um)
            shutdowns.add_metric(lbl, sd)
        yield from (errors, last, recorded, readonly, avail, size, stuck, active, crossings, enospc, wb, unmounts,
                    shutdowns)
        bio = CounterMetricFamily("fsev_block_io_errors", "Block requests that completed with an error, by disk",
                                  labels=["device"])
        for dev, n in block_io.items():
            bio.add_metric([label(dev)], n)
        yield bio
        deverr = CounterMetricFamily("fsev_device_errors", "Increases of a storage device's own error counters "
                                     "fsev saw (device_errors events: btrfs member devices), by device and counter",
                                     labels=["device", "counter"])
        for (dev, counter), n in sorted(device_errors.items()):
            deverr.add_metric([label(dev), label(counter)], n)
        yield deverr
        lost_f = CounterMetricFamily("fsev_events_lost", "Events lost: kernel (ring buffer full), listener (a "
                                     "listener's queue full), journal (deleted by the hard cap before a consumer "
                                     "read them)", labels=["stage"])
        for stage in ("kernel", "listener", "journal"):
            lost_f.add_metric([stage], lost.get(stage, 0))
        yield lost_f
        rungs = GaugeMetricFamily("fsev_probe_rung_info", "The mechanism each probe point uses (1); dormant: "
                                  "rung none because the kernel lacks what the point hooks (a newer kernel's "
                                  "function; a filesystem module not loaded while none of its kind is watched)",
                                  labels=["point", "rung", "dormant"])
        for r in self.plan.rungs if self.plan is not None else ():
            rungs.add_metric([r.name, r.kind.value, "true" if dormant(r, mounted) else "false"], 1)
        yield rungs
        yield GaugeMetricFamily("fsev_up", "1 while fsev serve runs (0: the last textfile of a stopped service)",
                                value=1 if self.up else 0)
        info = GaugeMetricFamily("fsev_build_info", "fsev's version (1)", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
