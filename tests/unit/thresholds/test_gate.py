"""Per-page threshold hooks attached only near a level (fsev/thresholds/gate.py), without a kernel.

The monitor is driven through simulated time: a writer takes blocks at a
steady rate, the monitor wakes when due_in() says, and a fake switch stands
in for the loader (tests/kernel/test_thresholds_kernel.py does the same on the
real kernel).
"""

from __future__ import annotations

import time

import pytest
from support.thresholds_data import Disk, facts, mount

from fsev.errors import FsevError
from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.points.registry import plan_probes
from fsev.session.trace import poll_timeout_ms
from fsev.thresholds import gate as thr_gate
from fsev.thresholds.arming import arm_thresholds
from fsev.thresholds.gate import Hook
from fsev.thresholds.levels import parse_thr
from fsev.thresholds.monitor import ThresholdMonitor

BLOCK = 4096
TOTAL = 1_000_000
BOUND_BLOCKS = 10_000  # blocks/s the tests give as the rate bound
GATED = frozenset({Hook.SHMEM_CHARGE, Hook.SHMEM_FREE})


class Switch:
    """The loader's side: which hooks are attached; a log shared with write_state."""

    def __init__(self, refuse: bool = False) -> None:
        self.on: set[Hook] = set(GATED)
        self.log: list = []
        self.refuse = refuse

    def gated_hooks(self) -> frozenset[Hook]:
        return GATED

    @property
    def hooks_on(self) -> frozenset[Hook]:
        return frozenset(self.on)

    def set_hook(self, hook: Hook, on: bool) -> None:
        if on and self.refuse:
            raise FsevError(f"attaching the {hook.value} hooks failed: Operation not permitted")
        self.log.append(("hook", hook, on))
        (self.on.add if on else self.on.discard)(hook)


def monitor(disk: Disk, switch: Switch, levels: str = "500000,250000", notes: list | None = None) -> ThresholdMonitor:
    armed = arm_thresholds(plan_probes(facts()), [mount("/m", "tmpfs")], parse_thr(levels), statfs=disk, cpus=2)
    return ThresholdMonitor(armed, Clock(), lambda key, st: switch.log.append(("state", key, st.depth)),
                            statfs=disk, hooks=switch, rate_bound=BOUND_BLOCKS * BLOCK,
                            notice=(notes.append if notes is not None else None))


def rig(avail: int, refuse: bool = False, notes: list | None = None) -> tuple[Disk, Switch, ThresholdMonitor]:
    """A tmpfs of TOTAL blocks with avail free, its switch (switch.log) and monitor."""
    disk, switch = Disk(avail, TOTAL), Switch(refuse=refuse)
    return disk, switch, monitor(disk, switch, notes=notes)


def hint(pid: int, comm: str = "writer", settle: bool = False) -> Event:
    """A kernel threshold record for the rig's mount (settle: a delete's)."""
    return Event(seq=0, ts_ns=1, wall_time=0.0, cls=EventClass.THR, type=EventType.THRESHOLD,
                 rung="raw_tracepoint", dev="0:40", pid=pid, tgid=pid, comm=comm,
                 extra={"settle": True} if settle else {})


def run_writer(mon: ThresholdMonitor, disk: Disk, switch: Switch, rate: float, until: int,
               t0: float) -> tuple[list[Event], list[tuple[float, int]]]:
    """Take `rate` blocks/s from disk.avail until `until`; the kernel's hint (pid
    3999942) comes at a level only while the charge hook is attached. Returns the
    events and (time, avail) at every wake-up of the monitor."""
    start, t, evs, wakes = disk.avail, t0, [], []
    levels = [500_000, 250_000]
    while disk.avail > until:
        due = mon.due_in(t)
        step = 0.1 if due is None else max(due, 1e-4)
        before = disk.avail
        t += step
        disk.avail = max(until, int(start - rate * (t - t0)))
        crossed = any(before > lv >= disk.avail for lv in levels)
        if crossed and Hook.SHMEM_CHARGE in switch.on:
            mon.on_hint(hint(3999942), now=t)
        wakes.append((t, disk.avail))
        evs += list(mon.events(now=t))
    return evs, wakes


