"""TopModel: events, snapshots, keys; and the sysfs/statfs readers behind the snapshots."""

from __future__ import annotations

import os

import pytest
from support.top_data import NOW, STATS, ev, model, mounts, thr_ev

from fsev.events import EventClass, EventType
from fsev.thresholds.levels import Levels
from fsev.top.fs_snapshot import FsStats, historical_events, read_ext4_errors
from fsev.top.model import TopModel


def test_errors_counted_per_superblock_and_last_error_kept():
    m = model()
    m.apply(ev(at=NOW - 5, function="a", line=1), NOW)
    m.apply(ev(at=NOW - 1, function="b", line=2, errno=117), NOW)
    st = m.supers["7:0"]
    assert st.errors == 2
    assert (st.last_error.function, st.last_error.line, st.last_error.errno_name) == ("b", 2, "EUCLEAN")
    assert st.last_event == NOW - 1
    assert m.total == 2


def test_event_without_dev_is_matched_by_mount_point():
    m = model()
    m.apply(ev(dev=None), NOW)
    assert m.supers["7:0"].errors == 1


def test_loss_events_set_drops_not_totals():
    m = model()
    m.apply(ev(cls=EventClass.WARN, typ=EventType.LOSS, lost=3, lost_total=3), NOW)
    assert (m.total, m.drops) == (0, 3)
    m.set_drops(10)
    assert m.drops_shown == 10
    m.key("c")
    assert m.drops_shown == 0 and m.total == 0
    m.set_drops(11)
    assert m.drops_shown == 1


def test_clear_resets_session_counters_but_keeps_what_happened():
    m = model()
    m.apply(ev(), NOW)
    m.key("c")
    st = m.supers["7:0"]
    assert st.errors == 0 and m.total == 0 and m.rate(NOW + 1) == 0
    assert st.last_error is not None and len(m.feed) == 1


def test_rate_over_recent_seconds():
    m = TopModel("h", "k", started=NOW - 100)
    for i in range(50):
        m.apply(ev(), NOW - 4.9 + i * 0.1)
    assert m.rate(NOW) == pytest.approx(50 / 5, rel=0.25)
    assert m.rate(NOW + 30) == 0


def test_pause_freezes_the_feed_and_counts_what_arrives():
    m = model()
    m.apply(ev(line=1), NOW)
    m.key("p")
    m.apply(ev(line=2), NOW)
    m.apply(ev(line=3), NOW)
    assert [e.line for e in m.visible_feed(10)] == [1]
    assert m.new_while_paused == 2 and m.supers["7:0"].errors == 3
    m.key("p")
    assert [e.line for e in m.visible_feed(10)] == [3, 2, 1]


def test_filter_by_class_and_mount():
    m = model()
    m.apply(ev(), NOW)
    m.apply(thr_ev("L1", "down", 5, 10), NOW)
    for k in ["/", "e", "r", "r", "\r"]:
        m.key(k)
    assert [e.cls for e in m.visible_feed(10)] == [EventClass.ERR]
    for k in ["/", *"\x7f" * 3, *"thr", "\r"]:
        m.key(k)
    assert [e.cls for e in m.visible_feed(10)] == [EventClass.THR]
    assert len(m.visible_rows()) == 5  # a class filter leaves the table alone
    for k in ["/", *"\x7f" * 3, *"/mnt/t", "\r"]:
        m.key(k)
    assert [r.mount.mount_point for r, _ in m.visible_rows()] == ["/mnt/thr"]
    assert [e.mount_point for e in m.visible_feed(10)] == ["/mnt/thr"]
    m.key("/"), m.key("x"), m.key("\x1b")  # Esc cancels an edit
    assert m.filter.text == "/mnt/t" and m.prompt is None
    m.key("\x1b")  # Esc outside the prompt clears the filter
    assert m.filter.text == "" and len(m.visible_rows()) == 5


