"""Thresholds without a kernel: parsing, arming, the band, the plan, the monitor."""

from __future__ import annotations

import threading
import time

import pytest
from support.thresholds_data import Disk, FakeStatfs, facts, mount

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.kernel.records import RecordClass, ThrKind
from fsev.kernel.thr_slots import reset_gate, thr_slot_for
from fsev.points.registry import ProbePoint, kprobe_attachments, plan_probes, preamble, required_offsets
from fsev.probes.ladder import RungKind
from fsev.probes.program import ProgramConfig
from fsev.thresholds.arming import arm_thresholds, kernel_points, percpu_batch, single_points
from fsev.thresholds.levels import Levels, ThresholdError, parse_hysteresis, parse_thr, resolve_levels
from fsev.thresholds.monitor import ThresholdMonitor

# ---- parsing and levels ---------------------------------------------------

@pytest.mark.parametrize("blocks,size,pct", [("1000,500", "4000K,2000K", "48.828125%,24.4140625%")])
def test_size_and_percent_forms_give_the_same_block_levels(blocks, size, pct):
    got = {resolve_levels(parse_thr(t), 4096, 2048) for t in (blocks, size, pct)}
    assert got == {Levels(1000, 500)}


def test_size_units_are_binary_and_round_down_to_whole_blocks():
    assert resolve_levels(parse_thr("10G,5GiB"), 4096, 10 << 20).as_list() == [10 << 18, 5 << 18]
    assert resolve_levels(parse_thr("6K"), 4096, 100).l1 == 1  # 6 KiB holds one whole 4 KiB block


def test_hysteresis_forms():
    assert parse_hysteresis("100").to_blocks(4096, 2048) == 100
    assert parse_hysteresis("1M").to_blocks(4096, 2048) == 256
    assert parse_hysteresis("10%").to_blocks(4096, 2048) == 204
    with pytest.raises(ThresholdError, match="--thr-hysteresis"):
        parse_hysteresis("lots")


@pytest.mark.parametrize("text", ["", "abc", "1,2,3", "10,", "-5", "1.5", "200%", "10X"])
def test_bad_thr_text_is_one_line_error(text):
    with pytest.raises(ThresholdError) as e:
        parse_thr(text)
    assert "\n" not in str(e.value)


def test_l2_above_l1_is_refused_in_any_units():
    with pytest.raises(ThresholdError, match="L2"):
        parse_thr("500,1000")
    assert resolve_levels(parse_thr("1M,10%"), 4096, 2048).as_list() == [256, 204]
    with pytest.raises(ThresholdError, match="L2"):
        resolve_levels(parse_thr("1M,50%"), 4096, 2048)


def test_levels_larger_than_the_filesystem_and_sizeless_filesystems_are_refused():
    with pytest.raises(ThresholdError, match="more than the filesystem has"):
        resolve_levels(parse_thr("3000"), 4096, 2048)
    with pytest.raises(ThresholdError, match="no size"):
        resolve_levels(parse_thr("10"), 4096, 0)


# ---- the plan -------------------------------------------------------------

def test_plan_here_raw_tracepoints_for_tmpfs_and_ext4_polled_for_the_rest():
    plan = plan_probes(facts())
    assert plan.rung(ProbePoint.THR_TMPFS).kind is RungKind.RAW_TRACEPOINT
    assert plan.rung(ProbePoint.THR_EXT4).kind is RungKind.RAW_TRACEPOINT
    other = plan.rung(ProbePoint.THR_OTHER)
    assert other.kind is RungKind.POLLED and other.skipped
    assert any("kprobe" in s for s in plan.rung(ProbePoint.THR_TMPFS).skipped)


