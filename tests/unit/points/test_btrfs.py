"""The btrfs points, pure logic (no root): ladders on made-up kernels, the
kprobe program's switches, decoding, btrfs's log lines, the ioctl and sysfs
formats, the counter deltas and the schedule of readings."""

from __future__ import annotations

import struct

import pytest
from support.kernels import fake_kernel, raw_record

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.kernel.records import RecordClass, RecordType, Rung
from fsev.linux import btrfs as b
from fsev.linux.kernel_log import LogLine, parse_line
from fsev.linux.mountinfo import MountTable, parse_mountinfo
from fsev.points.btrfs_dev_stats import PERIOD_S, PROMPT_DELAYS_S, CounterDeltas, DevStatsMonitor, plan_btrfs_dev_stats
from fsev.points.btrfs_error import BtrfsLogReader, parse_btrfs_error, plan_btrfs_error
from fsev.points.btrfs_fs import BtrfsMounts
from fsev.points.registry import ProbePoint, decode, kprobe_attachments, plan_probes, preamble, required_offsets
from fsev.probes.ladder import Plan, RungKind
from fsev.probes.point import SessionContext
from fsev.probes.program import ProgramConfig

CONSOLE = frozenset({"printk:console"})
HERE = fake_kernel(release="6.18", kprobes=False, kprobes_why_not="kernel built without CONFIG_KPROBES",
                   tracepoints=CONSOLE)
BTRFS_FNS = frozenset({"__btrfs_handle_fs_error", "__btrfs_abort_transaction"})
DEV_STAT_FN = "btrfs_dev_stat_inc_and_print"
DEBIAN = fake_kernel(release="6.1.0-13-amd64", kprobes=True, kprobe_functions=BTRFS_FNS, tracepoints=CONSOLE)
ALL = frozenset(RecordClass(c) for c in (1, 2, 3, 4))


# -- ladders ---------------------------------------------------------------------

def test_btrfs_error_ladder_kprobes_else_the_kernel_log_else_none():
    k = plan_btrfs_error(DEBIAN)
    assert k.kind is RungKind.KPROBE and k.targets == ("__btrfs_handle_fs_error", "__btrfs_abort_transaction")
    assert "checksum failures from the kernel log" in k.gives
    here = plan_btrfs_error(HERE)
    assert here.kind is RungKind.TRACEPOINT and here.targets == ("printk:console",)
    assert "CONFIG_KPROBES" in here.skipped[0] and "rate-limited" in here.misses
    # btrfs not loaded (a module on Debian): its functions are not traceable yet
    unloaded = plan_btrfs_error(fake_kernel(kprobes=True, tracepoints=CONSOLE))
    assert unloaded.kind is RungKind.TRACEPOINT and "__btrfs_handle_fs_error" in unloaded.skipped[0]
    # an abort without its own kprobe still comes through __btrfs_handle_fs_error
    old = plan_btrfs_error(fake_kernel(kprobes=True, kprobe_functions={"__btrfs_handle_fs_error"}))
    assert old.targets == ("__btrfs_handle_fs_error",) and "checksum failures" in old.misses
    assert plan_btrfs_error(fake_kernel()).kind is RungKind.NONE


def test_btrfs_dev_stats_kprobe_sign_else_polled_and_says_what_it_misses():
    r = plan_btrfs_dev_stats(HERE)
    assert r.kind is RungKind.POLLED and "error_stats" in r.targets[0]
    assert "ENOSPC" in r.misses and "baseline" in r.misses and "CONFIG_KPROBES" in r.skipped[0]
    k = plan_btrfs_dev_stats(fake_kernel(kprobes=True, kprobe_functions={"btrfs_dev_stat_inc_and_print"}))
    assert k.kind is RungKind.KPROBE and k.targets[0] == "btrfs_dev_stat_inc_and_print" and "task" in k.gives
    assert plan_btrfs_dev_stats(DEBIAN).kind is RungKind.POLLED  # btrfs not loaded: no such symbol yet


