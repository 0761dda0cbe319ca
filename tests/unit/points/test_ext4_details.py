"""ext4 error details on the tracepoint rung (fsev/points/ext4_error_detail.py,
ext4_error_log.py) and the fserror point (fsev/points/fserror.py), on made-up
lines, fanotify events and kernels."""

from __future__ import annotations

import dataclasses

from support.kernels import fake_kernel, raw_record

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.kernel.records import RecordClass, RecordType, Rung
from fsev.linux.fanotify import FAN_FS_ERROR, FanEvent
from fsev.linux.kernel_log import LogLine, parse_line
from fsev.linux.mountinfo import Mount
from fsev.points.ext4_error_detail import FAN_XFS, HOLD_S, Ext4ErrorDetail, plan_ext4_error_detail
from fsev.points.ext4_error_log import RateModel, parse_ext4_error
from fsev.points.fserror import FserrorMonitor, plan_fserror
from fsev.points.registry import ProbePoint, decode, plan_probes
from fsev.probes.ladder import RungKind

DEV = "7:3"


class Clockwork:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeFan:
    fd = 1
    wake_fd = -1

    def __init__(self) -> None:
        self.pending: list[FanEvent] = []
        self.marked: set[str] = set()
        self.refused: dict[str, int] = {}

    def read(self) -> list[FanEvent]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        pass


def _line(text: str, ts_ns: int = 1000, pid: int = 77) -> LogLine:
    got = parse_line(text, ts_ns=ts_ns, pid=pid, tgid=pid, comm="ls")
    assert got is not None
    return dataclasses.replace(got, dev=DEV)


def _mount(mnt_id: int = 44, dev: tuple[int, int] = (7, 3), fs: str = "ext4", mp: str = "/m") -> Mount:
    return Mount(mnt_id, 1, dev[0], dev[1], "/", mp, ("rw",), fs, "/dev/loop3", ("rw",))


def _error(function: str = "htree_dirblock_to_tree", line: int = 1051, ts_ns: int = 900, pid: int = 77) -> Event:
    return Event(0, ts_ns, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev=DEV, pid=pid,
                 function=function, line=line, fs_type="ext4")


def _detail(now: Clockwork, fan: FakeFan | None = None, log: bool = True, last=None,
            rate: RateModel | None = None) -> Ext4ErrorDetail:
    d = Ext4ErrorDetail(fan, now, last_error=lambda dev: last, log=log,  # type: ignore[arg-type]
                        rates=lambda dev: rate or RateModel())
    d._mounts[DEV] = _mount()
    if fan is not None:
        d._fsid_dev[42] = DEV
        d._fan_devs.add(DEV)
    return d


# -- ext4's log lines -----------------------------------------------------------

def test_error_lines_give_inode_and_block_and_std_lines_their_errno():
    a = parse_ext4_error(_line("EXT4-fs error (device loop3): __ext4_get_inode_loc_noinmem:4996: inode #103: "
                               "block 35: comm stat: unable to read itable block"))
    assert a is not None and (a.std, a.inode, a.block) == (False, 103, 35)
    b = parse_ext4_error(_line("EXT4-fs error (device loop3) in ext4_mkdir:3158: IO failure"))
    assert b is not None and (b.std, b.errno) == (True, 5)
    c = parse_ext4_error(_line("EXT4-fs error (device loop3) in ext4_evict_inode:260: error 28"))
    assert c is not None and c.errno == 28
    g = parse_ext4_error(_line("EXT4-fs error (device loop3): ext4_mb_generate_buddy:1218: group 1, "
                               "block bitmap and bg descriptor inconsistent"))
    assert g is not None and (g.inode, g.block) == (None, None)
    assert parse_ext4_error(_line("EXT4-fs warning (device loop3): ext4_end_bio:368: I/O error 10")) is None


def test_the_rate_model_lets_a_burst_through_per_window():
    r = RateModel(interval_ms=1000, burst=3)
    s = 10**9
    assert [r.printed(t) for t in (s, s + 1, s + 2, s + 3, s + 4)] == [True, True, True, False, False]
    assert r.printed(2 * s) and r.printed(2 * s + 1)  # a new window opened at the first call after it
    r.silenced()
    assert not r.printed(2 * s + 2)
    assert RateModel(interval_ms=0, burst=1).printed(5)  # a zero interval: no limit