@pytest.mark.parametrize("funcs,targets", [
    ({"shmem_inode_acct_blocks", "shmem_inode_unacct_blocks", "shmem_recalc_inode"},
     ("shmem_inode_acct_blocks", "shmem_inode_unacct_blocks")),  # 6.6+ (6.18 here)
    ({"shmem_alloc_and_acct_folio", "shmem_recalc_inode"},
     ("shmem_alloc_and_acct_folio", "shmem_recalc_inode")),  # Debian 12's 6.1: acct inlined
])
def test_tmpfs_kprobe_rung_picks_the_signature_this_kernel_has(funcs, targets):
    plan = plan_probes(facts(kprobes=True, funcs=frozenset(funcs)))
    r = plan.rung(ProbePoint.THR_TMPFS)
    assert r.kind is RungKind.KPROBE and r.targets == targets
    config = ProgramConfig(classes=frozenset(RecordClass), watch_all=False,
                           thr_points=frozenset({ProbePoint.THR_TMPFS}))
    assert (targets[0], "kp_thr_shmem_acct") in kprobe_attachments(plan, config)
    text = preamble(plan, config, {})
    assert "#define FSEV_THR_SHMEM_KPROBE 1" in text
    settle = "0" if targets[0] == "shmem_inode_acct_blocks" else "1"
    assert f"#define THR_KP_UNACCT_SETTLE {settle}" in text


def test_kprobes_without_known_functions_fall_to_raw_tracepoints_then_polling():
    r = plan_probes(facts(kprobes=True, funcs=frozenset({"shmem_recalc_inode"}))).rung(ProbePoint.THR_TMPFS)
    assert r.kind is RungKind.RAW_TRACEPOINT and "no known pair" in r.skipped[0]
    r = plan_probes(facts(tps=frozenset())).rung(ProbePoint.THR_TMPFS)
    assert r.kind is RungKind.POLLED and any("not present" in s for s in r.skipped)


def test_offsets_and_programs_only_for_armed_points():
    plan = plan_probes(facts())
    none = ProgramConfig(classes=frozenset(RecordClass), watch_all=False)
    assert required_offsets(plan, none) == []
    assert "#define FSEV_THR_SHMEM_RAW_TP 0" in preamble(plan, none, {})
    ext4 = ProgramConfig(classes=frozenset(RecordClass), watch_all=False, thr_points=frozenset({ProbePoint.THR_EXT4}))
    specs = required_offsets(plan, ext4)
    assert "ext4_sb_info.s_freeclusters_counter.count" in specs and "folio.mapping" not in specs
    assert "#define FSEV_THR_EXT4_RAW_TP 1" in preamble(plan, ext4, {})


# ---- arming ---------------------------------------------------------------

def test_arming_picks_rung_by_fs_type_and_sizes_the_band():
    plan = plan_probes(facts())
    mounts = [mount("/t", "tmpfs", 40), mount("/e", "ext4", 1, 7, "/dev/loop9"), mount("/o", "overlay", 41)]
    armed = arm_thresholds(plan, mounts, parse_thr("1000,500"), parse_hysteresis("10"),
                           statfs=lambda p: FakeStatfs(), cpus=2, cluster_bits=lambda dev: 0)
    t, e, o = armed
    assert (t.rung, e.rung, o.rung) == (RungKind.RAW_TRACEPOINT, RungKind.RAW_TRACEPOINT, RungKind.POLLED)
    assert percpu_batch(2) == 32
    assert t.band == 32 * 2 + 31 * 2 and t.lag == 62  # used_blocks error + LRU batches
    assert e.band == 2 * 32 * 2 and e.lag == 0  # free and dirty cluster counters
    assert o.band == 0
    assert kernel_points(armed) == {ProbePoint.THR_TMPFS, ProbePoint.THR_EXT4}
    st = t.state(depth=1)
    got = (st.l1, st.l2, st.hysteresis, st.nlevels, st.depth, st.kind, st.step)
    assert got == (1000, 500, 10, 2, 1, ThrKind.SHMEM, 512)
    assert e.state(0).step == 1 and e.state(0).gate == 0
    assert t.key == 40 and e.key == (7 << 20) | 1
    assert (t.state(0).dev, e.state(0).dev, t.state(0).cpus) == (40, (7 << 20) | 1, 2)  # names hints; cuts shares
    # one PMD-size folio in flight on the other CPU (ext4: plus a partly covered cluster)
    assert (t.state(0).slack, e.state(0).slack, o.slack) == (512, 513, 0)


def test_arming_refuses_unlimited_tmpfs_and_names_the_mount():
    plan = plan_probes(facts())
    with pytest.raises(ThresholdError, match="/t: tmpfs without a size limit"):
        arm_thresholds(plan, [mount("/t", "tmpfs")], parse_thr("10%"),
                       statfs=lambda p: FakeStatfs(f_blocks=0, f_bavail=0), cpus=2)
    with pytest.raises(ThresholdError, match="^/t: .*more than the filesystem"):
        arm_thresholds(plan, [mount("/t", "tmpfs")], parse_thr("5000"), statfs=lambda p: FakeStatfs(), cpus=2)