def test_the_kprobe_programs_are_switched_on_with_the_btf_offsets_and_their_attachments():
    loaded = fake_kernel(kprobes=True, kprobe_functions=BTRFS_FNS | {DEV_STAT_FN}, tracepoints=CONSOLE)
    plan = plan_probes(loaded, {ProbePoint.BTRFS_ERROR, ProbePoint.BTRFS_DEV_STATS})
    cfg = ProgramConfig(classes=ALL, watch_all=True)
    offs = {s: 8 for s in required_offsets(plan, cfg)}
    assert {"btrfs_fs_info.sb", "btrfs_trans_handle.fs_info", "super_block.s_dev", "super_block.s_flags",
            "btrfs_device.fs_info", "btrfs_device.devid"} <= set(offs)
    text = preamble(plan, cfg, offs)
    assert "#define FSEV_BTRFS_ERROR_KPROBE 1" in text and "#define FSEV_BTRFS_DEV_STATS_KPROBE 1" in text
    assert set(kprobe_attachments(plan, cfg)) == {("__btrfs_handle_fs_error", "kp___btrfs_handle_fs_error"),
                                                  ("__btrfs_abort_transaction", "kp___btrfs_abort_transaction"),
                                                  (DEV_STAT_FN, f"kp_{DEV_STAT_FN}")}
    here = plan_probes(HERE, {ProbePoint.BTRFS_ERROR, ProbePoint.BTRFS_DEV_STATS})
    assert "#define FSEV_BTRFS_ERROR_KPROBE 0" in preamble(here, cfg, {})
    assert "#define FSEV_BTRFS_DEV_STATS_KPROBE 0" in preamble(here, cfg, {})
    assert not kprobe_attachments(here, cfg) and not required_offsets(here, cfg)


# -- decoding ----------------------------------------------------------------------

def test_kprobe_records_decode_as_fs_errors_with_the_abort_flag():
    def rec(value):
        return bytes(raw_record(type=RecordType.BTRFS_ERROR, cls=RecordClass.ERR, rung=Rung.KPROBE,
                                dev=kernel_dev(0, 55), err=5, line=1181, func=b"__btrfs_run_delayed_items",
                                fields=1 | 8 | 16, value=value, pid=9, comm=b"sync"))

    ev = decode(rec(1), 0, Clock())
    assert ev.type is EventType.FS_ERROR and ev.rung == "kprobe" and ev.dev == "0:55"
    assert (ev.function, ev.line, ev.errno, ev.comm) == ("__btrfs_run_delayed_items", 1181, 5, "sync")
    assert ev.extra == {"transaction_abort": True}
    assert decode(rec(0), 0, Clock()).extra == {}


# -- btrfs's log lines ---------------------------------------------------------------

def line(text: str, pid: int = 7, ts: int = 1_000) -> LogLine:
    got = parse_line(text, ts_ns=ts, pid=pid, tgid=pid, comm="sync")
    assert got is not None
    return got


@pytest.mark.parametrize("text, want", [
    ("BTRFS: error (device loop1 state A) in __btrfs_run_delayed_items:1181: errno=-5 IO failure",
     dict(function="__btrfs_run_delayed_items", line=1181, errno=5, message="IO failure", handled=True)),
    ("BTRFS: error (device sda2 state EA) in btrfs_finish_one_ordered:3205: errno=-28 No space left (x)",
     dict(function="btrfs_finish_one_ordered", line=3205, errno=28, message="No space left (x)", handled=True)),
    ("BTRFS warning (device loop0): csum failed root 5 ino 257 off 4096 csum 0x686428c8 expected csum 0xba3e472e "
     "mirror 2", dict(inode=257, message="csum failed", extra=(("root", 5), ("offset", 4096), ("mirror", 2)))),
    # cut at the record's text length: no mirror
    ("BTRFS warning (device nvme0n1p2): csum failed root 256 ino 1234567 off 8192 csum 0x68642",
     dict(inode=1234567, message="csum failed", extra=(("root", 256), ("offset", 8192)))),
    ("BTRFS warning (device loop1): checksum verify failed on logical 30507008 mirror 1 wanted 0xa356174e found",
     dict(message="checksum verify failed", extra=(("logical", 30507008), ("mirror", 1)))),
    ("BTRFS critical (device loop0): corrupt leaf: root=5 block=30507008 slot=3, bad key order",
     dict(message="corrupt leaf: root=5 block=30507008 slot=3, bad key order")),
])
def test_error_lines_parse(text, want):
    got = parse_btrfs_error(line(text))
    assert got is not None
    for k, v in want.items():
        assert getattr(got, k) == v, k


