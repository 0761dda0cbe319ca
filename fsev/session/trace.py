"""A tracing session: plan, load, consume, decode, enrich; yields Events.

The CLI (trace, top, record) drives a TraceSession; it never touches bcc.

close() may come from another thread while a consumer is inside events(): it
stops the loop, waits for the step in progress (one poll and the decoding of
its batch; never for the consumer's handling of what was yielded), then tears
down; the consumer's events() then ends without an error.
"""

from __future__ import annotations

import gc
import math
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from fsev.errors import FsevError
from fsev.events import ALL_CLASSES, Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.events.numbering import EventNumbers
from fsev.kernel.closing import CloseGuard
from fsev.kernel.facts import KernelFacts, gather
from fsev.kernel.records import RECORD_SIZE, RUN_STRIDE, RecordClass, class_mask
from fsev.kernel.ringbuf import PAGE
from fsev.linux.mountinfo import Mount, MountTable
from fsev.points.registry import (
    ALL_KPROBE_FUNCTIONS,
    ALL_TRACEPOINTS,
    BTF_MODULES,
    GATED_PROGRAMS,
    KERNEL_THR_POINTS,
    decode_runs,
    kprobe_attachments,
    plan_probes,
    raw_tracepoint_attachments,
    required_offsets,
    source,
)
from fsev.probes.ladder import Plan
from fsev.probes.program import ProgramConfig, bpf_dir
from fsev.session.pipeline import Enricher, EventPipeline
from fsev.thresholds.arming import ArmedMount, kernel_points, single_points
from fsev.thresholds.monitor import ThresholdMonitor

if TYPE_CHECKING:
    from fsev.kernel.loader import KernelProbes  # imported for real in start(): the only bcc user

_TO_RECORD_CLASS = {
    EventClass.INFO: RecordClass.INFO,
    EventClass.WARN: RecordClass.WARN,
    EventClass.ERR: RecordClass.ERR,
    EventClass.THR: RecordClass.THR,
}
LOSS_CHECK_S = 0.1
# watched_devs' key for the classes watched on every mount (FSEV_EVERY_MOUNT in bpf/common.h).
EVERY_MOUNT = 0
# Records taken from the ring buffer per poll before they are decoded and
# emitted: bounds memory and keeps stop/deadline checks responsive in a flood.
RECORD_BATCH = 4096
_THRESHOLD = EventType.THRESHOLD  # an enum member lookup costs on the flood path

T = TypeVar("T")


@dataclass(frozen=True)
class Watch:
    """What a dynamic session (fsev serve) watches now: each mount with its
    classes, and the free-space levels armed on them."""

    mounts: tuple[tuple[Mount, frozenset[EventClass]], ...] = ()
    thresholds: tuple[ArmedMount, ...] = ()
    # Classes watched on every mount (`*`), also one mounted and gone before
    # the mount table was read again: the kernel filter has them under key 0.
    every: frozenset[EventClass] = frozenset()


# The service's answer to "what is watched, given this mount table": asked at
# start, after each mount-table change and at each rewatch(), on the session's
# own thread.
WatchSource = Callable[[MountTable], Watch]


@dataclass
class TraceOptions:
    mounts: list[Mount] = field(default_factory=list)  # empty: every mount
    classes: frozenset[EventClass] = ALL_CLASSES
    ringbuf_pages: int = 256
    thresholds: list[ArmedMount] = field(default_factory=list)  # --thr, armed per mount
    # fsev serve: the watched set comes from here and changes while the
    # probes stay attached (mounts and classes above are then unused).
    watch_source: WatchSource | None = None

    @property
    def dynamic(self) -> bool:
        return self.watch_source is not None

    @property
    def watch_all(self) -> bool:
        return not self.mounts and not self.dynamic


def poll_timeout_ms(poll_ms: int, due_s: float | None) -> int:
    """How long one wait may block (epoll counts whole ms) when the threshold
    monitor is next due in due_s seconds. Rounded up: rounded down, the last
    fraction of a millisecond before a sample was a string of zero-timeout
    polls, fsev spinning a CPU near a level (0.15 s of CPU per 1 GiB write);
    up to 1 ms late is nothing beside the 2 ms between samples there."""
    return poll_ms if due_s is None else max(0, min(poll_ms, math.ceil(due_s * 1000)))