def test_mapping_and_inode_caches_only_for_a_kind_armed_on_one_superblock():
    """The BPF side may take a cached mapping/inode for "the" watched superblock
    of its kind only when there is one (bpf/thr_common.h, the verdict caches)."""
    plan = plan_probes(facts())
    mounts = [mount("/t", "tmpfs", 40), mount("/u", "tmpfs", 41), mount("/e", "ext4", 1, 7, "/dev/loop9"),
              mount("/o", "overlay", 42), mount("/p", "overlay", 43)]
    armed = arm_thresholds(plan, mounts, parse_thr("1000"), statfs=lambda p: FakeStatfs(), cpus=2,
                           cluster_bits=lambda dev: 0)
    assert single_points(armed) == {ProbePoint.THR_EXT4}  # two tmpfs; polled mounts never count
    assert single_points(armed[2:]) == {ProbePoint.THR_EXT4}
    assert single_points(armed[:1]) == {ProbePoint.THR_TMPFS}
    config = ProgramConfig(classes=frozenset(RecordClass), watch_all=False, thr_points=kernel_points(armed),
                           thr_single=single_points(armed))
    text = preamble(plan, config, {})
    assert "#define FSEV_THR_SHMEM_SINGLE 0" in text and "#define FSEV_THR_EXT4_SINGLE 1" in text


def test_the_first_superblock_of_each_kind_gets_the_slot_the_bpf_side_expects():
    """FSEV_THR_*_SINGLE: the BPF side finds the only superblock of a kind at slot kind - 1."""
    assert thr_slot_for(ThrKind.EXT4, set()) == 1 and thr_slot_for(ThrKind.SHMEM, {1}) == 0
    assert thr_slot_for(ThrKind.SHMEM, {0, 1}) == 2 and thr_slot_for(ThrKind.EXT4, {0, 1, 2}) == 3
    assert thr_slot_for(ThrKind.SHMEM, {1, 2}) == 0


def test_a_state_written_by_user_space_opens_a_generation_no_kernel_check_can_claim():
    """reset_gate: share 0 (every CPU checks again, under the new depth) in a
    generation far from the one read, so a kernel check that claimed the next
    one meanwhile cannot publish over the write (its cmpxchg expects its own)."""
    for gen in (0, 5, 0xFFFF_FFFF):
        gate = (gen << 32) | 1234
        new = reset_gate(gate)
        assert new & 0xFFFF_FFFF == 0
        assert all((new >> 32) != (gen + k) % (1 << 32) for k in range(1000))
        assert new < 1 << 64


def test_bind_mounts_of_one_superblock_share_one_state():
    plan = plan_probes(facts())
    armed = arm_thresholds(plan, [mount("/a", "tmpfs", 40), mount("/b", "tmpfs", 40)], parse_thr("10"),
                           statfs=lambda p: FakeStatfs(), cpus=2)
    assert [a.mount.mount_point for a in armed] == ["/a"]


# ---- the monitor ----------------------------------------------------------



def _armed(fs_type: str, disk: Disk, hysteresis: str | None = None):
    plan = plan_probes(facts())
    return arm_thresholds(plan, [mount("/m", fs_type)], parse_thr("1000,500"),
                          parse_hysteresis(hysteresis) if hysteresis else None, statfs=disk, cpus=2)


def hint(pid: int, settle: bool = False) -> Event:
    return Event(seq=0, ts_ns=1, wall_time=0.0, cls=EventClass.THR, type=EventType.THRESHOLD,
                 rung="raw_tracepoint", dev="0:40", pid=pid, tgid=pid, comm="writer",
                 extra={"settle": True} if settle else {})


def test_monitor_confirms_hints_with_statfs_and_writes_the_depth_back():
    disk = Disk(2048)
    written: list[tuple[int, int]] = []
    mon = ThresholdMonitor(_armed("tmpfs", disk), Clock(), lambda k, st: written.append((k, st.depth)), statfs=disk)
    assert written == [(40, 0)]  # armed at start, silently above L1
    disk.avail = 1100  # a hint that did not cross: nothing
    mon.on_hint(hint(3999942), now=0.0)
    assert list(mon.events(now=0.0)) == []
    disk.avail = 990
    mon.on_hint(hint(3999942), now=0.001)
    [ev] = list(mon.events(now=0.001))
    assert (ev.level, ev.direction, ev.avail_blocks, ev.level_blocks, ev.pid) == ("L1", "down", 990, 1000, 3999942)
    assert ev.mount_point == "/m" and ev.rung == "raw_tracepoint"
    assert written[-1] == (40, 1)