@pytest.mark.parametrize("text", [
    "BTRFS error (device loop0): bdev /dev/loop0 errs: wr 1, rd 0, flush 0, corrupt 0, gen 0",  # the counters
    "BTRFS info (device loop1 state EA): forced readonly",
    "BTRFS warning (device loop1 state EA): Skipping commit of aborted transaction.",
    "BTRFS info (device loop1): read error corrected: ino 0 off 30507008 (dev /dev/loop1 sector 75968)",
    "BTRFS error (device loop1 state A): Transaction aborted (error -5)",  # the abort marker: not an error itself
])
def test_other_lines_are_no_errors(text):
    assert parse_btrfs_error(line(text)) is None


TABLE = "\n".join([
    r"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    r"50 27 0:55 / /mnt/b rw,relatime - btrfs /dev/loop1 rw,subvolid=5,subvol=/",
    r"51 27 0:55 /sub /mnt/sub rw,relatime - btrfs /dev/loop1 rw,subvolid=256,subvol=/sub",
    r"52 27 0:56 / /mnt/other rw,relatime - btrfs /dev/loop2 rw,subvolid=5,subvol=/",
])
FS = {"/mnt/b": b.Filesystem("aaaa", (b.Member(1, "/dev/loop1", "7:1"), b.Member(2, "/dev/loop3", "7:3"))),
      "/mnt/other": b.Filesystem("bbbb", (b.Member(1, "/dev/loop2", "7:2"),))}


class Clocked:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def context(now: Clocked, watched=("/mnt/b", "/mnt/sub")) -> SessionContext:
    table = MountTable(parse_mountinfo(TABLE))
    plan = Plan((plan_btrfs_error(HERE), plan_btrfs_dev_stats(HERE)))
    clock = Clock()
    return SessionContext(plan=plan, classes=frozenset({EventClass.ERR}), table=table, clock=clock, watched=[],
                          probes=None, now=now, make_event=clock.user_event,
                          mount_watched=lambda m: m.mount_point in watched)


def mounts_of(ctx: SessionContext, reads: list[str] | None = None) -> BtrfsMounts:
    def read(mp: str) -> b.Filesystem:
        if reads is not None:
            reads.append(mp)
        return FS[mp]
    return BtrfsMounts(ctx.table, ctx.mount_watched, read)


def test_the_abort_marker_makes_the_next_error_of_that_task_a_transaction_abort():
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=False)
    assert reader(line("BTRFS error (device loop1 state A): Transaction aborted (error -5)", pid=7)) == []
    (abort,) = reader(line("BTRFS: error (device loop1 state A) in __btrfs_run_delayed_items:1181: "
                           "errno=-5 IO failure", pid=7, ts=2_000))
    (later,) = reader(line("BTRFS: error (device loop1 state EA) in cleanup_transaction:2038: errno=-5 IO failure",
                           pid=7, ts=3_000))
    assert abort.extra == {"message": "IO failure", "transaction_abort": True}
    assert (abort.type, abort.cls, abort.rung, abort.dev, abort.mount_point, abort.fs_type) == (
        EventType.FS_ERROR, EventClass.ERR, "kernel_log", "0:55", "/mnt/b", "btrfs")
    assert (abort.function, abort.line, abort.errno, abort.pid, abort.comm, abort.ts_ns) == (
        "__btrfs_run_delayed_items", 1181, 5, 7, "sync", 2_000)
    assert "transaction_abort" not in later.extra  # the marker is used once


def test_a_marker_printed_by_another_task_marks_the_next_error_on_its_device():
    # kernels before 5.15 trace the console's printing: the task is whoever flushed it
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=False)
    reader(line("BTRFS error (device loop1 state A): Transaction aborted (error -5)", pid=99))
    (ev,) = reader(line("BTRFS: error (device loop1 state A) in btrfs_x:1: errno=-5 IO failure", pid=100))
    assert ev.extra.get("transaction_abort") is True
    (ev,) = reader(line("BTRFS: error (device loop1 state A) in btrfs_x:2: errno=-5 IO failure", pid=99))
    assert "transaction_abort" not in ev.extra  # one marker, one abort
    reader(line("BTRFS error (device loop1 state A): Transaction aborted (error -5)", pid=5, ts=1_000))
    (ev,) = reader(line("BTRFS: error (device loop1) in btrfs_x:3: errno=-5 IO failure", pid=5, ts=3_000_000_000))
    assert "transaction_abort" not in ev.extra  # too late to be its line


