"""The event points (read-only, ENOSPC, block I/O, writeback, topology, error
detail), pure logic (no root): decoding, ladders, program switches,
ENOSPC storm counting, fanotify parsing, errno/inode merging, read-only
transitions, block device mapping."""

from __future__ import annotations

import dataclasses
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.kernels import fake_kernel, raw_record

from fsev.events import INTERNAL_TYPES, Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.kernel.records import Call, Field, RecordClass, RecordType, RoBits, Rung
from fsev.linux.blockdev import disk_of, partition_of
from fsev.linux.fanotify import (
    FAN_EVENT_INFO_TYPE_ERROR,
    FAN_EVENT_INFO_TYPE_FID,
    FAN_EVENT_INFO_TYPE_MNT,
    FAN_FS_ERROR,
    FAN_MNT_ATTACH,
    FAN_MNT_DETACH,
    FanEvent,
    parse_events,
)
from fsev.linux.mountinfo import MountTable, parse_mountinfo
from fsev.points.enospc import EnospcAggregator, KernelTotal
from fsev.points.ext4_error_detail import Ext4ErrorDetail, fill_from_sysfs
from fsev.points.mount_topology import mount_action
from fsev.points.read_only import (
    EMERGENCY_RO,
    MNT_READONLY,
    SB_RDONLY,
    SHUTDOWN,
    ReadOnlyTracker,
    mount_read_only,
    ro_flag_name,
)
from fsev.points.registry import ProbePoint, decode, kprobe_attachments, plan_probes, preamble, required_offsets
from fsev.probes.ladder import RungKind
from fsev.probes.program import ProgramConfig

ALL = frozenset(RecordClass(c) for c in (1, 2, 3, 4))
HERE_TPS = frozenset({
    "ext4:ext4_error", "syscalls:sys_enter_umount", "syscalls:sys_exit_umount", "raw_syscalls:sys_exit",
    "block:block_rq_error", "filemap:filemap_set_wb_err",
    *(f"syscalls:sys_{s}_{c}" for c in ("mount", "move_mount", "fsconfig", "mount_setattr", "unshare", "clone",
                                         "clone3") for s in ("enter", "exit")),
})
# This machine: 6.18, no kprobes, fanotify FS_ERROR and mount-namespace marks.
HERE = fake_kernel(release="6.18", kprobes=False, kprobes_why_not="kernel built without CONFIG_KPROBES",
                   tracepoints=HERE_TPS, fanotify_fs_error=True, fanotify_mntns=True, ext4_emergency_ro_bit=3,
                   ext4_shutdown_bit=1)
# A Debian 12 kernel (6.1): kprobes, no emergency_ro, no mount-namespace marks.
DEBIAN = fake_kernel(release="6.1.0-13-amd64", kprobes=True,
                     kprobe_functions=frozenset({"__ext4_error", "__ext4_error_inode", "cleanup_mnt",
                                                 "ext4_handle_error", "reconfigure_super", "security_inode_create",
                                                 "security_inode_mkdir", "blk_update_request"}),
                     tracepoints=HERE_TPS - {"block:block_rq_error"}, fanotify_fs_error=True, ext4_aborted_bit=1)


def record(**kw) -> bytes:
    return bytes(raw_record(**kw))


# -- decoding ----------------------------------------------------------------

def test_read_only_record_names_the_flag_and_cause():
    ev = decode(record(type=RecordType.READ_ONLY, cls=RecordClass.ERR, rung=Rung.RAW_TRACEPOINT, dev=kernel_dev(7, 3),
                       value=RoBits.EMERGENCY, arg=0, call=Call.EXT4_ERROR, pid=5, comm=b"ls", cause_ns=123),
                0, Clock())
    assert ev.type is EventType.READ_ONLY and ev.rung == "raw_tracepoint" and ev.dev == "7:3"
    assert ev.extra == {"call": "ext4_error", "_cause_ts": 123,  # the causing error's handling time
                        "read_only": True, "flag": "emergency_ro", "cause": "error"}
    assert ev.block is None


@pytest.mark.parametrize("bits, name", [(0, None), (RoBits.SB_RDONLY, "sb_rdonly"), (RoBits.EMERGENCY, "emergency_ro"),
                                        (RoBits.SB_RDONLY | RoBits.EMERGENCY, "emergency_ro"),
                                        (RoBits.SHUTDOWN, "shutdown"), (RoBits.SHUTDOWN | RoBits.SB_RDONLY, "shutdown"),
                                        (RoBits.ABORTED, "aborted"), (RoBits.ABORTED | RoBits.SB_RDONLY, "sb_rdonly")])