def test_reach_and_poll_interval_arithmetic():
    rate = thr_gate.rate_blocks(BOUND_BLOCKS * BLOCK, BLOCK)
    assert rate == BOUND_BLOCKS
    assert thr_gate.rate_blocks(BOUND_BLOCKS * BLOCK, BLOCK, observed_blocks_s=40_000) == 50_000
    r = thr_gate.reach(rate, band=126, lag=62)
    assert r == 100 + 126 + 62  # 10 ms at the rate, plus the estimate's error
    slow = thr_gate.reach(rate, band=126, lag=62, lead=thr_gate.LEAD_AFTER_DETACH_S)
    assert slow == 500 + 126 + 62  # 50 ms: an attach that waits for the last detach's grace period
    assert thr_gate.lead_s(0.0) == thr_gate.lead_s(0.099) == thr_gate.LEAD_AFTER_DETACH_S
    assert thr_gate.lead_s(0.1) == thr_gate.lead_s(float("inf")) == thr_gate.LEAD_S
    assert thr_gate.distance([1000, 500], 0, 1200) == 200
    assert thr_gate.distance([1000, 500], 0, 700) == 200  # between the levels: the nearer one
    assert thr_gate.distance([1000, 500], 0, 100) == 400  # below L2 too: it may be crossed back
    assert thr_gate.distance([1000], 50, 1030) == 0  # between a level and its re-arm point
    assert thr_gate.distance([1000], 50, 1070) == 20
    assert thr_gate.charge_needed(r, r, slow, attached=False)
    assert not thr_gate.charge_needed(r + 1, r, slow, attached=False)
    # attached, it stays out to twice the slow reach: the re-attach after a detach is never due within its wait
    assert thr_gate.charge_needed(2 * slow, r, slow, attached=True)
    assert not thr_gate.charge_needed(2 * slow + 1, r, slow, attached=True)
    assert thr_gate.next_sample_s(r + 50, r, rate, attached=False) == 0.005  # 50 blocks at 10k/s
    assert thr_gate.next_sample_s(10**9, r, rate, attached=False) == thr_gate.POLL_MAX_S
    assert thr_gate.next_sample_s(r - 1, r, rate, attached=False) == thr_gate.POLL_MIN_S


@pytest.mark.parametrize("text, want", [("", thr_gate.RATE_BOUND), ("1048576", 1 << 20), (" 4096 ", 4096)])
def test_rate_bound_from_the_environment(text, want):
    assert thr_gate.rate_bound({thr_gate.RATE_ENV: text}) == want
    assert thr_gate.rate_bound({}) == thr_gate.RATE_BOUND


@pytest.mark.parametrize("text", ["fast", "-5", "0", "1e9"])
def test_a_bad_rate_bound_is_a_one_line_error(text):
    with pytest.raises(FsevError, match=r"^FSEV_THR_RATE must be a positive number of bytes per second, not "):
        thr_gate.rate_bound({thr_gate.RATE_ENV: text})


def test_far_from_every_level_the_per_page_hooks_are_detached():
    disk, switch, mon = rig(900_000)
    assert switch.on == set() and mon.hooks_on == frozenset()
    assert switch.log == [("state", 40, 0), ("hook", Hook.SHMEM_CHARGE, False), ("hook", Hook.SHMEM_FREE, False)]
    # 400k blocks from L1 at 10k blocks/s: the next statfs may wait the longest interval
    assert mon.due_in(time.monotonic()) == pytest.approx(thr_gate.POLL_MAX_S, abs=0.01)


def test_a_writer_within_the_rate_bound_meets_the_hook_attached_and_is_named():
    disk, switch, mon = rig(600_000)
    t0 = time.monotonic()
    evs, wakes = run_writer(mon, disk, switch, rate=8_000, until=480_000, t0=t0)
    assert [(e.level, e.direction, e.pid) for e in evs] == [("L1", "down", 3999942)]
    on = [i for i, x in enumerate(switch.log) if x == ("hook", Hook.SHMEM_CHARGE, True)]
    assert on, switch.log
    # the shares were reset just before the attach (a detached hook spent none)
    assert switch.log[on[0] - 1][0] == "state"
    # past L1 the next level is 230k blocks away: charge off again, frees on (depth 1)
    assert switch.on == {Hook.SHMEM_FREE}
    # far away the monitor slept: far fewer statfs than 2 ms polling would take
    span = wakes[-1][0] - t0
    assert disk.calls < span / thr_gate.POLL_MIN_S / 4, (disk.calls, span)


def test_a_writer_faster_than_the_bound_is_reported_late_without_a_pid():
    disk, switch, mon = rig(520_000)
    t0 = time.monotonic()
    evs, wakes = run_writer(mon, disk, switch, rate=2_000_000, until=400_000, t0=t0)
    [ev] = evs
    assert (ev.level, ev.direction, ev.pid) == ("L1", "down", None)
    crossed_at = t0 + (520_000 - 500_000) / 2_000_000
    seen_at = next(t for t, a in wakes if a <= 500_000)
    assert seen_at - crossed_at <= thr_gate.POLL_MAX_S