def test_a_marker_marks_one_error_and_an_errno_that_differs_none():
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=False)
    reader(line("BTRFS error (device loop1 state A): Transaction aborted (error -28)", pid=7))
    (ev,) = reader(line("BTRFS: error (device loop1 state A) in btrfs_x:1: errno=-5 IO failure", pid=7))
    assert "transaction_abort" not in ev.extra
    (ev,) = reader(line("BTRFS: error (device loop1 state A) in btrfs_x:1: errno=-28 No space left", pid=7))
    assert "transaction_abort" not in ev.extra  # the marker was used up by the line after it


def test_the_warn_form_of_the_marker_has_no_device_and_still_marks_the_task():
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=False)
    assert reader(line("BTRFS: Transaction aborted (error -28)", pid=4)) == []
    (ev,) = reader(line("BTRFS: error (device loop1 state A) in btrfs_y:9: errno=-28 No space left", pid=4))
    assert ev.extra.get("transaction_abort") is True and ev.errno == 28


def test_a_member_device_names_its_filesystem_and_unwatched_ones_are_dropped():
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=False)
    csum = "csum failed root 5 ino 257 off 0 csum 0x1 expected csum 0x2 mirror 1"
    # loop3 is the second member of /mnt/b's filesystem: found by its name
    (ev,) = reader(line(f"BTRFS warning (device loop3): {csum}"))
    assert ev.mount_point == "/mnt/b" and ev.inode == 257 and ev.extra["root"] == 5
    assert reader(line(f"BTRFS warning (device loop2): {csum}")) == []  # /mnt/other is not watched
    assert reader(line(f"BTRFS warning (device nosuchdev): {csum}")) == []


def test_on_the_kprobe_rung_the_log_adds_only_what_btrfs_logs_alone():
    ctx = context(Clocked())
    reader = BtrfsLogReader(ctx, mounts_of(ctx), handled_by_kprobe=True)
    assert reader(line("BTRFS: error (device loop1) in btrfs_x:1: errno=-5 IO failure")) == []
    assert reader(line("BTRFS warning (device loop1): csum failed root 5 ino 300 off 0 csum 0x1"))[0].inode == 300


# -- the ioctls and sysfs ----------------------------------------------------------------

def test_ioctl_numbers_are_the_kernels():
    # include/uapi/linux/btrfs.h, as btrfs-progs computes them
    assert b.BTRFS_IOC_GET_DEV_STATS == 0xC4089434
    assert b.BTRFS_IOC_FS_INFO == 0x8400941F
    assert b.BTRFS_IOC_DEV_INFO == 0xD000941E


def test_dev_stats_round_trip_and_only_the_items_the_kernel_filled():
    buf = b.pack_dev_stats(3)
    assert len(buf) == 1032 and struct.unpack_from("=QQQ", buf) == (3, 5, 0)
    struct.pack_into("=QQQ5Q", buf, 0, 3, 5, 0, 1, 2, 3, 4, 5)
    assert b.decode_dev_stats(buf) == {"write_io_errs": 1, "read_io_errs": 2, "flush_io_errs": 3,
                                       "corruption_errs": 4, "generation_errs": 5}
    struct.pack_into("=Q", buf, 8, 2)  # an older kernel that knows two counters
    assert b.decode_dev_stats(buf) == {"write_io_errs": 1, "read_io_errs": 2}


def test_fs_info_and_dev_info_decode():
    fs = bytearray(1024)
    struct.pack_into("=QQ16s", fs, 0, 4, 2, bytes.fromhex("e0bebc43d14f400dbb80efbe70197851"))
    assert b.decode_fs_info(fs) == (4, 2, "e0bebc43-d14f-400d-bb80-efbe70197851")
    dev = bytearray(4096)
    struct.pack_into("=Q", dev, 0, 2)
    dev[3072:3072 + 10] = b"/dev/sdb2\0"
    assert b.decode_dev_info(dev) == (2, "/dev/sdb2")