def test_ro_flag_decoding(bits, name):
    assert ro_flag_name(int(bits)) == name


def test_enospc_record_carries_call_space_and_path():
    ev = decode(record(type=RecordType.ENOSPC, cls=RecordClass.WARN, rung=Rung.RAW_TRACEPOINT, dev=kernel_dev(0, 40),
                       call=Call.MKDIRAT, path=b"sub/dir", value=7, err=28,
                       fields=Field.ERRNO | Field.PATH), 0, Clock())
    assert (ev.errno, ev.path) == (28, "sub/dir")
    assert ev.extra["call"] == "mkdirat" and ev.extra["space"] == "metadata" and ev.extra["_ordinal"] == 7
    assert ev.extra["_path_exact"] is False


def test_block_record_sector_is_not_a_filesystem_block():
    ev = decode(record(type=RecordType.BLOCK_IO_ERROR, cls=RecordClass.ERR, rung=Rung.TRACEPOINT, dev=kernel_dev(7, 0),
                       block=376, value=4096, err=5, func=b"RM", fields=Field.ERRNO | Field.BLOCK), 0, Clock())
    assert ev.block is None and ev.extra == {"sector": 376, "bytes": 4096, "rwbs": "RM"} and ev.errno == 5


def test_mount_record_actions():
    ev = decode(record(type=RecordType.MOUNT, cls=RecordClass.INFO, rung=Rung.TRACEPOINT, call=Call.MOUNT,
                       arg=4096, func=b"/src", path=b"/dst", mntns=4026531832,
                       fields=Field.PATH | Field.MNTNS), 0, Clock())
    assert ev.path == "/dst" and ev.extra["action"] == "bind" and ev.extra["from"] == "/src"
    assert ev.extra["mnt_ns"] == 4026531832


@pytest.mark.parametrize("call, flags, action", [
    (Call.MOUNT, 0, "mount"), (Call.MOUNT, 32 | 1, "remount"), (Call.MOUNT, 32 | 4096, "remount"),
    (Call.MOUNT, 4096 | 16384, "bind"), (Call.MOUNT, 8192, "move"), (Call.MOUNT, 1 << 18 | 16384, "propagation"),
    (Call.MOVE_MOUNT, 4, "attach"), (Call.MOVE_MOUNT, 0, "move"), (Call.FSCONFIG, 7, "reconfigure"),
    (Call.FSCONFIG, 6, None), (Call.MOUNT_SETATTR, 0, "setattr"), (Call.UNSHARE, 0, "new_namespace"),
])
def test_mount_action_from_flags(call, flags, action):
    assert mount_action(int(call), flags) == action


# -- ladders and program switches ---------------------------------------------

def test_ladders_here_use_tracepoints_raw_tracepoints_and_fanotify():
    plan = plan_probes(HERE)
    got = {p: plan.rung(p).kind for p in (ProbePoint.EXT4_ERROR_DETAIL, ProbePoint.READ_ONLY, ProbePoint.ENOSPC,
                                          ProbePoint.BLOCK_IO_ERROR, ProbePoint.WB_ERROR, ProbePoint.MOUNT_TOPOLOGY)}
    assert got == {ProbePoint.EXT4_ERROR_DETAIL: RungKind.FANOTIFY, ProbePoint.READ_ONLY: RungKind.RAW_TRACEPOINT,
                   ProbePoint.ENOSPC: RungKind.RAW_TRACEPOINT, ProbePoint.BLOCK_IO_ERROR: RungKind.TRACEPOINT,
                   ProbePoint.WB_ERROR: RungKind.RAW_TRACEPOINT, ProbePoint.MOUNT_TOPOLOGY: RungKind.FANOTIFY}
    ro = plan.rung(ProbePoint.READ_ONLY)
    assert ro.reads == ("enum:EXT4_FLAGS_EMERGENCY_RO", "enum:EXT4_FLAGS_SHUTDOWN")
    assert "EXT4_FLAGS_EMERGENCY_RO (3; 6.12+)" in ro.gives and "EXT4_FLAGS_SHUTDOWN (1;" in ro.gives
    assert all("CONFIG_KPROBES" in r.skipped[0] for r in (ro, plan.rung(ProbePoint.ENOSPC)))
    assert ro.misses and plan.rung(ProbePoint.ENOSPC).misses