def test_keys_quit_sort_help():
    m = model()
    assert m.key("q") is True
    assert m.key("s") is False and m.sort == "usage"
    m.key("?")
    assert m.show_help
    assert m.key("q") is True  # q quits even from the help


def test_shadowed_mount_hidden_and_departed_superblocks_forgotten():
    text = "\n".join([
        r"27 1 254:0 / / rw - ext4 /dev/vda rw",
        r"30 27 0:40 / /dev/shm rw - tmpfs tmpfs rw",
        r"31 27 0:41 / /dev/shm rw - tmpfs tmpfs rw",
    ])
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts(text))
    assert [(r.mount.mnt_id, r.shadowed) for r in m.rows] == [(27, False), (31, False)]
    m.show_all = True
    m.update_mounts(mounts(text))
    assert [(r.mount.mnt_id, r.shadowed) for r in m.rows] == [(27, False), (30, True), (31, False)]
    m.apply(ev(dev="0:41", mount_point="/dev/shm"), NOW)
    m.update_mounts(mounts(text.rsplit("\n", 1)[0]))
    assert "0:41" not in m.supers and len(m.feed) == 1


def test_threshold_state_follows_statfs_with_configured_levels():
    m = TopModel("h", "k", started=NOW, levels={"0:51": Levels(600, 300, hysteresis=50)})
    ms = mounts()
    m.update_mounts(ms, {46: FsStats(4096, 2048, 1024, 1024, False)})
    st = m.supers["0:51"]
    assert st.levels == {"L1": 600, "L2": 300} and st.thr_depth == 0
    m.update_mounts(ms, {46: FsStats(4096, 2048, 250, 250, False)})
    assert st.thr_depth == 2
    m.update_mounts(ms, {46: FsStats(4096, 2048, 320, 320, False)})
    assert st.thr_depth == 2  # within hysteresis of L2
    m.update_mounts(ms, {46: FsStats(4096, 2048, 400, 400, False)})
    assert st.thr_depth == 1
    m.apply(thr_ev("L1", "up", 700, 600), NOW)  # the kernel's word wins
    assert st.thr_depth == 0 and st.tracker.depth == 0


def _fake_sysfs(tmp_path, name="loop0", **attrs):
    devdir = tmp_path / "devblock"
    devdir.mkdir()
    os.symlink(f"../devices/virtual/block/{name}", devdir / "7:0")
    d = tmp_path / "ext4" / name
    d.mkdir(parents=True)
    base = dict(errors_count=0, first_error_time=0, last_error_time=0)
    base.update(attrs)
    for k, v in base.items():
        (d / k).write_text(f"{v}\n")
    return str(tmp_path / "ext4"), str(devdir)


def test_read_ext4_errors_and_historical_events(tmp_path):
    rec = dict(time=1700000000, func="htree_dirblock_to_tree", line=1085, ino=2, block=1234, errcode=5)
    attrs = {"errors_count": 4}
    for which in ("first", "last"):
        for k, v in rec.items():
            attrs[f"{which}_error_{k}"] = v
    attrs["first_error_time"] = 1600000000
    root, devblock = _fake_sysfs(tmp_path, **attrs)
    data = next(x for x in mounts() if x.mount_point == "/srv/data")
    st = read_ext4_errors(data, root, devblock)
    assert st is not None and st.name == "loop0" and st.errors_count == 4
    assert st.last.function == "htree_dirblock_to_tree" and st.last.errcode_name == "EFSCORRUPTED"
    evs = historical_events(data, st)
    assert [e.extra["historical"] for e in evs] == ["first", "last"]
    assert evs[1].errno == 117 and evs[1].inode == 2 and evs[1].block == 1234 and evs[1].rung == "sysfs"
    assert evs[0].wall_time == 1600000000.0 and evs[0].mount_point == "/srv/data"
    tmpfs = next(x for x in mounts() if x.mount_point == "/mnt/thr")
    assert read_ext4_errors(tmpfs, root, devblock) is None