def test_error_stats_parse():
    text = "write_errs 0\nread_errs 3\nflush_errs 0\ncorruption_errs 12\ngeneration_errs 1\n"
    assert b.parse_error_stats(text) == {"write_io_errs": 0, "read_io_errs": 3, "flush_io_errs": 0,
                                         "corruption_errs": 12, "generation_errs": 1}
    assert b.parse_error_stats("garbage\nwrite_errs x\n") == {}


# -- the counters ---------------------------------------------------------------------------

def test_counter_deltas_baseline_growth_reset_and_forgetting():
    d = CounterDeltas()
    k = ("0:55", 1)
    assert d.update(k, {"read_io_errs": 4, "corruption_errs": 2}) is None  # the baseline
    assert d.baselines[k] == {"read_io_errs": 4, "corruption_errs": 2}
    assert d.update(k, {"read_io_errs": 4, "corruption_errs": 2}) is None
    assert d.update(k, {"read_io_errs": 6, "corruption_errs": 3}) == {"read_io_errs": 2, "corruption_errs": 1}
    assert d.update(k, {"read_io_errs": 0, "corruption_errs": 3}) is None  # reset (btrfs device stats -z)
    assert d.update(k, {"read_io_errs": 1, "corruption_errs": 3}) == {"read_io_errs": 1}
    d.keep(set())
    assert d.update(k, {"read_io_errs": 9, "corruption_errs": 9}) is None  # mounted again: a new baseline


class Counters:
    def __init__(self) -> None:
        self.values: dict[tuple[str, int], dict[str, int]] = {}
        self.reads: list[tuple[str, int]] = []

    def __call__(self, fs: b.Filesystem, mem: b.Member, mp: str) -> dict[str, int]:
        self.reads.append((fs.fsid, mem.devid))
        return dict(self.values.get((fs.fsid, mem.devid), {n: 0 for n in b.COUNTERS}))

    def bump(self, fsid: str, devid: int, name: str, n: int = 1) -> None:
        v = self.values.setdefault((fsid, devid), {c: 0 for c in b.COUNTERS})
        v[name] += n


def monitor(now: Clocked, watched=("/mnt/b", "/mnt/sub"), counters: Counters | None = None):
    ctx = context(now, watched)
    counters = counters or Counters()
    mon = DevStatsMonitor(ctx, mounts_of(ctx), counters)
    return ctx, mon, counters


def test_readings_baseline_then_only_on_the_period_or_after_a_sign():
    now = Clocked()
    ctx, mon, counters = monitor(now)
    assert counters.reads == [("aaaa", 1), ("aaaa", 2)]  # the baseline as the session starts
    assert mon.poll() == [] and counters.reads == [("aaaa", 1), ("aaaa", 2)]  # one filesystem, two mounts
    assert mon.timeout_ms(60_000) == int(PERIOD_S * 1000) + 1  # a long wait (fsev serve) ends for the period
    counters.bump("aaaa", 2, "corruption_errs", 3)
    now.t += 1
    assert mon.poll() == [] and len(counters.reads) == 2  # nothing read between signs
    # btrfs's counters line for loop3: read at the prompt delays
    (reader,) = ctx.log_readers["btrfs"]
    assert reader(line("BTRFS error (device loop3): bdev /dev/loop3 errs: wr 0, rd 0, flush 0, corrupt 3, gen 0")) == []
    assert mon.timeout_ms(500) <= int(PROMPT_DELAYS_S[0] * 1000) + 1
    now.t += PROMPT_DELAYS_S[0]
    (ev,) = mon.poll()
    assert (ev.type, ev.cls, ev.rung, ev.dev, ev.mount_point, ev.fs_type) == (
        EventType.DEVICE_ERRORS, EventClass.ERR, "polled", "0:55", "/mnt/b", "btrfs")
    assert ev.extra == {"counters": {"corruption_errs": 3}, "totals": {**{n: 0 for n in b.COUNTERS},
                                                                       "corruption_errs": 3},
                        "devid": 2, "device": "/dev/loop3"}
    now.t += PROMPT_DELAYS_S[-1]
    assert mon.poll() == []  # the later prompt readings find nothing new
    before = len(counters.reads)
    now.t += PERIOD_S
    counters.bump("aaaa", 1, "write_io_errs")
    (ev,) = mon.poll()  # the period reads every watched filesystem
    assert ev.extra["counters"] == {"write_io_errs": 1} and ev.extra["devid"] == 1
    assert len(counters.reads) == before + 2