def test_ladders_on_a_kprobe_kernel_before_6_12():
    plan = plan_probes(DEBIAN)
    ro = plan.rung(ProbePoint.READ_ONLY)
    assert ro.kind is RungKind.KPROBE and ro.targets == ("ext4_handle_error", "reconfigure_super")
    # the flags the kernel's BTF has decide what the programs read
    # (Debian's 6.1: no EXT4_FLAGS_SHUTDOWN in its BTF, EXT4_MF_FS_ABORTED there)
    assert ro.reads == ("enum:EXT4_MF_FS_ABORTED",) and "no EXT4_FLAGS_EMERGENCY_RO" in ro.gives
    cfg = ProgramConfig(classes=ALL, watch_all=True)
    assert {"ext4_sb_info.s_mount_flags", "enum:EXT4_MF_FS_ABORTED"} <= set(required_offsets(plan, cfg))
    assert "ext4_sb_info.s_ext4_flags" not in required_offsets(plan, cfg)
    assert plan.rung(ProbePoint.ENOSPC).kind is RungKind.KPROBE
    blk = plan.rung(ProbePoint.BLOCK_IO_ERROR)
    assert blk.kind is RungKind.KPROBE and "block_rq_error not present" in blk.skipped[0]
    topo = plan.rung(ProbePoint.MOUNT_TOPOLOGY)
    assert topo.kind is RungKind.TRACEPOINT and "6.15" in topo.skipped[0]
    assert plan.rung(ProbePoint.EXT4_ERROR_DETAIL).kind is RungKind.KPROBE


def test_raw_sys_exit_rung_needs_x86_64():
    arm = dataclasses.replace(HERE, machine="aarch64")
    r = plan_probes(arm).rung(ProbePoint.ENOSPC)
    assert r.kind is RungKind.NONE and any("x86-64" in s for s in r.skipped)


def test_preamble_switches_and_offsets_follow_plan_and_classes():
    plan = plan_probes(HERE)
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR}), watch_all=False)
    specs = required_offsets(plan, cfg)
    assert "enum:EXT4_FLAGS_EMERGENCY_RO" in specs and "ext4_sb_info.s_ext4_flags" in specs
    assert "pt_regs.orig_ax" not in specs  # ENOSPC is warn: not asked for, not compiled
    p = preamble(plan, cfg, {s: 8 for s in specs})
    for on in ("FSEV_RO_RAW_TP 1", "FSEV_BLOCK_IO_TRACEPOINT 1", "FSEV_WB_RAW_TP 1"):
        assert f"#define {on}" in p
    for off in ("FSEV_ENOSPC_RAW_TP 0", "FSEV_TOPOLOGY_TRACEPOINT 0", "FSEV_RO_KPROBE 0"):
        assert f"#define {off}" in p
    assert "#define OFF_ENUM_EXT4_FLAGS_EMERGENCY_RO 8" in p


def test_kprobe_attachments_include_return_probes():
    plan = plan_probes(DEBIAN)
    got = kprobe_attachments(plan, ProgramConfig(classes=ALL, watch_all=True))
    assert ("ext4_handle_error", "kretp_ext4_handle_error") in got
    assert ("reconfigure_super", "kp_reconfigure_super") in got
    assert ("security_inode_mkdir", "kp_security_inode_mkdir") in got
    assert ("blk_update_request", "kp_blk_update_request") in got


# -- ENOSPC storms -------------------------------------------------------------

class Clockwork:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _ev(n: int, pid: int = 9) -> Event:
    return Event(0, 0, 0.0, EventClass.WARN, EventType.ENOSPC, "raw_tracepoint", dev="0:40", pid=pid,
                 extra={"_ordinal": n, "call": "write", "space": "data"})


def _make(**kw) -> Event:
    return Event(0, 0, 0.0, **kw)


def test_a_lone_enospc_is_one_event():
    now = Clockwork()
    agg = EnospcAggregator(now)
    ev = agg.on_record(7, _ev(1))
    assert ev.extra["count"] == 1 and "_ordinal" not in ev.extra
    out = []
    for _ in range(5):
        out += agg.tick({7: KernelTotal(1)}, _make)
        now.t += 0.5
    assert out == []