# -- the kernel log as the source -------------------------------------------------

def test_an_unmarkable_mount_gets_inode_and_block_from_the_log_line():
    now = Clockwork()
    d = _detail(now)  # no fanotify mark, nothing in sysfs (read-only device)
    ev = _error()
    assert d.process(ev) == []  # its line comes right behind it
    d.on_log(_line("EXT4-fs error (device loop3): htree_dirblock_to_tree:1051: inode #12: block 7: comm ls: x"))
    assert d.poll() == [ev]
    assert (ev.inode, ev.block) == (12, 7)
    assert ev.extra == {"inode_source": "kernel_log", "block_source": "kernel_log"}


def test_a_line_of_another_place_or_task_is_not_taken():
    now = Clockwork()
    d = _detail(now)
    ev = _error()
    d.process(ev)
    d.on_log(_line("EXT4-fs error (device loop3): ext4_lookup:1813: inode #5: comm ls: x"))
    d.on_log(_line("EXT4-fs error (device loop3): htree_dirblock_to_tree:1051: inode #6: comm ls: x", pid=78))
    assert d.poll() == []
    now.t += HOLD_S
    assert d.poll() == [ev] and ev.inode is None


def test_past_the_rate_limit_an_error_does_not_wait_for_a_line():
    now = Clockwork()
    d = _detail(now, rate=RateModel(interval_ms=5000, burst=1))
    first, second = _error(ts_ns=1), _error(ts_ns=2)
    assert d.process(first) == []
    d.on_log(_line("EXT4-fs error (device loop3): htree_dirblock_to_tree:1051: inode #12: comm ls: x"))
    assert d.poll() == [first]
    assert d.process(second) == [second]  # ext4 printed no line for it


def test_a_line_that_never_comes_spends_the_window():
    now = Clockwork()
    d = _detail(now, rate=RateModel(interval_ms=5000, burst=10))
    first = _error(ts_ns=1)
    assert d.process(first) == []
    now.t += HOLD_S
    assert d.poll() == [first]
    second = _error(ts_ns=2)
    assert d.process(second) == [second]


# -- std errors, merged errors, orphans --------------------------------------------

def test_a_std_error_line_makes_an_event_that_takes_its_own_fanotify_event():
    now = Clockwork()
    fan = FakeFan()
    d = _detail(now, fan)
    d.on_log(_line("EXT4-fs error (device loop3) in ext4_mkdir:3158: IO failure", ts_ns=5000))
    fan.pending = [FanEvent(FAN_FS_ERROR, 77, fsid=42, error=5, error_count=1)]
    (ev,) = d.poll()
    assert (ev.rung, ev.function, ev.line, ev.errno, ev.pid, ev.ts_ns) == ("kernel_log", "ext4_mkdir", 3158, 5, 77,
                                                                        5000)
    assert ev.extra == {"std_error": True, "errno_source": "kernel_log"}
    assert ev.mount_point == "/m" and ev.fs_type == "ext4"
    now.t += 2 * HOLD_S
    assert d.poll() == [] and not d.holding  # its fanotify event was its own: no second event


def test_a_fanotify_event_no_error_took_is_an_error_of_its_own():
    now = Clockwork()
    fan = FakeFan()
    d = _detail(now, fan)
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, error=30, error_count=3)]
    assert d.poll() == []  # a traced error may still come for it
    now.t += HOLD_S
    (ev,) = d.poll()
    assert (ev.rung, ev.errno, ev.function) == ("fanotify", 30, None)
    assert ev.extra == {"errno_source": "fanotify", "errors_merged": 2}


def test_a_fanotify_event_read_while_the_ring_drops_records_never_stands_alone():
    """Its traced error may be one the ring buffer dropped: the loss event
    counts that one already, and an orphan made of it would count it twice."""
    now = Clockwork()
    fan = FakeFan()
    drops = [0]
    d = _detail(now, fan)
    d._drops = lambda: drops[0]
    drops[0] = 5  # the ring dropped records before this event was read
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, error=117, error_count=4)]
    assert d.poll() == []
    now.t += HOLD_S
    assert d.poll() == [] and d.flush() == []
    assert d.withheld == 4
    now.t += 2 * HOLD_S  # no drop since: the next orphan is an error of its own
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, error=5, error_count=1)]
    assert d.poll() == []
    now.t += HOLD_S
    (ev,) = d.poll()
    assert (ev.rung, ev.errno) == ("fanotify", 5) and d.withheld == 4