def test_a_burst_of_signs_shares_one_round_of_readings():
    now = Clocked()
    ctx, mon, counters = monitor(now)
    mon.poll()
    for _ in range(1000):
        mon.observe(Event(0, 1, 0.0, EventClass.ERR, EventType.FS_ERROR, "kernel_log", dev="0:55", fs_type="btrfs"))
    for _ in range(40):
        now.t += 0.1
        mon.poll()
    assert len(counters.reads) == 2 * (1 + len(PROMPT_DELAYS_S))  # the baseline, then one round


def test_block_io_errors_on_a_member_and_fs_errors_are_signs_other_filesystems_are_not():
    now = Clocked()
    ctx, mon, counters = monitor(now)
    mon.poll()
    n = len(counters.reads)
    mon.observe(Event(0, 1, 0.0, EventClass.ERR, EventType.BLOCK_IO_ERROR, "tracepoint", dev="7:2"))  # /mnt/other
    mon.observe(Event(0, 1, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev="7:0", fs_type="ext4"))
    now.t += 1
    mon.poll()
    assert len(counters.reads) == n
    counters.bump("aaaa", 1, "read_io_errs", 2)
    mon.observe(Event(0, 1, 0.0, EventClass.ERR, EventType.BLOCK_IO_ERROR, "tracepoint", dev="7:1"))
    now.t += PROMPT_DELAYS_S[0]
    (ev,) = mon.poll()
    assert ev.extra["counters"] == {"read_io_errs": 2} and ev.extra["device"] == "/dev/loop1"


def test_a_filesystem_mounted_later_gets_its_baseline_and_unwatched_ones_are_never_read():
    now = Clocked()
    counters = Counters()
    counters.bump("bbbb", 1, "generation_errs", 5)  # before fsev: the baseline, no event
    ctx, mon, counters = monitor(now, watched=("/mnt/b", "/mnt/sub", "/mnt/other"), counters=counters)
    assert mon.poll() == [] and ("bbbb", 1) in counters.reads
    assert mon.deltas.baselines[("0:56", 1)]["generation_errs"] == 5
    ctx2, mon2, counters2 = monitor(Clocked(), watched=("/mnt/b",))
    mon2.poll()
    now.t += PERIOD_S * 3
    mon2.poll()
    assert all(fsid == "aaaa" for fsid, _ in counters2.reads)


def test_a_kprobe_sign_reads_at_once_gives_the_counting_task_and_is_never_emitted():
    now = Clocked()
    ctx, mon, counters = monitor(now)
    mon.poll()
    sign = decode(bytes(raw_record(type=RecordType.BTRFS_DEV_STAT, cls=RecordClass.ERR, rung=Rung.KPROBE,
                                   dev=kernel_dev(0, 55), value=2, arg=3, pid=31, tgid=30, comm=b"kworker/u8:2")),
                  0, Clock())
    assert sign.type is EventType.DEVICE_ERRORS and sign.extra == {"_devid": 2, "_counter": "corruption_errs"}
    assert mon.process(sign) == []
    counters.bump("aaaa", 2, "corruption_errs")
    now.t += PROMPT_DELAYS_S[0]
    (ev,) = mon.poll()
    assert ev.extra["devid"] == 2 and (ev.pid, ev.tgid, ev.comm, ev.rung) == (31, 30, "kworker/u8:2", "polled")
    counters.bump("aaaa", 2, "corruption_errs")
    now.t += PERIOD_S
    (later,) = mon.poll()
    assert later.pid is None  # no sign for this count: no task


def test_at_the_end_one_more_reading():
    now = Clocked()
    ctx, mon, counters = monitor(now)
    mon.poll()
    counters.bump("aaaa", 1, "flush_io_errs")
    (ev,) = mon.flush()
    assert ev.extra["counters"] == {"flush_io_errs": 1}
