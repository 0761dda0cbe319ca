"""Confirming threshold crossings in user space, and the statfs-polled rung.

The kernel rungs send hints (a crossing may have happened, within the band of
their counter estimate); every crossing fsev reports comes from a
ThresholdState fed with exact statfs values, so fsev never reports a crossing
statfs would not show. Statfs is read:
- at once for each hint, then every POLL_NEAR_S for a short trailing window
  (TRAIL_S; SETTLE_S after a settle hint, whose change comes after the event),
  because the kernel sends at most one hint per millisecond;
- every POLL_NEAR_S while a charge the kernel cannot see yet (ArmedMount.lag:
  tmpfs folios batched before the LRU) could cross the next level down;
- every POLL_S on polled mounts, in one thread per mount, so a filesystem
  whose statfs hangs (a dead NFS server) stalls only its own thread;
- on kernel-rung mounts, as fsev/thresholds/gate.py asks, to attach the per-page
  hooks only near a level (a crossing such a sample finds while the hook was
  detached is reported without a pid: no kernel event saw its cause).
Statfs of tmpfs and ext4 (the kernel rungs) only sums counters in memory: it
runs inline.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from fsev.errors import FsevError
from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import Device
from fsev.kernel.records import ThrState
from fsev.thresholds import gate as thr_gate
from fsev.thresholds.arming import ArmedMount, StatfsResult
from fsev.thresholds.gate import Hook
from fsev.thresholds.levels import Crossing, ThresholdState

POLL_NEAR_S = 0.002
TRAIL_S = 0.02
SETTLE_S = 0.2
POLL_S = 0.25
STATFS_TIMEOUT_S = 2.0

StateWriter = Callable[[int, ThrState], None]
Statfs = Callable[[str], StatfsResult]


class HookSwitch(Protocol):
    """Attaches and detaches groups of per-page programs (fsev/kernel/loader.py)."""

    def gated_hooks(self) -> frozenset[Hook]: ...

    @property
    def hooks_on(self) -> frozenset[Hook]: ...

    def set_hook(self, hook: Hook, on: bool) -> None: ...


@dataclass
class _Cause:
    pid: int | None = None
    tgid: int | None = None
    comm: str | None = None


PF_KTHREAD = 0x00200000


def _is_kernel_thread(pid: int) -> bool:
    """/proc/PID/stat field 9 (flags) has PF_KTHREAD; gone or unreadable: not one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return bool(int(stat.rsplit(b")", 1)[1].split()[6]) & PF_KTHREAD)
    except (OSError, ValueError, IndexError):
        return False


def causes_charge(ev: Event, own_tgid: int) -> bool:
    """Whether the task a hint names plausibly caused the change.

    A kernel event fires in the context of whoever runs the code path: for
    ext4 writeback that is a kworker, and fsev itself may flush a CPU's LRU
    batch of tmpfs folios (the BPF side already drops hints for folios the
    current task did not add). Neither is a cause; the previous one is kept.
    """
    if ev.pid is None or ev.tgid == own_tgid:
        return False
    return not _is_kernel_thread(ev.pid)


class PolledStatfs:
    """statfs of one mount every interval, in its own daemon thread.

    A call that never returns blocks only this thread; stalled() says so and
    the monitor says it once. Daemon: exit never waits for it.
    """

    def __init__(self, path: str, interval: float, statfs: Statfs = os.statvfs, keep: bool = True) -> None:
        # keep=False: nothing is queued (a caller whose statfs callable keeps what it needs, such as
        # the service's metrics, which nobody drains).
        self.keep = keep
        self.path = path
        self.interval = interval
        self._statfs = statfs
        self.samples: "queue.SimpleQueue[tuple[int, int]]" = queue.SimpleQueue()  # (monotonic ns, avail)
        self.errors: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fsev-statfs {path}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._busy_since = time.monotonic()
            try:
                st = self._statfs(self.path)
            except OSError as e:
                if self.keep:
                    self.errors.put(f"statfs {self.path}: {e.strerror or e}")
            else:
                if self.keep:
                    self.samples.put((time.monotonic_ns(), int(st.f_bavail)))
            self._busy_since = None
            self._stop.wait(self.interval)

    def stalled(self, now: float, timeout: float = STATFS_TIMEOUT_S) -> bool:
        busy = self._busy_since
        return busy is not None and now - busy > timeout

    def close(self) -> None:
        self._stop.set()