def test_a_storm_is_one_event_plus_counts_per_second_adding_up_exactly():
    now = Clockwork()
    agg = EnospcAggregator(now)
    events = [agg.on_record(7, _ev(1))]
    total = 1
    for second in range(4):  # 2500 failures a second, one quiet-window record each second
        for quarter in range(4):
            total += 625
            now.t += 0.25
            if quarter == 0 and second:
                events.append(agg.on_record(7, _ev(total - 600)))
            events += agg.tick({7: KernelTotal(total, 11, "write", "py")}, _make)
    now.t += 5
    events += agg.tick({7: KernelTotal(total, 11, "write", "py")}, _make)
    events += agg.tick({7: KernelTotal(total, 11, "write", "py")}, _make, final=True)
    assert sum(e.extra["count"] for e in events) == total
    assert len(events) <= 2 * 5 + 2
    summaries = [e for e in events if e.extra.get("storm")]
    assert summaries and all(e.pid == 11 and e.comm == "py" and e.extra["call"] == "write" for e in summaries)
    assert summaries[-1].extra["count_total"] == total


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.booleans(), st.floats(0.01, 1.5)), min_size=1, max_size=40),
       st.sets(st.integers(1, 40)))
def test_storm_counts_are_exact_whatever_the_timing(steps, lost):
    """Failures come in bursts; the kernel sends a record for some of them
    (some lost in the ring buffer); ticks come at random times. The counts of
    all events always add up to the kernel's total."""
    now = Clockwork()
    agg = EnospcAggregator(now)
    total, out, sent = 0, [], 0
    for burst, record_one, dt in steps:
        if burst and record_one:
            sent += 1
            if sent not in lost:
                out.append(agg.on_record(3, _ev(total + 1)))
        total += burst
        now.t += dt
        out += agg.tick({3: KernelTotal(total)}, _make)
    out += agg.tick({3: KernelTotal(total)}, _make, final=True)
    assert sum(e.extra["count"] for e in out) == total
    assert all(e.extra["count"] >= 0 for e in out)


# -- fanotify ------------------------------------------------------------------

def _info(itype: int, body: bytes) -> bytes:
    return struct.pack("<BBH", itype, 0, 4 + len(body)) + body


def _event(mask: int, pid: int, *infos: bytes) -> bytes:
    body = b"".join(infos)
    return struct.pack("<IBBHQii", 24 + len(body), 3, 0, 24, mask, -1, pid) + body


def test_parse_fs_error_event_with_inode_handle():
    fid = struct.pack("<Q", 0xAF5F380EE89E6D71) + struct.pack("<Ii", 8, 1) + struct.pack("<II", 12, 0x9CD7B2B6)
    raw = _event(FAN_FS_ERROR, 5086, _info(FAN_EVENT_INFO_TYPE_FID, fid), _info(FAN_EVENT_INFO_TYPE_ERROR,
                                                                                struct.pack("<iI", 74, 1)))
    (ev,) = parse_events(raw)
    assert (ev.mask, ev.pid, ev.fsid, ev.ino, ev.error, ev.error_count) == (FAN_FS_ERROR, 5086, 0xAF5F380EE89E6D71,
                                                                             12, 74, 1)


def test_parse_fs_error_without_inode_and_mount_events():
    fid = struct.pack("<Q", 1) + struct.pack("<Ii", 0, 0xFF)
    raw = _event(FAN_FS_ERROR, 1, _info(FAN_EVENT_INFO_TYPE_FID, fid), _info(FAN_EVENT_INFO_TYPE_ERROR,
                                                                             struct.pack("<iI", 117, 3)))
    # FAN_EVENT_INFO_TYPE_MNT: the u64 is 8-aligned, after 4 bytes of padding
    mnt = _info(FAN_EVENT_INFO_TYPE_MNT, b"\0" * 4 + struct.pack("<Q", 2147484888))
    raw += _event(FAN_MNT_ATTACH | FAN_MNT_DETACH, 2, mnt)
    a, b = parse_events(raw + b"\x01\x02")  # a torn tail is ignored
    assert a.ino is None and (a.error, a.error_count) == (117, 3)
    assert b.mnt_id == 2147484888 and b.mask == FAN_MNT_ATTACH | FAN_MNT_DETACH


# -- errno and inode for tracepoint fs_errors -----------------------------------

def _fs_error(dev: str = "7:3", function: str = "htree_dirblock_to_tree", line: int = 1051) -> Event:
    return Event(0, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev=dev, function=function, line=line)


