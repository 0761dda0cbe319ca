"""XFS errors and health against the real kernel: XFS images made by mkfs.xfs,
damaged by xfs_db -x, read; the events of points xfs_error and xfs_shutdown,
and read_only's state after a shutdown.

One TraceSession (one compile) serves the whole module: it watches every
mount, and each test keeps the events of its own device only (other tests
and other people's loop devices may raise events too).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Callable, Iterator

import pytest
from support.xfs_image import Xfs, xfs

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount
from fsev.points.registry import ProbePoint
from fsev.probes.ladder import RungKind
from fsev.session.trace import TraceOptions, TraceSession, Watch

pytestmark = pytest.mark.root

# /d's one directory block: a bad magic (the CRC stays good: -d writes past the verifier).
DAMAGE_DIR_BLOCK = ("inode {d}", "dblock 0", "write -d bhdr.hdr.magic 0x1234")
# /f's inode core: its inode cluster buffer fails the verifier as a whole.
DAMAGE_INODE_CORE = ("inode {f}", "write -d core.magic 0x1234")
# AG 0's by-block free-space btree root claims level 1 where the AGF says a
# one-level tree: it passes the verifier, not the btree's own level check.
DAMAGE_BNOBT_LEVEL = ("agf 0", "addr bnoroot", "write -d level 1")


class Collector:
    """The module's one session, watching only the devices of this module's
    filesystems (a dynamic watch, as fsev serve's: the kernel filters the
    rest, so another user's error flood on this shared machine cannot fill
    the ring), read in short windows so that no batch of events is left half
    read between tests."""

    def __init__(self) -> None:
        self.devs: set[str] = set()
        self.unmounted: list[Mount] = []  # watched before they are mounted
        err = frozenset({EventClass.ERR})
        self.session = TraceSession(TraceOptions(classes=err, watch_source=lambda table: Watch(
            tuple((m, err) for m in [*table, *self.unmounted] if m.dev in self.devs))))
        self.seen: list[Event] = []

    def watch(self, fs: Xfs, before_mount: bool = False) -> None:
        """Watch fs from now on (before anything is done to it), and only it:
        loop devices are reused, so an earlier test's dev may be this one's.
        before_mount: its device, for what XFS reports as it mounts."""
        self.devs = {fs.dev}
        major, minor = (int(x) for x in fs.dev.split(":"))
        self.unmounted = [Mount(0, 0, major, minor, "/", fs.mount_point, ("rw",), "xfs", fs.loop, ("rw",))] \
            if before_mount else []
        done = self.session.rewatch()
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            self.seen += self.session.events(poll_ms=20, until=time.monotonic() + 0.05)
        assert done.is_set()
        self.seen.clear()

    def wait_for(self, dev: str, pred: Callable[[list[Event]], object], timeout: float = 15) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.session.events(poll_ms=50, until=time.monotonic() + 0.2):
                self.seen.append(ev)
            mine = [e for e in self.seen if e.dev == dev]
            if pred(mine) or time.monotonic() > deadline:
                return mine


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    got = Collector()
    try:
        got.session.start()
        yield got
    finally:
        got.session.close()


@contextlib.contextmanager
def watched(collector: Collector, *damage: str) -> Iterator[Xfs]:
    """A damaged XFS, mounted and watched."""
    with xfs(*damage) as fs:
        collector.watch(fs)
        yield fs


def fs_errors(evs: list[Event]) -> list[Event]:
    return [e for e in evs if e.type is EventType.FS_ERROR]


def read(path: str) -> int:
    """Read a file or list a directory in another process: its errno (0: fine)."""
    cmd = ["ls", path] if os.path.isdir(path) else ["cat", path]
    return subprocess.run(cmd, capture_output=True).returncode


def test_the_plan_on_this_kernel_is_the_raw_tracepoint_rung(collector):
    plan = collector.session.plan
    for point in (ProbePoint.XFS_ERROR, ProbePoint.XFS_SHUTDOWN):
        assert plan.kind(point) is RungKind.RAW_TRACEPOINT, plan.rung(point)
    assert "xfs:xfs_btree_corrupt" in plan.rung(ProbePoint.XFS_ERROR).targets


def test_a_damaged_directory_block_marks_that_inode_sick_with_structure_directory(collector):
    with watched(collector, *DAMAGE_DIR_BLOCK) as fs:
        assert read(fs.path("d")) != 0  # ls: Structure needs cleaning
        evs = collector.wait_for(fs.dev, lambda e: [x for x in fs_errors(e) if x.extra.get("scope") == "inode"]
                                 and [x for x in fs_errors(e) if x.function == "xfs_dir3_block_read_verify"])
    # XFS's own line for the verifier failure names the function that found it.
    # (the directory's readahead fails its verifier first: a line of its own)
    logs = [e for e in fs_errors(evs) if e.rung == "kernel_log" and e.function == "xfs_dir3_block_read_verify"]
    assert len(logs) == 1, evs
    logged = logs[0]
    assert logged.extra == {"verifier": "dir3_block", "daddr": logged.extra["daddr"]}
    assert logged.errno in (74, 117) and logged.mount_point == fs.mount_point and logged.comm == "ls"
    marks = [e for e in fs_errors(evs) if e.extra.get("scope") == "inode"]
    assert marks, evs
    ev = marks[0]
    assert ev.fs_type == "xfs" and ev.mount_point == fs.mount_point and ev.cls is EventClass.ERR
    assert ev.inode == fs.inodes["d"]
    assert ev.extra["health"] == "sick"
    assert ev.extra["structures"] == ["directory"]
    assert ev.rung == "raw_tracepoint" and ev.comm == "ls"
    # The JSON line carries the keys docs/events.md names.
    d = ev.to_json_dict()
    assert d["type"] == "fs_error" and d["fs_type"] == "xfs" and d["scope"] == "inode" and d["inode"] == ev.inode


def test_a_damaged_inode_core_marks_the_inodes_of_its_allocation_group_sick(collector):
    with watched(collector, *DAMAGE_INODE_CORE) as fs:
        assert read(fs.path("f")) != 0
        evs = collector.wait_for(fs.dev, lambda e: [x for x in fs_errors(e) if x.extra.get("scope") == "ag"])
    ag = [e for e in fs_errors(evs) if e.extra.get("scope") == "ag"]
    assert ag, evs
    # The inode cluster buffer failed its verifier before any inode was read:
    # XFS marks the allocation group's inodes (XFS_SICK_AG_INODES), not the inode.
    assert ag[0].extra["group"] == 0 and ag[0].extra["structures"] == ["inodes"]
    assert ag[0].extra["health"] == "sick" and ag[0].fs_type == "xfs"
    assert not [e for e in evs if e.type is EventType.SHUTDOWN]


def test_a_transaction_that_meets_the_damaged_inode_cluster_shuts_xfs_down_then_read_only(collector):
    with watched(collector, *DAMAGE_INODE_CORE) as fs:
        # A new inode comes from the bad cluster; the transaction cannot go on.
        assert subprocess.run(["mkdir", fs.path("newdir")], capture_output=True).returncode != 0
        evs = collector.wait_for(fs.dev, lambda e: [x for x in e if x.type is EventType.READ_ONLY])
    down = [e for e in evs if e.type is EventType.SHUTDOWN]
    assert len(down) == 1, evs
    assert down[0].extra["reasons"] == ["metadata_io"] and down[0].extra["file"].startswith("fs/xfs/")
    assert down[0].line and down[0].fs_type == "xfs" and down[0].cls is EventClass.ERR
    ro = [e for e in evs if e.type is EventType.READ_ONLY]
    assert len(ro) == 1 and ro[0].extra["caused_by_seq"] == down[0].seq and ro[0].seq > down[0].seq
    assert ro[0].extra["flag"] == "shutdown" and ro[0].extra["cause"] == "error"


def test_a_btree_block_with_a_wrong_level_is_reported_with_btree_level_and_group(collector):
    with watched(collector, *DAMAGE_BNOBT_LEVEL) as fs:
        subprocess.run(["dd", "if=/dev/zero", f"of={fs.path('big')}", "bs=1M", "count=16", "conv=fsync"],
                       capture_output=True)
        evs = collector.wait_for(fs.dev, lambda e: [x for x in fs_errors(e) if "btree" in x.extra]
                                 and [x for x in fs_errors(e) if x.extra.get("structures") == ["bnobt"]])
    btree = [e for e in fs_errors(evs) if "btree" in e.extra]
    assert btree, evs
    assert btree[0].extra["btree"] == "bnobt" and btree[0].extra["btree_level"] == 1
    assert btree[0].extra["group"] == 0 and btree[0].extra["scope"] == "ag"
    assert btree[0].function  # the caller the tracepoint names, from /proc/kallsyms
    marks = [e for e in fs_errors(evs) if e.extra.get("structures") == ["bnobt"]]
    assert marks[0].extra["group"] == 0 and marks[0].extra["health"] == "sick"


def test_summary_counters_beyond_the_filesystem_mark_the_filesystem_sick_as_it_mounts(collector):
    with xfs("sb 0", "write -d fdblocks 99999999999", mount=False) as fs:
        collector.watch(fs, before_mount=True)
        subprocess.run(["mount", fs.loop, fs.mount_point], check=True, capture_output=True)
        evs = collector.wait_for(fs.dev, lambda e: [x for x in fs_errors(e) if x.extra.get("scope") == "fs"])
    marks = [e for e in fs_errors(evs) if e.extra.get("scope") == "fs"]
    assert marks, evs
    assert marks[0].extra == {"health": "sick", "scope": "fs", "structures": ["counters"]}
    assert marks[0].comm == "mount" and marks[0].fs_type == "xfs" and marks[0].inode is None


def test_a_forced_shutdown_gives_shutdown_with_its_reason_then_read_only_once(collector):
    with watched(collector) as fs:
        subprocess.run(["xfs_io", "-x", "-c", "shutdown", fs.mount_point], check=True, capture_output=True)
        evs = collector.wait_for(fs.dev, lambda e: [x for x in e if x.type is EventType.READ_ONLY])
        # The filesystem refuses writes now; nothing more is reported for it.
        assert subprocess.run(["touch", fs.path("after")], capture_output=True).returncode != 0
        evs = collector.wait_for(fs.dev, lambda e: False, timeout=1.0)
    down = [e for e in evs if e.type is EventType.SHUTDOWN]
    assert len(down) == 1, evs
    # xfs_io's shutdown (no -f) does not flush the log: XFS_FSOP_GOING_FLAGS_NOLOGFLUSH.
    assert down[0].extra["reasons"] == ["log_io", "force_umount"] and down[0].comm == "xfs_io"
    assert down[0].extra["file"] == "fs/xfs/xfs_fsops.c" and down[0].line
    assert down[0].mount_point == fs.mount_point
    ro = [e for e in evs if e.type is EventType.READ_ONLY]
    assert len(ro) == 1, evs
    x = ro[0].extra
    assert x == {"read_only": True, "flag": "shutdown", "cause": "error", "caused_by_seq": down[0].seq}
    assert ro[0].cls is EventClass.ERR and ro[0].mount_point == fs.mount_point


# -- the kprobe rung -----------------------------------------------------------------

XFS_KPROBE_FUNCTIONS = {"xfs_corruption_error", "xfs_buf_verifier_error", "xfs_inode_verifier_error",
                        "xfs_fs_mark_sick", "xfs_fs_mark_corrupt", "xfs_group_mark_sick", "xfs_group_mark_corrupt",
                        "xfs_inode_mark_sick", "xfs_inode_mark_corrupt", "xfs_do_force_shutdown"}


def test_the_kprobe_rungs_programs_pass_this_kernels_verifier():
    """Loading needs no kprobe support: the kprobe programs, with this
    kernel's BTF offsets, are checked here even though they cannot attach."""
    from bcc import BPF
    from support.kernels import fake_kernel

    from fsev.kernel.btf import resolve
    from fsev.kernel.early import cflags
    from fsev.kernel.records import RecordClass
    from fsev.points.registry import kprobe_attachments, plan_probes, required_offsets, source
    from fsev.probes.program import ProgramConfig, bpf_dir

    # No shutdown tracepoint: xfs_shutdown plans its kprobe too.
    facts = fake_kernel(release="6.18", kprobes=True, kprobe_functions=XFS_KPROBE_FUNCTIONS,
                        tracepoints={"xfs:xfs_btree_corrupt"})
    plan = plan_probes(facts, {ProbePoint.XFS_ERROR, ProbePoint.XFS_SHUTDOWN})
    assert plan.kind(ProbePoint.XFS_ERROR) is RungKind.KPROBE and plan.kind(ProbePoint.XFS_SHUTDOWN) is RungKind.KPROBE
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR}), watch_all=False)
    specs = required_offsets(plan, cfg)
    got = resolve(specs, modules=("xfs",))
    assert not [s for s in specs if got[s] is None]
    b = BPF(text=source(plan, cfg, {s: int(got[s]) for s in specs}).encode(), cflags=cflags(bpf_dir()))
    try:
        names = [prog for _, prog in kprobe_attachments(plan, cfg)]
        assert set(names) == {f"kp_{f}" for f in XFS_KPROBE_FUNCTIONS}
        for name in names:
            assert b.load_func(name.encode(), BPF.KPROBE).fd >= 0
    finally:
        b.cleanup()