def test_frees_are_hooked_only_below_l1():
    disk, switch, mon = rig(490_000)  # starts below L1, far above L2
    assert switch.on == {Hook.SHMEM_FREE}
    t = time.monotonic()
    disk.avail = 900_000  # a big delete; its settle hint makes the monitor look
    mon.on_hint(hint(3999977, comm="rm", settle=True), now=t)
    [ev] = list(mon.events(now=t))
    assert (ev.level, ev.direction, ev.pid) == ("L1", "up", 3999977)
    assert switch.on == set()


def test_a_kernel_that_refuses_to_reattach_leaves_statfs_alone():
    notes: list[str] = []
    disk, switch, mon = rig(600_000, refuse=True, notes=notes)
    t0 = time.monotonic()
    evs, wakes = run_writer(mon, disk, switch, rate=8_000, until=495_000, t0=t0)
    # one line per hook group the kernel refused, once: charge near L1, then frees below it
    assert [n.split(" hooks")[0] for n in notes] == ["attaching the tmpfs charge", "attaching the tmpfs free"], notes
    assert all("statfs alone" in n for n in notes)
    [ev] = evs
    assert (ev.level, ev.direction, ev.pid) == ("L1", "down", None)
    # near the level statfs is read every POLL_MIN_S: seen within that of the crossing
    crossed_at = t0 + (600_000 - 500_000) / 8_000
    seen_at = next(t for t, a in wakes if a <= 500_000)
    assert seen_at - crossed_at <= thr_gate.POLL_MIN_S + 1e-3


def test_soon_after_a_detach_the_hook_is_attached_further_out():
    """An attach within an RCU grace period of the hook's last detach waits for
    it: for thr_gate.AFTER_DETACH_S the monitor attaches at the longer reach."""
    def first_attach(jump_after_s: float, above_l1: int) -> bool:
        """Start detached, then find the free space above_l1 blocks above L1 after jump_after_s."""
        disk, switch, mon = rig(500_000 + 1400)  # beyond twice the slow reach
        assert switch.on == set()
        t = time.monotonic() + jump_after_s
        disk.avail = 500_000 + above_l1  # no faster than the bound; the writer's hint makes the monitor look
        mon.on_hint(hint(3999942), now=t)
        list(mon.events(now=t))
        return Hook.SHMEM_CHARGE in switch.on

    a = rig(900_000)[2].watches[0]
    fast = thr_gate.reach(BOUND_BLOCKS, a.band, a.lag)
    slow = thr_gate.reach(BOUND_BLOCKS, a.band, a.lag, thr_gate.LEAD_AFTER_DETACH_S)
    assert 2 * slow < 1400 and slow > fast
    assert first_attach(0.02, slow - 1)  # within the detach's window: the longer reach
    assert not first_attach(thr_gate.AFTER_DETACH_S + 0.2, fast + 1)  # later: the short one
    assert first_attach(thr_gate.AFTER_DETACH_S + 0.2, fast - 1)


def test_a_mount_hovering_at_a_level_keeps_its_hooks():
    """Crossing L1 back and forth must not detach and re-attach on every crossing
    (an attach holds fsev's loop for milliseconds): near a level is either side."""
    disk, switch, mon = rig(500_300)
    assert switch.on == {Hook.SHMEM_CHARGE, Hook.SHMEM_FREE}  # within reach of L1: both kept
    t = time.monotonic()
    got = []
    for i in range(10):
        t += 0.01
        disk.avail = 499_900 if i % 2 == 0 else 500_200
        mon.on_hint(hint(3999942), now=t)
        got += [(e.level, e.direction) for e in mon.events(now=t)]
    assert got == [("L1", "down"), ("L1", "up")] * 5
    assert [x for x in switch.log if x[0] == "hook"] == []
    assert switch.on == {Hook.SHMEM_CHARGE, Hook.SHMEM_FREE}


@pytest.mark.parametrize("due, want", [(None, 500), (0.0, 0), (0.0004, 1), (0.0015, 2), (0.002, 2), (9.0, 500)])
def test_the_wait_before_a_threshold_sample_is_rounded_up_not_to_a_spin(due, want):
    """epoll counts whole ms: a sample due in 0.4 ms waits 1 ms, not 0 ms again and again."""
    assert poll_timeout_ms(500, due) == want