class FakeFan:
    fd = 1

    def __init__(self) -> None:
        self.pending: list[FanEvent] = []
        self.marked: set[str] = set()

    def read(self) -> list[FanEvent]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        pass


def _detail(now, last=None):
    fan = FakeFan()
    d = Ext4ErrorDetail(fan, now, last_error=lambda dev: last)  # type: ignore[arg-type]
    d._fsid_dev[42] = "7:3"
    d._fan_devs.add("7:3")
    return d, fan


def test_fanotify_errno_and_inode_fill_the_first_error_and_merged_ones_fall_back_to_sysfs():
    now = Clockwork()
    d, fan = _detail(now, last={"func": "trigger_test_error", "line": 0, "errcode": 5, "ino": 0, "block": 0})
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=12, error=74, error_count=2)]
    a = d.process(_fs_error())
    b = d.process(_fs_error(function="trigger_test_error", line=0))
    assert len(a) == 1 and (a[0].errno, a[0].inode, a[0].extra) == (
        74, 12, {"errno_source": "fanotify", "inode_source": "fanotify"})
    assert len(b) == 1 and b[0].errno == 117 and b[0].extra == {"errno_source": "sysfs", "errno_merged": True}


def test_an_error_waits_for_its_fanotify_event_and_keeps_order():
    now = Clockwork()
    d, fan = _detail(now)
    assert d.process(_fs_error()) == []
    ro = Event(0, 0, 0.0, EventClass.ERR, EventType.READ_ONLY, "raw_tracepoint", dev="7:3")
    assert d.process(ro) == []  # behind the error it follows
    other = _fs_error(dev="8:1")
    assert d.process(other) == []  # another device: nothing to wait for, but the stream keeps order
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=None, error=5, error_count=1)]
    out = d.poll()
    assert out == [out[0], ro, other] and out[0].errno == 5
    assert out[0].inode is None and "inode_source" not in out[0].extra


class Superblock:
    """/sys/fs/ext4/<dev>/last_error_* and errors_count, as ext4's work item updates them."""

    def __init__(self, count: int) -> None:
        self.last = {"func": "", "line": 0, "errcode": 0, "ino": 0, "block": 0, "count": count}
        self.reads = 0

    def __call__(self, dev: str) -> dict:
        self.reads += 1
        return dict(self.last)

    def record(self, func: str, line: int, errcode: int, n: int = 1) -> None:
        self.last.update(func=func, line=line, errcode=errcode)
        self.last["count"] += n


def test_a_merged_error_waits_until_the_superblock_has_counted_it():
    now = Clockwork()
    sb = Superblock(count=7)
    fan = FakeFan()
    d = Ext4ErrorDetail(fan, now, last_error=sb)  # type: ignore[arg-type]
    d._fsid_dev[42] = "7:3"
    d._fan_devs.add("7:3")
    d._ordinal["7:3"] = 7
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=0, error=117, error_count=2)]
    a = d.process(_fs_error(function="trigger_test_error", line=129))
    assert [e.errno for e in a] == [117]
    b = _fs_error(function="trigger_test_error", line=129)
    assert d.process(b) == []  # merged; the superblock still shows what it had before
    now.t += 0.01
    assert d.poll() == []
    sb.record("trigger_test_error", 129, errcode=5, n=2)  # the work item ran
    now.t += 0.01
    assert d.poll() == [b] and b.errno == 117 and b.extra == {"errno_source": "sysfs", "errno_merged": True}


def test_a_device_whose_superblock_never_counts_waits_once_then_not_again():
    now = Clockwork()
    sb = Superblock(count=3)
    d = Ext4ErrorDetail(None, now, last_error=sb)
    d._ordinal["7:3"] = 3
    first = _fs_error()
    assert d.process(first) == []
    now.t += 1
    assert d.poll() == [first] and first.errno is None
    second = _fs_error()
    assert d.process(second) == [second]  # its count was taken as it is


def test_a_fanotify_event_that_comes_after_its_error_gave_up_is_not_given_to_the_next():
    now = Clockwork()
    d, fan = _detail(now)
    first = _fs_error()
    assert d.process(first) == []
    now.t += 1
    assert d.poll() == [first] and first.errno is None
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=12, error=74, error_count=1)]  # late
    second = _fs_error()
    assert d.process(second) == []
    fan.pending = [FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=13, error=5, error_count=1)]
    assert d.poll() == [second] and (second.errno, second.inode) == (5, 13)