def test_monitor_keeps_reading_statfs_while_unseen_charges_could_cross():
    disk = Disk(1050)  # within the LRU lag (62 blocks) of L1
    mon = ThresholdMonitor(_armed("tmpfs", disk), Clock(), statfs=disk)
    assert mon.due_in(0.0) == 0.0
    disk.avail = 999  # charged, but no kernel event yet
    [ev] = list(mon.events(now=0.0))
    assert ev.direction == "down" and ev.avail_blocks == 999
    assert mon.due_in(1.0) is None  # far from L2 now: only hints wake it


def test_monitor_settle_window_catches_a_free_that_lands_after_the_event():
    disk = Disk(400)
    mon = ThresholdMonitor(_armed("tmpfs", disk), Clock(), statfs=disk)
    mon.on_hint(hint(3999977, settle=True), now=10.0)
    assert list(mon.events(now=10.0)) == []  # the un-charge has not happened yet
    disk.avail = 2048
    evs = list(mon.events(now=10.1))  # still inside the settle window
    assert [(e.level, e.direction, e.pid) for e in evs] == [("L2", "up", 3999977), ("L1", "up", 3999977)]
    disk.avail = 2048
    assert mon.due_in(11.0) is None


def test_monitor_ignores_its_own_process_and_kernel_threads_as_causes():
    import os

    disk = Disk(1100)
    mon = ThresholdMonitor(_armed("tmpfs", disk), Clock(), statfs=disk)
    mon.on_hint(hint(3999942), now=0.0)
    list(mon.events(now=0.0))
    mon.on_hint(hint(os.getpid()), now=0.01)  # fsev flushing an LRU batch
    mon.on_hint(hint(2), now=0.02)  # kthreadd
    disk.avail = 900
    [ev] = list(mon.events(now=0.02))
    assert ev.pid == 3999942


def test_hysteresis_delays_the_up_crossing():
    disk = Disk(2048)
    mon = ThresholdMonitor(_armed("tmpfs", disk, hysteresis="100"), Clock(), statfs=disk)
    for avail, want in ((990, [("L1", "down")]), (1050, []), (1101, [("L1", "up")])):
        disk.avail = avail
        mon.on_hint(hint(1), now=0.0)
        assert [(e.level, e.direction) for e in mon.events(now=0.0)] == want


def test_polled_mount_reports_crossings_without_a_pid():
    disk = Disk(2048)
    mon = ThresholdMonitor(_armed("overlay", disk), Clock(), statfs=disk, poll_interval=0.01)
    try:
        disk.avail = 100
        deadline = time.monotonic() + 5
        evs: list[Event] = []
        while len(evs) < 2 and time.monotonic() < deadline:
            evs += list(mon.events())
            time.sleep(0.01)
        assert [(e.level, e.direction, e.rung, e.pid) for e in evs] == [("L1", "down", "polled", None),
                                                                       ("L2", "down", "polled", None)]
    finally:
        mon.close()


def test_a_statfs_that_hangs_never_blocks_the_monitor():
    release = threading.Event()
    first = [True]

    def statfs(path: str) -> FakeStatfs:
        if first[0]:  # arming reads it once, inline
            first[0] = False
            return FakeStatfs()
        release.wait(30)  # a dead NFS server
        return FakeStatfs()

    notes: list[str] = []
    mon = ThresholdMonitor(_armed("nfs", Disk(2048)), Clock(), statfs=statfs, notice=notes.append,
                           poll_interval=0.01)
    try:
        start = time.monotonic()
        assert list(mon.events(now=start)) == []
        assert list(mon.events(now=start + 3)) == []  # returns at once, says it once
        assert list(mon.events(now=start + 4)) == []
        assert time.monotonic() - start < 1
        assert len(notes) == 1 and "has not answered" in notes[0]
    finally:
        release.set()
        mon.close()