def test_an_error_fanotify_merged_says_so():
    now = Clockwork()
    fan = FakeFan()
    d = _detail(now, fan, log=False)
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=12, error=117, error_count=2)]
    a, b = _error(), _error()
    assert d.process(a) == [a] and a.extra == {"errno_source": "fanotify", "inode_source": "fanotify"}
    assert d.process(b) == [b] and b.errno is None and b.extra == {"errno_merged": True}


def test_a_told_error_takes_the_block_the_superblock_recorded_already():
    now = Clockwork()
    fan = FakeFan()
    last = {"func": "ext4_readdir", "line": 263, "errcode": 4, "ino": 2, "block": 1234, "count": 1}
    d = _detail(now, fan, log=False, last=last)
    d._sysfs[DEV] = (now.t, dict(last, errno=74))
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=2, error=74, error_count=1)]
    ev = _error("ext4_readdir", 263)
    assert d.process(ev) == [ev] and ev.block == 1234 and ev.extra["block_source"] == "sysfs"


def test_a_mount_gone_and_a_new_one_on_the_same_device_is_marked_anew():
    d = Ext4ErrorDetail(None, Clockwork(), last_error=lambda dev: None)
    old, new = _mount(44, mp="/nonexistent-a"), _mount(45, mp="/nonexistent-b")
    d._mounts[old.dev] = old
    d._fsid_dev[42] = old.dev
    d._ordinal[old.dev] = 7
    d.watch([new])
    assert d._mounts[DEV] is new and d._fsid_dev == {} and d._ordinal == {}  # the old one is forgotten


def test_a_mount_fanotify_refuses_gets_a_note():
    fan = FakeFan()
    fan.refused["/m"] = 19  # ENODEV
    d = Ext4ErrorDetail(fan, Clockwork(), last_error=lambda dev: None)  # type: ignore[arg-type]
    note = d._refused_note(_mount())
    assert note.startswith("/m (7:3): FAN_FS_ERROR cannot mark it") and "zero fsid" in note


# -- the ladders on made-up kernels ---------------------------------------------------

def test_fserror_is_a_kprobe_rung_where_kallsyms_has_it_and_nothing_before_7_0():
    k70 = fake_kernel(release="7.0.0", kprobes=True, kprobe_functions={"fserror_report"}, fserror=True)
    r = plan_fserror(k70)
    assert r.kind is RungKind.KPROBE and r.targets == ("fserror_report",)
    old = fake_kernel(release="6.12", kprobes=True, kprobe_functions={"__ext4_error"})
    r = plan_fserror(old)
    assert r.kind is RungKind.NONE and "fserror_report" in r.skipped[0] and "7.0" in r.skipped[0]
    assert r.absent  # nothing to hook: the metric calls it dormant, no alert
    here = fake_kernel(kprobes_why_not="no CONFIG_KPROBES", tracepoints={"ext4:ext4_error"}, fanotify_fs_error=True,
                       fserror=True)
    plan = plan_probes(here)
    assert plan.kind(ProbePoint.FSERROR) is None
    assert not plan_fserror(here).absent  # 7.0 without kprobes: there, and fsev cannot hook it
    # 7.0 without kprobes: FAN_FS_ERROR reports XFS too, so XFS mounts are marked.
    assert FAN_XFS in plan_ext4_error_detail(here).targets
    assert FAN_XFS not in plan_ext4_error_detail(dataclasses.replace(here, fserror=False)).targets


def test_an_fserror_record_decodes_to_an_fs_error_with_range_and_type():
    raw = raw_record(type=RecordType.FSERROR, cls=RecordClass.ERR, rung=Rung.KPROBE, dev=kernel_dev(7, 3),
                     pid=9, ino=12, err=5, level=4, value=8192, mntns=4096, fields=1 | 2, func=b"xfs")
    ev = decode(bytes(raw), 0, Clock())
    assert ev.type is EventType.FS_ERROR and ev.function == "fserror_report" and (ev.errno, ev.inode) == (5, 12)
    assert ev.extra == {"_fserror": "xfs", "error_type": "directio_write", "pos": 8192, "len": 4096,
                        "errno_source": "kprobe", "inode_source": "kprobe"}


