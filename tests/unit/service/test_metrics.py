"""FsMetrics: events in, exposition out (no kernel: mounts and events are made here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fsev.errors import FsevError
from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount
from fsev.probes.ladder import Plan, Rung, RungKind
from fsev.service import metrics as metrics_mod
from fsev.service.metrics import MAX_FUNCTIONS, FsMetrics
from fsev.service.metrics_serve import MetricsEndpoint, TextfileWriter
from fsev.session.trace import Watch
from fsev.thresholds.arming import ArmedMount
from fsev.thresholds.levels import Levels

ALL = frozenset(EventClass)


def mount(mp: str, dev: str = "7:0", fs_type: str = "ext4", source: str = "/dev/loop0",
          options: tuple[str, ...] = ("rw",), super_options: tuple[str, ...] = ("rw",)) -> Mount:
    major, minor = (int(x) for x in dev.split(":"))
    return Mount(mnt_id=40, parent_id=1, major=major, minor=minor, root="/", mount_point=mp, options=options,
                 fs_type=fs_type, source=source, super_options=super_options)


def watch(*mounts: Mount, armed: tuple[ArmedMount, ...] = ()) -> Watch:
    return Watch(tuple((m, ALL) for m in mounts), armed)


def event(type: EventType, m: Mount | None, **kw: Any) -> Event:
    extra = kw.pop("extra", {})
    ev = Event(seq=1, ts_ns=1, wall_time=kw.pop("wall_time", 1700000000.5), cls=EventClass.ERR, type=type,
               rung=kw.pop("rung", "tracepoint"), dev=m.dev if m else kw.pop("dev", None),
               mount_point=m.mount_point if m else None, fs_type=m.fs_type if m else None,
               source=m.source if m else None, **kw)
    ev.extra.update(extra)
    return ev


def samples(fm: FsMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(fm)
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(fm: FsMetrics, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, lbl), v in samples(fm).items() if n == name and want <= set(lbl)]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


@pytest.fixture
def fm() -> Iterator[FsMetrics]:
    m = FsMetrics(Plan((Rung("ext4_error", RungKind.TRACEPOINT),)), lambda: {"listener": 3, "journal": 2},
                  start=False, log=lambda msg: None)
    yield m
    m.close()


DATA = mount("/data")


def test_errors_counted_by_function_with_node_exporter_labels(fm: FsMetrics) -> None:
    fm.set_watch(watch(DATA))
    for fn in ("trigger_test_error", "trigger_test_error", "htree_dirblock_to_tree"):
        fm.observe(event(EventType.FS_ERROR, DATA, function=fn))
    lbl = {"device": "/dev/loop0", "mountpoint": "/data", "fstype": "ext4"}
    assert value(fm, "fsev_filesystem_errors_total", function="trigger_test_error", **lbl) == 2
    assert value(fm, "fsev_filesystem_errors_total", function="htree_dirblock_to_tree") == 1
    assert value(fm, "fsev_filesystem_last_error_timestamp_seconds", **lbl) == 1700000000.5


def test_the_rest(fm: FsMetrics) -> None:
    fm.set_watch(watch(DATA))
    fm.observe(event(EventType.ENOSPC, DATA, extra={"count": 1}))
    fm.observe(event(EventType.ENOSPC, DATA, extra={"count": 9999, "storm": True}))
    fm.observe(event(EventType.WB_ERROR, DATA))
    fm.observe(event(EventType.BLOCK_IO_ERROR, DATA, extra={"disk": "259:999999"}))
    fm.observe(event(EventType.DEVICE_ERRORS, DATA, extra={"counters": {"corruption_errs": 2}, "device": "/dev/sdz1",
                                                           "devid": 1, "totals": {"corruption_errs": 9}}))
    fm.observe(event(EventType.DEVICE_ERRORS, DATA, extra={"counters": {"corruption_errs": 1, "write_io_errs": 4},
                                                           "device": "/dev/sdz1", "devid": 1}))
    fm.observe(event(EventType.LOSS, None, rung="ringbuf", lost=7))
    fm.observe(event(EventType.LOSS, None, rung="listener", lost=100))  # not the kernel's
    fm.observe(event(EventType.UMOUNT, DATA))
    assert value(fm, "fsev_enospc_total") == 10000
    assert value(fm, "fsev_writeback_errors_total") == 1
    assert value(fm, "fsev_unmounts_total") == 1
    assert value(fm, "fsev_block_io_errors_total", device="259:999999") == 1  # no /sys/dev/block name
    # the increases fsev saw, not the totals (the baseline predates fsev)
    assert value(fm, "fsev_device_errors_total", device="/dev/sdz1", counter="corruption_errs") == 3
    assert value(fm, "fsev_device_errors_total", device="/dev/sdz1", counter="write_io_errs") == 4
    assert value(fm, "fsev_events_lost_total", stage="kernel") == 7
    assert value(fm, "fsev_events_lost_total", stage="listener") == 3
    assert value(fm, "fsev_events_lost_total", stage="journal") == 2
    assert value(fm, "fsev_probe_rung_info", point="ext4_error", rung="tracepoint") == 1
    assert value(fm, "fsev_up") == 1
    assert value(fm, "fsev_build_info") == 1


def test_readonly_latched_by_cause_and_cleared_by_read_write(fm: FsMetrics) -> None:
    bind = mount("/data2")  # a second mount of the same superblock
    fm.set_watch(watch(DATA, bind))
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="error") == 0
    fm.observe(event(EventType.READ_ONLY, DATA, extra={"read_only": True, "flag": "emergency_ro", "cause": "error"}))
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="error") == 1
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data2", cause="error") == 1  # the superblock's
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="admin") == 0
    fm.set_watch(watch(DATA, bind))  # a mount-table change: the latch stays (mountinfo may show nothing)
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="error") == 1
    fm.observe(event(EventType.READ_ONLY, DATA, extra={"read_only": False, "flag": "sb_rdonly", "cause": "remount"}))
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="error") == 0
    fm.observe(event(EventType.READ_ONLY, bind, extra={"read_only": True, "flag": "mnt_readonly", "cause": "remount"}))
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data2", cause="admin") == 1
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/data", cause="admin") == 0  # a bind mount's own


def test_an_xfs_shutdown_counts_and_its_read_only_state_latches_as_error(fm: FsMetrics) -> None:
    x = mount("/x", "7:1", fs_type="xfs", source="/dev/loop1")
    fm.set_watch(watch(x))
    lbl = {"device": "/dev/loop1", "mountpoint": "/x", "fstype": "xfs"}
    assert value(fm, "fsev_filesystem_shutdowns_total", **lbl) == 0
    fm.observe(event(EventType.FS_ERROR, x, function=None, extra={"health": "sick", "scope": "inode"}))
    fm.observe(event(EventType.SHUTDOWN, x, extra={"reasons": ["metadata_io"], "file": "fs/xfs/xfs_trans_buf.c"}))
    fm.observe(event(EventType.READ_ONLY, x, extra={"read_only": True, "flag": "shutdown", "cause": "error",
                                                    "caused_by_seq": 2}))
    assert value(fm, "fsev_filesystem_errors_total", function="unknown", **lbl) == 1
    assert value(fm, "fsev_filesystem_shutdowns_total", **lbl) == 1
    assert value(fm, "fsev_filesystem_readonly", cause="error", **lbl) == 1
    assert value(fm, "fsev_filesystem_recorded_errors", **lbl) is None  # ext4's errors_count only


def test_readonly_at_start_from_mountinfo(fm: FsMetrics) -> None:
    fm.set_watch(watch(mount("/e", super_options=("ro", "emergency_ro")), mount("/r", "7:1", options=("ro",))))
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/e", cause="error") == 1
    assert value(fm, "fsev_filesystem_readonly", mountpoint="/r", cause="admin") == 1


def armed(m: Mount, l1: int, l2: int | None) -> ArmedMount:
    return ArmedMount(mount=m, levels=Levels(l1, l2), point=None, rung=RungKind.POLLED,  # type: ignore[arg-type]
                      block_size=4096, total_blocks=1000, band=0, lag=0)


def test_thresholds_active_and_crossings(fm: FsMetrics) -> None:
    tmp = mount("/scratch", "0:50", "tmpfs", "tmpfs")
    fm.set_watch(watch(tmp, armed=(armed(tmp, 100, 50),)))
    assert value(fm, "fsev_threshold_active", level="L2") == 0
    assert value(fm, "fsev_filesystem_size_bytes") == 4096 * 1000
    assert value(fm, "fsev_filesystem_recorded_errors") is None  # not ext4
    for lvl, d, avail in (("L1", "down", 99), ("L2", "down", 40), ("L2", "up", 60)):
        fm.observe(event(EventType.THRESHOLD, tmp, level=lvl, direction=d, avail_blocks=avail))
    assert value(fm, "fsev_threshold_active", level="L1") == 1
    assert value(fm, "fsev_threshold_active", level="L2") == 0
    assert value(fm, "fsev_threshold_crossings_total", level="L2", direction="down") == 1
    assert value(fm, "fsev_threshold_crossings_total", level="L2", direction="up") == 1
    assert value(fm, "fsev_threshold_crossings_total", level="L1", direction="up") == 0
    assert value(fm, "fsev_filesystem_avail_bytes") == 60 * 4096
    fm.set_watch(watch(tmp))  # levels removed: their series go
    assert value(fm, "fsev_threshold_active", level="L1") is None


def test_pseudo_filesystems_have_no_series(fm: FsMetrics) -> None:
    fm.set_watch(watch(DATA, mount("/proc", "0:22", "proc", "proc"), mount("/net", "0:60", "autofs", "auto.net")))
    assert {dict(lbl)["mountpoint"] for (n, lbl) in samples(fm) if n == "fsev_unmounts_total"} == {"/data"}


def test_functions_bounded_per_mount(fm: FsMetrics) -> None:
    fm.set_watch(watch(DATA))
    for i in range(MAX_FUNCTIONS + 10):
        fm.observe(event(EventType.FS_ERROR, DATA, function=f"f{i}"))
    names = {dict(lbl)["function"] for (n, lbl) in samples(fm) if n == "fsev_filesystem_errors_total"}
    assert len(names) == MAX_FUNCTIONS and "other" in names
    assert value(fm, "fsev_filesystem_errors_total", function="other") == 11
    fm.observe(event(EventType.FS_ERROR, DATA, function="f0"))  # one it has: still its own
    assert value(fm, "fsev_filesystem_errors_total", function="f0") == 2


def test_gone_mounts_dropped_after_the_grace(fm: FsMetrics) -> None:
    fm.set_watch(watch(DATA))
    fm.observe(event(EventType.FS_ERROR, DATA, function="x"))
    fm.observe(event(EventType.UMOUNT, DATA))
    fm.set_watch(watch())
    now = time.monotonic()
    fm.housekeeping(now + fm.grace_s - 5)
    assert value(fm, "fsev_unmounts_total", mountpoint="/data") == 1  # the last increments are scraped
    fm.set_watch(watch(DATA))  # back within the grace: counters go on
    fm.set_watch(watch())
    fm.housekeeping(time.monotonic() + fm.grace_s + 1)
    assert value(fm, "fsev_unmounts_total", mountpoint="/data") is None
    assert value(fm, "fsev_filesystem_errors_total") is None


def test_mounts_bounded_gone_first_then_refused() -> None:
    logs: list[str] = []
    fm = FsMetrics(None, start=False, log=logs.append, max_mounts=3)
    ms = [mount(f"/m{i}", f"0:{60 + i}", "tmpfs", "tmpfs") for i in range(6)]
    fm.set_watch(watch(*ms[:3]))
    fm.set_watch(watch(*ms[1:3]))  # /m0 gone
    fm.set_watch(watch(*ms[1:4]))  # /m3 takes /m0's place
    assert value(fm, "fsev_unmounts_total", mountpoint="/m0") is None
    assert value(fm, "fsev_unmounts_total", mountpoint="/m3") == 0
    fm.set_watch(watch(*ms[1:6]))  # /m4, /m5: refused, one line
    assert value(fm, "fsev_unmounts_total", mountpoint="/m4") is None
    assert len(logs) == 1 and "/m4" in logs[0]
    fm.observe(event(EventType.FS_ERROR, ms[4], function="x"))  # ignored, no crash
    assert len([k for k in samples(fm) if k[0] == "fsev_unmounts_total"]) == 3


def test_hostile_names_give_valid_exposition(fm: FsMetrics) -> None:
    names = ['/mnt/q"uote', "/mnt/new\nline", "/mnt/back\\slash", "/mnt/\udcff-not-utf8", "/mnt/} {x=\"y\"}"]
    ms = [mount(n, f"0:{70 + i}", "tmpfs", 'tmp"fs\n') for i, n in enumerate(names)]
    fm.set_watch(watch(*ms))
    for m in ms:
        fm.observe(event(EventType.FS_ERROR, m, function='f"\n\\'))
    got = {dict(lbl)["mountpoint"] for (n, lbl) in samples(fm) if n == "fsev_filesystem_errors_total"}
    assert got == set(names[:3] + ["/mnt/\\xff-not-utf8", names[4]])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(fm)
    r = subprocess.run([promtool, "check", "metrics"], input=generate_latest(reg), capture_output=True)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()


def test_statfs_sampled_off_the_scrape_and_a_hang_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_mod, "STUCK_S", 0.2)
    release = threading.Event()

    class St:
        f_frsize, f_blocks, f_bavail = 4096, 1000, 250

    def statfs(path: str) -> Any:
        if path == "/hung":
            release.wait(30)
        return St()

    fm = FsMetrics(None, statfs=statfs, sample_s=0.05, log=lambda m: None)
    try:
        fm.set_watch(watch(mount("/ok", "0:80", "tmpfs", "tmpfs"), mount("/hung", "0:81", "fuse", "x")))
        time.sleep(0.4)
        t0 = time.monotonic()
        assert value(fm, "fsev_filesystem_stat_stuck", mountpoint="/hung") == 1
        assert time.monotonic() - t0 < 0.1
        assert value(fm, "fsev_filesystem_stat_stuck", mountpoint="/ok") == 0
        assert value(fm, "fsev_filesystem_avail_bytes", mountpoint="/ok") == 250 * 4096
        assert value(fm, "fsev_filesystem_avail_bytes", mountpoint="/hung") is None
        release.set()
        time.sleep(0.2)
        assert value(fm, "fsev_filesystem_stat_stuck", mountpoint="/hung") == 0
        assert value(fm, "fsev_filesystem_size_bytes", mountpoint="/hung") == 4096 * 1000
    finally:
        release.set()
        fm.close()


def test_recorded_errors_read_from_sysfs_not_at_scrape(tmp_path: Any, fm: FsMetrics) -> None:
    (tmp_path / "dev" / "7:0").parent.mkdir()
    os.symlink("../../devices/virtual/block/loop0", tmp_path / "dev" / "7:0")
    (tmp_path / "ext4" / "loop0").mkdir(parents=True)
    count = tmp_path / "ext4" / "loop0" / "errors_count"
    count.write_text("4\n")
    fm._sysfs, fm._sys_dev_block = str(tmp_path / "ext4"), str(tmp_path / "dev")
    fm.set_watch(watch(DATA))
    assert value(fm, "fsev_filesystem_recorded_errors") is None  # not read at the scrape
    fm.housekeeping()
    assert value(fm, "fsev_filesystem_recorded_errors") == 4
    count.write_text("5\n")
    fm.observe(event(EventType.FS_ERROR, DATA, function="x"))
    fm.housekeeping()
    assert value(fm, "fsev_filesystem_recorded_errors") == 4  # ext4 counts it a moment later
    fm.housekeeping(time.monotonic() + 1)
    assert value(fm, "fsev_filesystem_recorded_errors") == 5


# -- serving ---------------------------------------------------------------------


def registry(fm: FsMetrics) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(fm)
    return reg


def test_endpoint_serves_and_survives_a_scraper_that_hangs_up(fm: FsMetrics) -> None:
    import socket

    fm.set_watch(watch(DATA))
    ep = MetricsEndpoint(("127.0.0.1", 0), registry(fm)).start()
    try:
        url = f"http://127.0.0.1:{ep.port}/metrics"
        for _ in range(20):  # hang up before the answer, or in the middle of it
            s = socket.create_connection(("127.0.0.1", ep.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(10)
            s.close()
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'fsev_up 1.0' in body and 'process_' not in body and 'python_' not in body
    finally:
        ep.close()


def test_endpoint_address_in_use_is_one_line() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(FsevError) as e:
            MetricsEndpoint(("127.0.0.1", s.getsockname()[1]), CollectorRegistry())
        assert "cannot listen" in str(e.value) and "\n" not in str(e.value)
    finally:
        s.close()


def test_textfile_missing_directory_logged_once_and_retried(fm: FsMetrics) -> None:
    d = tempfile.mkdtemp(prefix="fsev-textfile-")
    target = os.path.join(d, "later")
    logs: list[str] = []
    tw = TextfileWriter(target, registry(fm), logs.append, interval=0.05)
    try:
        time.sleep(0.3)
        assert len(logs) == 1 and "No such file or directory" in logs[0]
        os.mkdir(target)
        deadline = time.monotonic() + 5
        while not os.path.exists(os.path.join(target, "fsev.prom")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "fsev_up 1.0" in open(os.path.join(target, "fsev.prom")).read()
        assert len(logs) == 2 and "written again" in logs[1]
        assert [n for n in os.listdir(target)] == ["fsev.prom"]  # no temporary file left
        fm.up = False
    finally:
        tw.close()
        shutil.rmtree(d)
    assert tw.writes >= 2


def test_textfile_read_only_directory(fm: FsMetrics) -> None:
    d = tempfile.mkdtemp(prefix="fsev-textfile-")
    logs: list[str] = []
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "fsev-ro", d], check=True)
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        os.rmdir(d)
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        tw = TextfileWriter(d, registry(fm), logs.append, interval=0.05)
        time.sleep(0.3)
        tw.close()
        assert len(logs) == 1 and "Read-only file system" in logs[0]
    finally:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_a_point_with_nothing_to_watch_is_dormant_until_its_filesystem_is_watched() -> None:
    """fserror before 7.0 misses nothing; the XFS points planned without the
    xfs module miss nothing until an XFS filesystem is watched, then they are
    blind to it (FsevProbeRungDegraded fires: dormant="false")."""
    plan = Plan((Rung("ext4_error", RungKind.TRACEPOINT),
                 Rung("fserror", RungKind.NONE, absent="fserror_report is Linux 7.0+"),
                 Rung("xfs_error", RungKind.NONE, absent="the xfs module is not loaded"),
                 Rung("block_io_error", RungKind.NONE)))
    fm = FsMetrics(plan, start=False, log=lambda msg: None)
    try:
        fm.set_watch(watch(DATA))
        assert value(fm, "fsev_probe_rung_info", point="ext4_error", rung="tracepoint", dormant="false") == 1
        assert value(fm, "fsev_probe_rung_info", point="fserror", rung="none", dormant="true") == 1
        assert value(fm, "fsev_probe_rung_info", point="xfs_error", rung="none", dormant="true") == 1
        assert value(fm, "fsev_probe_rung_info", point="block_io_error", rung="none", dormant="false") == 1
        fm.set_watch(watch(DATA, mount("/x", dev="7:9", fs_type="xfs", source="/dev/loop9")))
        assert value(fm, "fsev_probe_rung_info", point="xfs_error", rung="none", dormant="false") == 1
        assert value(fm, "fsev_probe_rung_info", point="fserror", rung="none", dormant="true") == 1
    finally:
        fm.close()