def kernel_facts() -> KernelFacts:
    return gather(set(ALL_TRACEPOINTS), set(ALL_KPROBE_FUNCTIONS), BTF_MODULES)


def resolve_offsets(plan: Plan, config: ProgramConfig | None = None) -> dict[str, int]:
    specs = required_offsets(plan, config)
    if not specs:
        return {}
    from fsev.kernel.btf import resolve  # imported only when a rung reads kernel structs

    got = resolve(specs, modules=BTF_MODULES)
    missing = [s for s in specs if got.get(s) is None]
    if missing:
        raise FsevError(f"kernel BTF lacks {', '.join(missing)}: cannot read those structs safely")
    return {s: int(got[s]) for s in specs}  # type: ignore[arg-type]  # none is None: missing is empty


def raw_tracepoints(plan: Plan, config: ProgramConfig) -> list[tuple[str, str, str, int | None]]:
    """raw_tracepoint_attachments with the vmlinux BTF id each typed form needs (None: absent)."""
    attach = raw_tracepoint_attachments(plan, config)
    if not attach:
        return []
    from fsev.kernel.btf import BtfError, resolve

    try:
        ids = resolve([f"tp_btf:{tp}" for tp, typed, _ in attach if typed])
    except BtfError:
        ids = {}
    return [(tp, typed, plain, ids.get(f"tp_btf:{tp}")) for tp, typed, plain in attach]


def build_source(plan: Plan, opts: TraceOptions) -> str:
    config = program_config(opts)
    return source(plan, config, resolve_offsets(plan, config))


def program_config(opts: TraceOptions) -> ProgramConfig:
    if opts.dynamic:
        # Every class and both kernel threshold points are compiled in: a
        # configuration change then rewrites maps, never the programs. The
        # per-page threshold hooks stay detached until a mount is near a level.
        return ProgramConfig(classes=frozenset(_TO_RECORD_CLASS.values()), watch_all=False,
                             ringbuf_pages=opts.ringbuf_pages, thr_points=KERNEL_THR_POINTS)
    return ProgramConfig(
        classes=frozenset(_TO_RECORD_CLASS[c] for c in opts.classes),
        watch_all=opts.watch_all,
        ringbuf_pages=opts.ringbuf_pages,
        thr_points=kernel_points(opts.thresholds),
        thr_single=single_points(opts.thresholds),
    )


def kernel_dev_classes(mounts: Iterable[tuple[Mount, frozenset[EventClass]]]) -> dict[int, int]:
    """watched_devs' contents: each superblock's dev_t -> the FSEV_CLASS_BIT
    mask of the classes watched on any of its mounts."""
    devs: dict[int, int] = {}
    for m, classes in mounts:
        key = kernel_dev(m.major, m.minor)
        devs[key] = devs.get(key, 0) | class_mask({_TO_RECORD_CLASS[c] for c in classes})
    return devs