@pytest.mark.kprobe
def test_kprobe_rung_reports_a_verifier_failure_with_function_and_a_shutdown_with_read_only():
    """Debian 12's 6.1 (the VM guest): XFS is a module, with none of the 6.13+
    health tracepoints; the kprobe rung reads the verifier's name, the
    address it failed at and the inode marks from the function arguments."""
    subprocess.run(["modprobe", "xfs"], check=True)
    got = Collector()
    session = got.session
    if not session.facts.module_btf("xfs"):
        pytest.skip("the xfs module has no BTF (module BTF is Linux 5.11+): no kprobe rung, its log lines serve")
    try:
        session.start()
        assert session.plan.kind(ProbePoint.XFS_ERROR) is RungKind.KPROBE
        assert session.plan.kind(ProbePoint.XFS_SHUTDOWN) in (RungKind.KPROBE, RungKind.RAW_TRACEPOINT)
        with watched(got, *DAMAGE_DIR_BLOCK) as fs:
            assert read(fs.path("d")) != 0
            evs = got.wait_for(fs.dev, lambda e: [x for x in fs_errors(e) if x.extra.get("verifier") == "dir3_block"])
            subprocess.run(["xfs_io", "-x", "-c", "shutdown", fs.mount_point], check=True, capture_output=True)
            subprocess.run(["touch", fs.path("after")], capture_output=True)  # more shutdown calls, none reported
            evs = got.wait_for(fs.dev, lambda e: [x for x in e if x.type is EventType.READ_ONLY])
    finally:
        session.close()
    # (the directory's readahead fails its own verifier, dir3_data_reada, first)
    verifier = [e for e in fs_errors(evs) if e.extra.get("verifier") == "dir3_block"]
    assert verifier, evs
    v = verifier[0]
    # (6.1 verifies a read in its I/O completion work item: the task may be a kworker)
    assert v.rung == "kprobe" and v.fs_type == "xfs" and v.mount_point == fs.mount_point
    assert v.errno in (74, 117) and v.function and v.function.startswith("xfs_")
    # 6.1 marks few structures sick on read errors (most xfs_*_mark_sick calls
    # came with 6.8's health reporting); where it does, the mark is decoded.
    for mark in [e for e in fs_errors(evs) if e.extra.get("scope") == "inode"]:
        assert mark.inode == fs.inodes["d"] and mark.extra["structures"] == ["directory"]
    down = [e for e in evs if e.type is EventType.SHUTDOWN]
    assert len(down) == 1 and "force_umount" in down[0].extra["reasons"], evs
    ro = [e for e in evs if e.type is EventType.READ_ONLY]
    assert len(ro) == 1 and ro[0].extra["caused_by_seq"] == down[0].seq