def test_no_history_when_ext4_recorded_no_error(tmp_path):
    root, devblock = _fake_sysfs(tmp_path)
    data = next(x for x in mounts() if x.mount_point == "/srv/data")
    st = read_ext4_errors(data, root, devblock)
    assert st is not None and st.errors_count == 0 and st.first is None
    assert historical_events(data, st) == []
    m = model()
    m.load_history(data, st)
    assert not m.feed and m.supers["7:0"].errors_recorded == 0


def test_stats_fractions():
    s = STATS[44]
    assert s.used == 6000 and s.usable == 8000 and s.used_fraction == 0.75 and s.size_bytes == 8000 * 4096


def test_a_flood_on_one_mount_does_not_push_a_quiet_mount_out_of_its_filtered_feed():
    m = model()
    m.apply(ev(dev="0:51", mount_point="/mnt/thr", function="quiet_one"), NOW)
    for i in range(5000):
        m.apply(ev(line=i), NOW)
    assert all(e.function == "trigger_test_error" for e in m.visible_feed(50))
    m.set_filter("/mnt/thr")
    assert [e.function for e in m.visible_feed(50)] == ["quiet_one"]
    m.set_filter("/srv/data")
    assert [e.line for e in m.visible_feed(3)] == [4999, 4998, 4997]
    m.key("p")  # a paused feed keeps them too
    for i in range(2000):
        m.apply(ev(line=i), NOW)
    m.set_filter("/mnt/thr")
    assert [e.function for e in m.visible_feed(50)] == ["quiet_one"]


def test_compiler_mappings_found_in_proc_maps():
    from fsev.linux.memory import compiler_mappings

    maps = "\n".join([
        "7f0000000000-7f0000100000 r--p 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "7f0000100000-7f0000900000 r-xp 00100000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "7f0001000000-7f0001200000 r-xp 00000000 fe:00 2 /usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "7f0002000000-7f0002010000 r-xp 00000000 fe:00 3 /usr/lib/x86_64-linux-gnu/libc.so.6",
        "7f0003000000-7f0003010000 rw-p 00000000 00:00 0",
        "7f0004000000-7f0004010000 r-xp 00000000 fe:00 4 /opt/libLLVM-lookalike/bin/python3",
    ])
    assert compiler_mappings(maps) == [(0x7f0000000000, 0x7f0000100000), (0x7f0000100000, 0x7f0000900000),
                                       (0x7f0001000000, 0x7f0001200000)]


def test_read_only_after_an_error_stays_latched_without_mountinfo_or_new_errors():
    """6.12-6.14: ext4's emergency_ro is in no mountinfo, and ext4 drops every
    later error: only the read_only event tells, and top must keep telling."""
    m = model()
    row = next(r for r in m.rows if r.mount.mount_point == "/srv/data")
    assert not row.emergency_ro
    m.apply(ev(), NOW)
    m.apply(ev(typ=EventType.READ_ONLY, dev="7:0", mount_point="/srv/data", rung="kprobe",
               extra={"read_only": True, "flag": "emergency_ro", "cause": "error", "caused_by_seq": 1}), NOW)
    for _ in range(3):  # mountinfo still says rw; the screen refreshes; counters are cleared
        m.update_mounts(mounts(), STATS)
        m.key("c")
    row = next(r for r in m.rows if r.mount.mount_point == "/srv/data")
    assert row.emergency_ro and row.read_only and m.supers["7:0"].ro_after_error == "emergency_ro"
    assert m.supers["7:0"].errors == 0  # the latch is no counter
    m.apply(ev(cls=EventClass.INFO, typ=EventType.READ_ONLY, dev="7:0", mount_point="/srv/data",
               extra={"read_only": False, "cause": "remount"}), NOW)
    assert not next(r for r in m.rows if r.mount.mount_point == "/srv/data").emergency_ro