class TraceSession:
    def __init__(self, opts: TraceOptions, facts: KernelFacts | None = None) -> None:
        self.opts = opts
        self.facts = facts or kernel_facts()
        self.plan = plan_probes(self.facts)
        self.clock = Clock()
        self.table = MountTable.read()
        self.enricher = Enricher(self.table, frozenset(m.mount_point for m in opts.mounts))
        # Raw records and runs of them, as the ring reader gives them (decode_runs).
        self._records: list[bytes] = []
        self._decoded: list[Event] = []  # decoded early by _catch_up_hints, still to process
        self.numbers = EventNumbers()
        self._stop = False
        self._probes: KernelProbes | None = None
        self._pipeline: EventPipeline | None = None
        self._lost_total = 0
        self._loss_window_start = time.time()
        self._last_loss_check = 0.0
        self._mounts_fd: int | None = None
        self._mounts_wake_fd: int | None = None
        self._thr: ThresholdMonitor | None = None
        # Held by start() and by each step of events(): close() from another
        # thread frees nothing a step is using (fsev/kernel/closing.py).
        self._guard = CloseGuard()
        self.started_at = time.time()
        self.watch = Watch()  # a dynamic session's watched set now
        self._rewatch_lock = threading.Lock()
        self._rewatch_waiters: list[threading.Event] = []
        # What the halves found since start (attach_notes has those of the
        # start): the consumer shows them and empties the list.
        self.notes: list[str] = []

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        with self._guard.call() as live:
            if not live:
                raise FsevError("this tracing session is closed: start a new one")
            self._start()

    def _start(self) -> None:
        from fsev.kernel.loader import KernelProbes  # the only bcc user

        text = build_source(self.plan, self.opts)
        config = program_config(self.opts)
        self._probes = KernelProbes(text, bpf_dir(), kprobe_attachments(self.plan, config), self._on_record,
                                    ringbuf_bytes=self.opts.ringbuf_pages * PAGE, batch=RECORD_BATCH,
                                    raw_tps=raw_tracepoints(self.plan, config), gated=GATED_PROGRAMS,
                                    runs=True)
        if self.opts.thresholds or self.opts.dynamic:
            self._thr = ThresholdMonitor(self.opts.thresholds, self.clock, self._probes.write_thr_state,
                                         catch_up=self._catch_up_hints, hooks=self._probes,
                                         release_state=self._probes.release_thr_state)
        if not self.opts.watch_all and not self.opts.dynamic:
            self._probes.watch_devs(kernel_dev_classes((m, self.opts.classes) for m in self.opts.mounts))
            self._probes.watch_paths([m.mount_point for m in self.opts.mounts])
        self._pipeline = EventPipeline(self.plan, self.opts.classes, self.table, self.clock, self.opts.mounts,
                                       self._probes, self.numbers, enricher=self.enricher, dynamic=self.opts.dynamic)
        if self.opts.dynamic:
            self._rewatch_now()
        # /proc/self/mounts polls POLLPRI when the mount table changes.
        self._mounts_fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
        self._mounts_poll = select.poll()
        self._mounts_poll.register(self._mounts_fd, select.POLLPRI | select.POLLERR)
        if self.opts.dynamic:
            # A configured mount is watched the moment it is mounted: the
            # mount table's change ends the wait, not the poll's timeout. Its
            # own open file: a poll of /proc/self/mounts takes the change it
            # reports (the kernel keeps the last event seen per open file), so
            # the wait and _refresh_mounts_if_changed must not share one.
            self._mounts_wake_fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
            self._probes.wake_on(self._mounts_wake_fd, select.EPOLLPRI | select.EPOLLERR)
            for fd in self._pipeline.wake_fds():  # inotify, fanotify: their news end the wait too
                self._probes.wake_on(fd, select.EPOLLIN)
        else:
            # An error held for its fanotify detail goes out when that comes,
            # not at the next 2 ms turn (the latency tail was that turn).
            # Edge-triggered: a half that leaves its fd unread until it needs
            # it (ext4_error_detail) must not make every wait return at once.
            for fd in self._pipeline.wake_fds():
                self._probes.wake_on(fd, select.EPOLLIN | select.EPOLLET)
        self.started_at = time.time()

    @property
    def attach_notes(self) -> list[str]:
        """What the loader had to settle for (a raw tracepoint without BTF types),
        and what the halves found they cannot watch fully (a mount fanotify cannot mark)."""
        notes = list(self._probes.notes) if self._probes is not None else []
        if self._pipeline is not None:
            notes += self._pipeline.notes()
        return notes

    # -- the watched set of a dynamic session (fsev serve) -------------------
    def rewatch(self) -> threading.Event:
        """Ask the watch source again, on the session's thread, before its next
        step reads the kernel (from any thread: the service's control socket).
        The Event is set once the kernel filter, the halves and the thresholds
        follow the answer (or the session closed). Nothing is detached: the
        maps change under the attached programs, so no event is lost."""
        done = threading.Event()
        with self._rewatch_lock:
            self._rewatch_waiters.append(done)
        self.wake()
        return done

    def _rewatch_if_asked(self) -> None:
        with self._rewatch_lock:
            waiters, self._rewatch_waiters = self._rewatch_waiters, []
        if waiters:
            try:
                self._rewatch_now()
            finally:
                for w in waiters:
                    w.set()

    def _rewatch_now(self) -> None:
        source = self.opts.watch_source
        if source is None or self._probes is None or self._pipeline is None:
            return
        watch = source(self.table)
        self.watch = watch
        devs = kernel_dev_classes(watch.mounts)
        if watch.every:
            devs[EVERY_MOUNT] = class_mask({_TO_RECORD_CLASS[c] for c in watch.every})
        self._probes.watch_devs(devs)
        self._probes.watch_paths([m.mount_point for m, cl in watch.mounts if EventClass.INFO in cl])
        self._pipeline.set_watch(watch.mounts, watch.every)
        self._pipeline.mounts_changed()
        if self._thr is not None:
            self._thr.update(list(watch.thresholds))

    def _on_record(self, raw: bytes) -> bool:
        self._records.append(raw)
        return len(self._records) >= RECORD_BATCH

    def stop(self) -> None:
        self._stop = True

    def wake(self) -> None:
        """End a wait in progress now (its loop then sees stop(), a request, ...)."""
        probes = self._probes
        if probes is not None:
            probes.nudge()

    def close(self) -> None:
        """Stop and tear down; from any thread, also while another is inside events()."""
        self._stop = True  # a consumer's events() leaves after its current step
        probes = self._probes
        if probes is not None:
            probes.wake()  # that step may be waiting for records: not for the whole poll_ms
        self._guard.close(self._teardown)

    def _teardown(self) -> None:
        with self._rewatch_lock:  # closed: nobody waits for a rewatch that will not come
            for w in self._rewatch_waiters:
                w.set()
            self._rewatch_waiters = []
        if self._thr is not None:
            self._thr.close()
            self._thr = None
        if self._probes is not None:
            self._probes.close()
            self._probes = None
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        if self._mounts_fd is not None:
            os.close(self._mounts_fd)
            self._mounts_fd = None
        if self._mounts_wake_fd is not None:  # after the probes: their wait polled it
            os.close(self._mounts_wake_fd)
            self._mounts_wake_fd = None

    def __enter__(self) -> "TraceSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ----------------------------------------------------------
    def _refresh_mounts_if_changed(self) -> None:
        if self._mounts_fd is not None and self._mounts_poll.poll(0):
            self.table.refresh()
            # Re-arm the POLLPRI notification by reading from the start.
            os.lseek(self._mounts_fd, 0, os.SEEK_SET)
            while os.read(self._mounts_fd, 65536):
                pass
            if self.opts.dynamic:
                self._rewatch_now()  # a configured mount may have come or gone
            elif self._pipeline is not None:
                self._pipeline.mounts_changed()

    def _loss_events(self, now: float) -> Iterator[Event]:
        if self._probes is None or now - self._last_loss_check < LOSS_CHECK_S:
            return
        self._last_loss_check = now
        total = self._probes.drops()
        if total > self._lost_total:
            lost = total - self._lost_total
            self._lost_total = total
            yield self._user_event(cls=EventClass.WARN, type=EventType.LOSS, rung="ringbuf", lost=lost,
                                   lost_total=total, since_wall_time=self._loss_window_start)
        self._loss_window_start = now

    def _user_event(self, **fields: Any) -> Event:
        """An event fsev makes in user space, numbered now (loss reports)."""
        return self.numbers.assign(self.clock.user_event(**fields))

    def _kernel_events(self) -> list[Event]:
        """The records read so far, decoded a batch at once, through the pipeline.

        The cyclic garbage collector waits until the batch is done: every
        event (and its extra dict) is a tracked allocation, so a batch of
        4096 set off a collection every 700 of them, each walking the events
        still in hand; that was a sixth of the flood's time. Events hold no
        cycles (reference counting frees them); the one collection after the
        batch finds what there is to find."""
        if not gc.isenabled():
            return self._kernel_events_now()
        gc.disable()
        try:
            return self._kernel_events_now()
        finally:
            gc.enable()

    def _kernel_events_now(self) -> list[Event]:
        records, self._records = self._records, []
        evs, self._decoded = self._decoded, []
        decode_runs(records, self.clock, evs)
        if not evs:
            return []
        if self._thr is not None or any(ev.type is _THRESHOLD for ev in evs):
            # Kernel threshold records are hints: the monitor confirms them.
            kept = []
            for ev in evs:
                if ev.type is _THRESHOLD:
                    if self._thr is not None:
                        self._thr.on_hint(ev)
                else:
                    kept.append(ev)
            evs = kept
        assert self._pipeline is not None  # made by start(), with the probes
        return self._pipeline.process_all(evs)  # enriched and numbered there; some wait a moment

    # -- thresholds (fsev/thresholds/monitor.py does the work) ---------------------
    def _poll_timeout_ms(self, poll_ms: int) -> int:
        due = self._thr.due_in(time.monotonic()) if self._thr is not None else None
        if self._pipeline is not None:  # short while events wait for fanotify
            poll_ms = self._pipeline.timeout_ms(poll_ms)
        return poll_timeout_ms(poll_ms, due)

    def _catch_up_hints(self) -> None:
        """Read the ring buffer now and hand threshold hints to the monitor;
        other records wait in order for _kernel_events."""
        if self._probes is None or self._thr is None:
            return
        self._probes.drain()
        records, self._records = self._records, []
        evs: list[Event] = []
        decode_runs(records, self.clock, evs)
        for ev in evs:
            if ev.type is _THRESHOLD:
                self._thr.on_hint(ev)
            else:
                self._decoded.append(ev)

    def _threshold_events(self) -> Iterator[Event]:
        if self._thr is None:
            return
        for ev in self._thr.events():
            yield self.numbers.assign(ev)

    def backlog(self) -> int:
        """Records the kernel sent that this session has not read yet, about."""
        probes = self._probes
        return probes.backlog() if probes is not None else 0

    @property
    def lost_total(self) -> int:
        return self._lost_total

    @property
    def stopping(self) -> bool:
        return self._stop

    def events(self, poll_ms: int = 100, until: float | None = None, last: bool = False,
               before_wait: Callable[[], None] | None = None) -> Iterator[Event]:
        """Events until stop(), the monotonic deadline `until`, or the caller stops iterating.
        last: the deadline ends the session (trace --duration), so what waits
        (ENOSPC counts, events joined with fanotify) comes out too; a caller
        that comes back for more (top) leaves it False.
        before_wait: called once the events of a step are all handed out,
        before the session reads (and may wait for) more: a sink that buffers
        a batch flushes there, one write per batch instead of per event.

        Once closed (by any thread, also while this runs) it ends quietly and
        starts nothing: a consumer entering just after a close from another
        thread is in the same race as one already inside, and should just end."""
        if self._step(self._start_if_needed) is None:
            return
        while not self._stop:
            if until is not None and time.monotonic() >= until:
                break
            if before_wait is not None:
                before_wait()
            evs = self._step(lambda: self._poll_step(poll_ms))
            if evs is None:
                return
            yield from evs
            # Let the batch go before the next: the collection that follows
            # each batch (_kernel_events) then walks only what the consumer kept.
            evs = None
        # Drain what the kernel already sent before stopping: at most one ring
        # buffer's worth, so a flood that goes on cannot keep fsev alive.
        budget = self.opts.ringbuf_pages * PAGE // RECORD_SIZE + RECORD_BATCH
        while budget > 0:
            drained = self._step(self._drain_step)
            if drained is None:
                return
            records, evs = drained
            if not records:
                break
            budget -= records
            yield from evs
        final = self._step(lambda: self._final_events(last))
        if final is not None:
            yield from final

    def _step(self, step: Callable[[], T]) -> T | None:
        """One step of events() under the guard (None once closed). Its events
        are yielded after it: close() waits for a step, never for the consumer."""
        with self._guard.call() as live:
            return step() if live else None

    def _start_if_needed(self) -> bool:
        if self._probes is None:
            self._start()
        return True

    def _poll_step(self, poll_ms: int) -> list[Event]:
        assert self._probes is not None
        self._rewatch_if_asked()
        self._probes.poll(self._poll_timeout_ms(poll_ms))
        self._refresh_mounts_if_changed()
        out = self._kernel_events()
        out += self._threshold_events()
        if self._pipeline is not None:
            out += self._pipeline.poll()
            self.notes += self._pipeline.notes()  # e.g. a mount mounted since that fanotify cannot mark
        out += self._loss_events(time.time())
        return out

    def _drain_step(self) -> tuple[int, list[Event]]:
        """(records read, their events)."""
        assert self._probes is not None
        self._probes.drain()
        # A run holds many records: the budget counts records, not runs.
        n = sum(len(r) // RUN_STRIDE or 1 for r in self._records) + len(self._decoded)
        return n, self._kernel_events()

    def _final_events(self, last: bool) -> list[Event]:
        out = list(self._threshold_events())
        if self._pipeline is not None and (self._stop or last):
            out += self._pipeline.flush()
        out += self._loss_events(time.time() + LOSS_CHECK_S)
        return out