def test_without_the_module_s_btf_the_kernel_log_rungs_report_the_error_and_the_shutdown():
    """Debian 11's 5.10 has no module BTF, so neither xfs rung that reads
    xfs's structs can start; the points fall to XFS's own lines (and so would
    an xfs module loaded after fsev started). Here the lines are 6.18's."""
    import dataclasses

    from fsev.points.registry import plan_probes

    got = Collector()
    session = got.session
    session.plan = plan_probes(dataclasses.replace(session.facts, modules_without_btf=frozenset({"xfs"})))
    for point in (ProbePoint.XFS_ERROR, ProbePoint.XFS_SHUTDOWN):
        assert session.plan.kind(point) is RungKind.TRACEPOINT, session.plan.rung(point)
    try:
        session.start()
        with watched(got, *DAMAGE_DIR_BLOCK) as fs:
            assert read(fs.path("d")) != 0
            evs = got.wait_for(fs.dev, lambda e: [x for x in fs_errors(e)
                                                  if x.function == "xfs_dir3_block_read_verify"])
            subprocess.run(["xfs_io", "-x", "-c", "shutdown", fs.mount_point], check=True, capture_output=True)
            evs = got.wait_for(fs.dev, lambda e: [x for x in e if x.type is EventType.READ_ONLY])
    finally:
        session.close()
    errors = fs_errors(evs)
    assert errors and all(e.rung == "kernel_log" and e.fs_type == "xfs" for e in errors), evs
    assert not [e for e in errors if "scope" in e.extra]  # health marks are the raw tracepoints'
    v = next(e for e in errors if e.function == "xfs_dir3_block_read_verify")
    assert v.extra["verifier"] == "dir3_block" and v.errno in (74, 117) and v.mount_point == fs.mount_point
    down = [e for e in evs if e.type is EventType.SHUTDOWN]
    assert len(down) == 1 and down[0].rung == "kernel_log" and down[0].comm == "xfs_io", evs
    assert "force_umount" in down[0].extra["reasons"] and down[0].function == "xfs_fs_goingdown"
    ro = [e for e in evs if e.type is EventType.READ_ONLY]
    assert len(ro) == 1 and ro[0].extra["caused_by_seq"] == down[0].seq, evs