def test_an_fserror_report_inside_an_ext4_error_is_folded_into_it_and_others_stand_alone():
    m = FserrorMonitor()
    ext4 = Event(0, 1000, 0.0, EventClass.ERR, EventType.FS_ERROR, "kprobe", dev=DEV, pid=9, errno=74)
    assert m.process(ext4) == [ext4]

    def report(fs: str, typ: str, pid: int = 9, ts: int = 2000) -> Event:
        return Event(0, ts, 0.0, EventClass.ERR, EventType.FS_ERROR, "kprobe", dev=DEV, pid=pid, errno=74,
                     extra={"_fserror": fs, "error_type": typ})

    assert m.process(report("ext4", "metadata")) == [] and m.folded == 1
    io = report("ext4", "directio_read")  # iomap's, not an ext4 error
    assert m.process(io) == [io]
    other_task = report("ext4", "metadata", pid=10)
    assert m.process(other_task) == [other_task]
    xfs_alone = report("xfs", "metadata", pid=11)  # no XFS error of that task before it
    assert m.process(xfs_alone) == [xfs_alone]
    xfs = Event(0, 1500, 0.0, EventClass.ERR, EventType.FS_ERROR, "kprobe", dev=DEV, pid=12)  # xfs_error's
    assert m.process(xfs) == [xfs]
    assert m.process(report("xfs", "metadata", pid=12)) == [] and m.folded == 2
    late = report("ext4", "metadata", ts=1000 + 2 * 10**9)
    assert m.process(late) == [late]


def test_a_fanotify_event_read_ahead_of_a_lagging_ring_waits_for_its_traced_error():
    now = Clockwork()
    fan = FakeFan()
    d = _detail(now, fan, log=False)
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, error=117, error_count=1)]
    d.poll()  # read at t=100 s; the ring still holds older records
    for i in range(5):  # fsev works through its backlog: events the kernel sent before t
        now.t += HOLD_S
        other = Event(0, int(90e9) + i, 0.0, EventClass.INFO, EventType.UMOUNT, "tracepoint", dev="8:1")
        assert d.process(other) == [other]
        assert d.poll() == []
    ev = _error(ts_ns=int(95e9))  # the traced error it belongs to, at last
    assert d.process(ev) == [ev] and ev.extra == {"errno_source": "fanotify"}
    assert not d.holding


def test_the_rate_limit_interval_in_sysfs_is_read_as_jiffies(tmp_path):
    """ext4's err_ratelimit_interval_ms holds jiffies (5 * HZ by default): 1250
    on a HZ=250 kernel is ext4's 5 s, not 1.25 s (fsev waited for lines that
    never came, 0.5 s each, when it took the number as ms)."""
    import gzip

    from fsev.points.ext4_error_log import kernel_hz, rate_model

    d = tmp_path / "loop9"
    d.mkdir()
    (d / "err_ratelimit_interval_ms").write_text("1250\n")
    (d / "err_ratelimit_burst").write_text("10\n")
    assert rate_model("loop9", str(tmp_path), hz=250).interval_ns == 5_000_000_000
    assert rate_model("loop9", str(tmp_path), hz=1000).interval_ns == 1_250_000_000
    assert rate_model("loop9", str(tmp_path), hz=None).interval_ns == 1_250_000_000  # HZ unknown: as before
    assert rate_model("missing", str(tmp_path), hz=250).interval_ns == 5_000_000_000  # ext4's default
    r = rate_model("loop9", str(tmp_path), hz=250)
    assert [r.printed(i * 100_000_000) for i in range(12)] == [True] * 10 + [False] * 2  # 1.2 s: one window
    assert r.printed(5_000_000_000)  # 5 s on: the next window
    cfg = tmp_path / "config.gz"
    with gzip.open(cfg, "wt") as f:
        f.write("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n")
    plain = tmp_path / "config"
    plain.write_text("CONFIG_HZ=1000\n")
    assert kernel_hz((str(cfg),)) == 250
    assert kernel_hz((str(tmp_path / "none.gz"), str(plain))) == 1000
    assert kernel_hz((str(tmp_path / "none"),)) is None