@dataclass
class _Watch:
    armed: ArmedMount
    machine: ThresholdState
    cause: _Cause = field(default_factory=_Cause)
    confirm_now: bool = False
    poll_until: float = 0.0
    next_poll: float = 0.0
    last_avail: int = 0
    poller: PolledStatfs | None = None
    said_stalled: bool = False
    # Gated hooks (kernel rungs): the next statfs for the gate, the sample
    # before (monotonic s, avail) for the rate, and whether the charge hook
    # has been attached since the last switch (else a crossing down that a
    # sample finds has no known cause).
    gate_next: float = 0.0
    prev_t: float = 0.0
    prev_avail: int = 0
    gate_rate: float = 0.0  # blocks/s the free space may fall at (thr_gate.rate_blocks)
    watched_down: bool = True

    def lag_near(self) -> bool:
        """Could charges the kernel has not seen yet reach the next level down?"""
        lag = self.armed.lag
        lv = self.armed.levels.as_list()
        d = self.machine.depth
        return lag > 0 and d < len(lv) and self.last_avail - lag <= lv[d]


class ThresholdMonitor:
    """Per-mount ThresholdState fed by statfs; turns kernel hints into confirmed events."""

    def __init__(
        self,
        armed: list[ArmedMount],
        clock: Clock,
        write_state: StateWriter | None = None,
        statfs: Statfs = os.statvfs,
        notice: Callable[[str], None] | None = None,
        poll_interval: float = POLL_S,
        catch_up: Callable[[], None] | None = None,
        hooks: HookSwitch | None = None,
        rate_bound: int | None = None,
        release_state: Callable[[int], None] | None = None,
    ) -> None:
        self.clock = clock
        self._write_state = write_state
        self._release_state = release_state  # a superblock no longer armed: its kernel slot goes
        self._statfs = statfs
        self._notice = notice or (lambda msg: print(f"fsev: {msg}", file=sys.stderr, flush=True))
        self._poll_interval = poll_interval
        self._own_tgid = os.getpid()
        # Hands over the hints the kernel sent since the last poll (on_hint).
        self._catch_up = catch_up
        self._watches: list[_Watch] = []
        self._by_key: dict[int, _Watch] = {}
        for a in armed:
            self._add(a)
        # Per-page hooks the loader can detach; without a switch all stay on.
        self._hooks = hooks
        self._gated = hooks.gated_hooks() if hooks is not None else frozenset()
        self._failed: set[Hook] = set()  # the kernel refused to re-attach: statfs only
        # When each hook was last detached: an attach soon after waits for an RCU grace period.
        self._detached_at: dict[Hook, float] = {}
        self._rate_bound = rate_bound if rate_bound is not None else thr_gate.rate_bound()
        # A statfs was read since the last _switch: only that changes its inputs.
        self._switch_pending = bool(self._gated)
        if self._gated:
            self._switch(time.monotonic())

    def _add(self, a: ArmedMount) -> None:
        # Start in the state the filesystem is in, silently: crossings, not levels, are events.
        avail = int(self._statfs(a.mount.mount_point).f_bavail)
        w = _Watch(a, ThresholdState(a.levels, avail), last_avail=avail, prev_t=time.monotonic(), prev_avail=avail)
        if a.polled:
            w.poller = PolledStatfs(a.mount.mount_point, self._poll_interval, self._statfs)
        elif self._write_state is not None:
            self._write_state(a.key, a.state(w.machine.depth))
        self._watches.append(w)
        self._by_key[a.key] = w

    def update(self, armed: list[ArmedMount]) -> None:
        """Arm exactly these (fsev serve: the configuration or the mount table
        changed). A superblock armed before with the same levels keeps its
        watch, so a level already crossed stays crossed: no crossing repeated,
        none missed. New ones start silently in the state statfs gives now;
        a superblock no longer armed, or armed with other levels, starts over."""
        want = {a.key: a for a in armed}
        for w in list(self._watches):
            a = want.get(w.armed.key)
            if a is not None and a.levels == w.armed.levels and a.rung is w.armed.rung:
                w.armed = a  # the same superblock, maybe seen through another mount now
                continue
            self._remove(w)
        for key, a in want.items():
            if key not in self._by_key:
                self._add(a)
        self._switch_pending = bool(self._gated)

    def _remove(self, w: _Watch) -> None:
        if w.poller is not None:
            w.poller.close()
        elif self._release_state is not None:
            self._release_state(w.armed.key)
        self._watches.remove(w)
        del self._by_key[w.armed.key]

    @property
    def watches(self) -> list[ArmedMount]:
        return [w.armed for w in self._watches]

    def on_hint(self, ev: Event, now: float | None = None) -> None:
        """A kernel threshold record (already decoded): re-read statfs soon."""
        if ev.dev is None:
            return
        w = self._by_key.get(Device.parse(ev.dev).kernel)
        if w is None:
            return
        now = time.monotonic() if now is None else now
        if ev.pid != w.cause.pid and causes_charge(ev, self._own_tgid):
            w.cause = _Cause(ev.pid, ev.tgid, ev.comm)
        w.confirm_now = True
        window = SETTLE_S if ev.extra.get("settle") else TRAIL_S
        w.poll_until = max(w.poll_until, now + window)

    def due_in(self, now: float) -> float | None:
        """Seconds until the next statfs this monitor wants (None: only on hints)."""
        due: float | None = None
        for w in self._watches:
            if w.poller is not None:
                t = self._poll_interval
            elif w.confirm_now:
                t = 0.0
            elif now < w.poll_until or w.lag_near():
                t = max(0.0, min(w.next_poll, self._gate_due(w)) - now)
            elif self._gate_due(w) < float("inf"):
                t = max(0.0, self._gate_due(w) - now)
            else:
                continue
            due = t if due is None else min(due, t)
        return due

    def _gate_due(self, w: _Watch) -> float:
        return w.gate_next if self._gated else float("inf")

    @property
    def hooks_on(self) -> frozenset[Hook]:
        """The gated hooks attached now (the loader keeps the books)."""
        return self._hooks.hooks_on if self._hooks is not None else frozenset()

    def events(self, now: float | None = None) -> Iterator[Event]:
        now = time.monotonic() if now is None else now
        for w in self._watches:
            if w.poller is not None:
                yield from self._polled(w, now)
                continue
            near = (now < w.poll_until or w.lag_near()) and now >= w.next_poll
            if not (w.confirm_now or near or now >= self._gate_due(w)):
                continue
            w.confirm_now = False
            w.next_poll = now + POLL_NEAR_S
            avail = int(self._statfs(w.armed.mount.mount_point).f_bavail)
            self._switch_pending = bool(self._gated)
            yield from self._sample(w, avail, time.monotonic_ns())
        if self._switch_pending:
            self._switch(now)

    def _polled(self, w: _Watch, now: float) -> Iterator[Event]:
        assert w.poller is not None
        while True:
            try:
                ts, avail = w.poller.samples.get_nowait()
            except queue.Empty:
                break
            w.said_stalled = False
            yield from self._sample(w, avail, ts)
        while True:
            try:
                self._notice(w.poller.errors.get_nowait())
            except queue.Empty:
                break
        if w.poller.stalled(now) and not w.said_stalled:
            w.said_stalled = True
            self._notice(
                f"statfs on {w.armed.mount.mount_point} has not answered for {STATFS_TIMEOUT_S:.0f}s: "
                "its thresholds wait for it (other mounts go on)"
            )

    def _sample(self, w: _Watch, avail: int, ts_ns: int) -> Iterator[Event]:
        w.last_avail = avail
        crossings = w.machine.update(avail)
        if not crossings:
            return
        if self._catch_up is not None and not w.armed.polled:
            # The kernel sends its hint before the change statfs just saw, so
            # the hint naming the task that caused it is in the ring buffer
            # now, unread if the change happened after the last poll.
            self._catch_up()
        if not w.armed.polled and self._write_state is not None:
            self._write_state(w.armed.key, w.armed.state(w.machine.depth))
        for c in crossings:
            yield self._event(w, c, ts_ns)

    # -- gated per-page hooks (fsev/thresholds/gate.py) ---------------------------
    def _rate(self, w: _Watch, now: float) -> float:
        """Blocks/s the free space may fall at, from the bound and the last two gate samples."""
        dt = now - w.prev_t
        observed = (w.prev_avail - w.last_avail) / dt if dt > 0 else 0.0
        return thr_gate.rate_blocks(self._rate_bound, w.armed.block_size, max(observed, 0.0))

    def _switch(self, now: float) -> None:
        """Attach the hooks some mount is near a level for, detach the others;
        plan each kernel mount's next gate statfs (never later than planned
        before: a hint's statfs comes between gate samples)."""
        self._switch_pending = False
        on = self.hooks_on
        want: set[Hook] = set()
        plans: list[tuple[_Watch, bool, int]] = []  # (watch, gate sample due, distance)
        for w in self._watches:
            if w.armed.polled:
                continue
            charge, free = thr_gate.CHARGE_HOOK.get(w.armed.kind), thr_gate.FREE_HOOK.get(w.armed.kind)
            due = now >= w.gate_next  # events() just took the gate sample (or none yet)
            if due:
                w.gate_rate = self._rate(w, now)
                w.prev_t, w.prev_avail = now, w.last_avail
            lv = w.armed.levels
            d = thr_gate.distance(lv.as_list(), lv.hysteresis, w.last_avail)
            r_off = thr_gate.reach(w.gate_rate, w.armed.band, w.armed.lag, thr_gate.LEAD_AFTER_DETACH_S)
            if charge is not None and thr_gate.charge_needed(d, self._on_reach(w, charge, now), r_off, charge in on):
                want.add(charge)
            if free is not None and thr_gate.free_needed(w.machine.depth, d, r_off, free in on):
                want.add(free)
            plans.append((w, due, d))
        want &= self._gated - self._failed
        for hook in sorted(want - on, key=lambda h: h.value):
            self._reset_shares(hook)
            self._set(hook, True)
        for hook in sorted(on - want, key=lambda h: h.value):
            self._set(hook, False)
            self._detached_at[hook] = now
        on = self.hooks_on
        for w, due, d in plans:
            charge = thr_gate.CHARGE_HOOK.get(w.armed.kind)
            # not gated: attached for good; refused by the kernel: never again
            attached = charge not in self._gated or charge in on
            w.watched_down = attached
            # the reach again, after the switch: a hook detached just now plans with the slow one
            r = self._on_reach(w, charge, now) if charge is not None else 0
            t = now + thr_gate.next_sample_s(d, r, w.gate_rate, attached)
            w.gate_next = t if due else min(w.gate_next, t)

    def _on_reach(self, w: _Watch, charge: Hook, now: float) -> int:
        """Blocks from a level at which w's charge hook must be attached now:
        further out soon after that hook's last detach (thr_gate.lead_s)."""
        since = now - self._detached_at.get(charge, -math.inf)
        return thr_gate.reach(w.gate_rate, w.armed.band, w.armed.lag, thr_gate.lead_s(since))

    def _set(self, hook: Hook, on: bool) -> None:
        """Switch one hook group. A kernel that refuses leaves it detached, and
        its mounts near a level are then read by statfs every POLL_MIN_S."""
        assert self._hooks is not None
        try:
            self._hooks.set_hook(hook, on)
        except (FsevError, OSError) as e:
            self._failed.add(hook)
            self._notice(f"{e}; thresholds there go on from statfs alone (no pid)")

    def _reset_shares(self, hook: Hook) -> None:
        """Detached, a hook spent no budget: the per-CPU shares the kernel holds
        are stale. Rewriting the state gives every CPU a new generation."""
        if self._write_state is None:
            return
        for w in self._watches:
            kind = w.armed.kind
            if not w.armed.polled and hook in (thr_gate.CHARGE_HOOK.get(kind), thr_gate.FREE_HOOK.get(kind)):
                self._write_state(w.armed.key, w.armed.state(w.machine.depth))

    def _event(self, w: _Watch, c: Crossing, ts_ns: int) -> Event:
        m = w.armed.mount
        known = not w.armed.polled and (c.direction != "down" or w.watched_down)
        cause = w.cause if known else _Cause()
        return Event(
            seq=0, ts_ns=ts_ns, wall_time=self.clock.wall(ts_ns), cls=EventClass.THR,
            type=EventType.THRESHOLD, rung=w.armed.rung.value, dev=m.dev, mount_point=m.mount_point,
            fs_type=m.fs_type, source=m.source, mnt_id=m.mnt_id, pid=cause.pid, tgid=cause.tgid,
            comm=cause.comm, avail_blocks=c.avail_blocks, level=c.level_name, level_blocks=c.level_blocks,
            direction=c.direction,
        )

    def close(self) -> None:
        for w in self._watches:
            if w.poller is not None:
                w.poller.close()