def test_a_wait_ends_with_the_superblock_last_error_when_it_matches():
    now = Clockwork()
    d, fan = _detail(now, last={"func": "htree_dirblock_to_tree", "line": 1051, "errcode": 4, "ino": 12,
                                "block": 0})
    assert d.process(_fs_error()) == []
    now.t += 1
    (ev,) = d.poll()
    assert (ev.errno, ev.inode, ev.block) == (74, 12, None)
    assert ev.extra == {"errno_source": "sysfs", "inode_source": "sysfs"}


def test_sysfs_last_error_of_another_error_is_not_taken():
    ev = _fs_error()
    assert not fill_from_sysfs(ev, {"func": "ext4_lookup", "line": 1799, "errcode": 5, "ino": 3, "block": 0})
    assert ev.errno is None and ev.inode is None


def test_kprobe_errno_is_marked_with_its_rung():
    d, _ = _detail(Clockwork())
    ev = _fs_error()
    ev.rung, ev.errno, ev.inode = "kprobe", 74, 12
    assert d.process(ev) == [ev] and ev.extra == {"errno_source": "kprobe", "inode_source": "kprobe"}


# -- read-only state -----------------------------------------------------------

MI = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
44 22 7:0 / /mnt/data rw,relatime shared:30 - ext4 /dev/loop0 rw,errors=remount-ro
45 22 0:39 / /mnt/tmp rw,relatime shared:31 - tmpfs tmpfs rw,size=8192k
"""


class StaticTable(MountTable):
    def __init__(self, text: str) -> None:
        super().__init__(parse_mountinfo(text))
        self.text = text

    def refresh(self) -> None:
        self._index(parse_mountinfo(self.text))


@pytest.mark.parametrize("line, reason", [
    ("44 22 7:0 / /m rw - ext4 /dev/loop0 rw,errors=remount-ro,emergency_ro", EMERGENCY_RO),
    ("44 22 7:0 / /m rw - ext4 /dev/loop0 rw,shutdown", SHUTDOWN),
    ("44 22 7:0 / /m ro - ext4 /dev/loop0 ro,errors=remount-ro", SB_RDONLY),
    ("44 22 7:0 / /m ro - tmpfs t rw", MNT_READONLY),
    ("44 22 7:0 / /m rw - tmpfs t rw", None),
])
def test_mount_read_only_reasons(line, reason):
    (m,) = parse_mountinfo(line)
    assert mount_read_only(m) == reason


def test_emergency_ro_in_mountinfo_is_an_error_transition_linked_to_the_error():
    now = Clockwork()
    table = StaticTable(MI)
    ro = ReadOnlyTracker(table, lambda m: True, now)
    err = _fs_error(dev="7:0")
    err.seq, err.ts_ns = 41, int(now.t * 1e9)
    ro.on_fs_error(err)
    table.text = MI.replace("errors=remount-ro", "errors=remount-ro,emergency_ro")
    now.t += 0.1
    (ev,) = ro.poll(_make)
    assert ev.cls is EventClass.ERR and ev.rung == "polled" and ev.mount_point == "/mnt/data"
    assert ev.extra == {"read_only": True, "flag": "emergency_ro", "cause": "error", "caused_by_seq": 41}


def test_admin_remount_is_info_with_the_caller_and_a_kernel_record_is_not_reported_twice():
    now = Clockwork()
    table = StaticTable(MI)
    ro = ReadOnlyTracker(table, lambda m: True, now)
    call = Event(0, 0, 0.0, EventClass.INFO, EventType.MOUNT, "tracepoint", mount_point="/mnt/tmp", pid=77,
                 comm="mount", extra={"action": "remount", "call": "mount"})
    ro.on_mount_call(call)
    table.text = MI.replace("/mnt/tmp rw,relatime", "/mnt/tmp ro,relatime").replace("tmpfs rw,size", "tmpfs ro,size")
    table.refresh()
    (ev,) = ro.poll(_make)
    assert ev.cls is EventClass.INFO and ev.pid == 77 and ev.extra["cause"] == "remount"
    assert ev.extra["read_only"] is True and ev.extra["flag"] == SB_RDONLY
    # the same transition from the kernel (kprobe rung, reconfigure_super): already told
    rec = Event(0, 0, 0.0, EventClass.INFO, EventType.READ_ONLY, "kprobe", dev="0:39",
                extra={"read_only": True, "flag": "sb_rdonly", "cause": "remount"})
    assert ro.on_kernel_record(rec) is None
    assert ro.read_only_mounts() == {"/mnt/tmp": SB_RDONLY}


def test_a_state_only_the_kernel_tells_is_not_undone_by_the_mount_table():
    now = Clockwork()
    table = StaticTable(MI)
    ro = ReadOnlyTracker(table, lambda m: True, now)
    rec = Event(0, 0, 0.0, EventClass.ERR, EventType.READ_ONLY, "kprobe", dev="7:0",
                extra={"read_only": True, "flag": "aborted", "cause": "error"})
    assert ro.on_kernel_record(rec) is rec
    table.refresh()  # mountinfo still says rw (Debian's 6.1 after an error)
    assert ro.poll(_make) == []


def test_kernel_error_record_links_and_the_table_does_not_repeat_it():
    now = Clockwork()
    table = StaticTable(MI)
    ro = ReadOnlyTracker(table, lambda m: True, now)
    err = _fs_error(dev="7:0")
    err.seq, err.ts_ns = 3, int(now.t * 1e9)
    ro.on_fs_error(err)
    second = _fs_error(dev="7:0", function="ext4_journal_check_start")
    second.seq, second.ts_ns = 4, err.ts_ns + 40_000_000  # an aborted journal's error, before sys_exit
    ro.on_fs_error(second)
    rec = Event(0, 0, 0.0, EventClass.ERR, EventType.READ_ONLY, "raw_tracepoint", dev="7:0",
                extra={"read_only": True, "flag": "emergency_ro", "cause": "error", "_cause_ts": err.ts_ns + 2000})
    out = ro.on_kernel_record(rec)
    assert out is rec and rec.extra["caused_by_seq"] == 3 and rec.cls is EventClass.ERR
    table.text = MI.replace("errors=remount-ro", "errors=remount-ro,emergency_ro")
    now.t += 2
    assert ro.poll(_make) == []


# -- block devices --------------------------------------------------------------

def test_a_sector_maps_to_its_partition(tmp_path):
    sys_block = tmp_path / "dev-block"
    disk = tmp_path / "devices" / "sda"
    (disk / "sda1").mkdir(parents=True)
    (disk / "sda2").mkdir()
    (disk / "dev").write_text("8:0\n")
    for name, start, size, dev in (("sda1", 2048, 1000, "8:1"), ("sda2", 4096, 5000, "8:2")):
        (disk / name / "partition").write_text("1\n")
        (disk / name / "start").write_text(f"{start}\n")
        (disk / name / "size").write_text(f"{size}\n")
        (disk / name / "dev").write_text(f"{dev}\n")
    sys_block.mkdir()
    os.symlink(disk, sys_block / "8:0")
    os.symlink(disk / "sda2", sys_block / "8:2")
    root = str(sys_block)
    assert partition_of("8:0", 4100, root) == "8:2"
    assert partition_of("8:0", 2048, root) == "8:1"
    assert partition_of("8:0", 10, root) == "8:0"  # outside every partition
    assert disk_of("8:2", root) == "8:0" and disk_of("8:0", root) == "8:0"


# -- the schema document ---------------------------------------------------------

EVENT_KEYS = ("read_only", "flag", "cause", "caused_by_seq", "call", "space", "count", "count_total", "storm",
               "sector", "bytes", "rwbs", "blk_status", "disk", "mount_points", "errseq", "action", "from",
               "mnt_id_unique", "mnt_ns", "errno_source", "inode_source", "block_source", "errno_merged",
               "errors_merged", "std_error", "error_type", "pos", "len",
               # btrfs fs_errors, device_errors
               "transaction_abort", "message", "root", "offset", "logical", "mirror",
               "counters", "totals", "devid", "device")
# XFS (fs_error of point xfs_error, shutdown of point xfs_shutdown)
EVENT_KEYS += ("health", "scope", "group", "structures", "btree", "btree_level", "daddr", "file", "tag", "verifier",
               "reasons")


def test_the_schema_document_covers_every_type_and_key():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    for t in EventType:
        if t not in INTERNAL_TYPES:
            assert f"## `{t.value}`" in doc, t
    for key in EVENT_KEYS:
        assert f"`{key}`" in doc, key
