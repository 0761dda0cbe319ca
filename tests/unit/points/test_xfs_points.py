"""Points xfs_error and xfs_shutdown without a kernel: their ladders on
made-up kernels, the decoding of their records (health masks, shutdown
reasons), and the read-only state a shutdown leaves."""

from __future__ import annotations

import dataclasses

import pytest
from support.kernels import fake_kernel, raw_record

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.kernel.records import Field, RecordClass, RecordType, Rung, XfsReport, XfsScope
from fsev.linux.mountinfo import MountTable, parse_mountinfo
from fsev.points import xfs_error, xfs_shutdown
from fsev.points.read_only import ReadOnlyTracker
from fsev.points.registry import ProbePoint, decode, describe, dormant, plan_probes, preamble, required_offsets
from fsev.points.xfs_error import decode_mask
from fsev.points.xfs_shutdown import ShutdownOnce, decode_reasons, flags_table
from fsev.probes.ladder import RungKind
from fsev.probes.program import ProgramConfig

HEALTH_TPS = set(xfs_error.HEALTH_TRACEPOINTS) | {xfs_error.BTREE_TRACEPOINT, xfs_shutdown.TRACEPOINT}
XFS_618_FUNCTIONS = {"xfs_corruption_error", "xfs_buf_verifier_error", "xfs_inode_verifier_error",
                     "xfs_fs_mark_sick", "xfs_fs_mark_corrupt", "xfs_group_mark_sick", "xfs_group_mark_corrupt",
                     "xfs_inode_mark_sick", "xfs_inode_mark_corrupt", "xfs_do_force_shutdown"}
# This machine: 6.18, no kprobes, the health tracepoints.
HERE = fake_kernel(release="6.18", kprobes_why_not="no CONFIG_KPROBES", tracepoints=HEALTH_TPS)
# A stock 6.18 (kprobes and the tracepoints).
STOCK_618 = fake_kernel(release="6.18", kprobes=True, kprobe_functions=XFS_618_FUNCTIONS, tracepoints=HEALTH_TPS)
# A 6.1 with the xfs module loaded: kprobes, xfs_ag_mark_sick, none of the
# 6.13+ health tracepoints, nor the shutdown one (Debian 12's current 6.1 has
# that one, a stable backport: tests/vm/test_ladder.py).
DEBIAN_61 = fake_kernel(release="6.1.0-13-amd64", kprobes=True,
                        kprobe_functions={"xfs_corruption_error", "xfs_buf_verifier_error",
                                          "xfs_inode_verifier_error", "xfs_fs_mark_sick", "xfs_ag_mark_sick",
                                          "xfs_inode_mark_sick", "xfs_do_force_shutdown"},
                        tracepoints={xfs_error.BTREE_TRACEPOINT})
# Kprobes, but the xfs module not loaded yet: no function, no tracepoint.
NO_MODULE = fake_kernel(release="6.1.0-13-amd64", kprobes=True)
ALL = ProgramConfig(classes=frozenset({RecordClass.INFO, RecordClass.WARN, RecordClass.ERR, RecordClass.THR}),
                    watch_all=True)


# -- the ladders -----------------------------------------------------------------

def test_this_kernel_plans_the_raw_tracepoints_with_btree_corruption():
    plan = plan_probes(HERE)
    r = plan.rung(ProbePoint.XFS_ERROR)
    assert r.kind is RungKind.RAW_TRACEPOINT and "kprobe: no CONFIG_KPROBES" in r.skipped
    assert set(r.targets) == set(xfs_error.HEALTH_TRACEPOINTS) | {xfs_error.BTREE_TRACEPOINT}
    assert "file, line" in r.misses and "kernel log" in r.misses
    assert plan.kind(ProbePoint.XFS_SHUTDOWN) is RungKind.RAW_TRACEPOINT
    offsets = required_offsets(plan, ALL)
    assert "xfs_group.xg_gno" in offsets and "xfs_perag.pag_group.xg_gno" in offsets
    assert "xfs_perag.pag_agno" not in offsets
    text = preamble(plan, ALL, {})
    assert "#define FSEV_XFS_ERROR_RAW_TP 1" in text and "#define FSEV_XFS_ERROR_KPROBE 0" in text
    assert "#define ATTACH_XFS_GROUP_MARK_SICK 1" in text and "#define ATTACH_XFS_BTREE_CORRUPT 1" in text
    assert "#define FSEV_XFS_SHUTDOWN_RAW_TP 1" in text


def test_a_stock_kernel_plans_kprobes_for_errors_and_the_tracepoint_for_shutdown():
    plan = plan_probes(STOCK_618)
    r = plan.rung(ProbePoint.XFS_ERROR)
    assert r.kind is RungKind.KPROBE
    assert xfs_error.BTREE_TRACEPOINT in r.targets and "xfs_group_mark_sick" in r.targets
    kps = dict(xfs_error.POINT.kprobes(r, ALL))
    assert kps["xfs_corruption_error"] == "kp_xfs_corruption_error" and xfs_error.BTREE_TRACEPOINT not in kps
    # The shutdown tracepoint fires once; the kprobe would add nothing.
    assert plan.kind(ProbePoint.XFS_SHUTDOWN) is RungKind.RAW_TRACEPOINT


def test_debian_61_plans_kprobes_with_the_perag_layout_and_the_shutdown_kprobe():
    plan = plan_probes(DEBIAN_61)
    r = plan.rung(ProbePoint.XFS_ERROR)
    assert r.kind is RungKind.KPROBE and "xfs_ag_mark_sick" in r.targets and "xfs_group_mark_sick" not in r.targets
    offsets = required_offsets(plan, ALL)
    assert {"xfs_perag.pag_mount", "xfs_perag.pag_agno", "xfs_buf.b_ops", "xfs_buf_ops.name"} <= set(offsets)
    assert not [s for s in offsets if s.startswith("xfs_group.") or "pag_group" in s]
    text = preamble(plan, ALL, {})
    assert "#define ATTACH_XFS_AG_MARK_SICK 1" in text and "ATTACH_XFS_FS_MARK_CORRUPT" not in text
    s = plan.rung(ProbePoint.XFS_SHUTDOWN)
    assert s.kind is RungKind.KPROBE and s.targets == ("xfs_do_force_shutdown",)
    assert any("xfs_force_shutdown not present" in why for why in s.skipped)
    assert xfs_shutdown.POINT.kprobes(s, ALL) == [("xfs_do_force_shutdown", "kp_xfs_do_force_shutdown")]


def test_kprobes_without_the_xfs_module_or_tracepoints_plan_nothing_and_say_why():
    plan = plan_probes(NO_MODULE)
    r = plan.rung(ProbePoint.XFS_ERROR)
    assert r.kind is RungKind.NONE
    assert any("xfs module" in why for why in r.skipped), r.skipped
    assert plan.kind(ProbePoint.XFS_SHUTDOWN) is None
    assert required_offsets(plan, ALL) == [s for s in required_offsets(plan, ALL) if not s.startswith("xfs")]
    # Nothing to watch, not a blind spot: dormant (no alert) until an XFS filesystem is watched.
    shutdown = plan.rung(ProbePoint.XFS_SHUTDOWN)
    assert r.absent and shutdown is not None and shutdown.absent
    assert dormant(r, {"ext4", "tmpfs"}) and not dormant(r, {"ext4", "xfs"})


def test_the_xfs_module_loaded_without_a_usable_rung_is_not_dormant():
    r = plan_probes(fake_kernel(kprobes_why_not="off", tracepoints=HEALTH_TPS, raw_tracepoints=False)).rung(
        ProbePoint.XFS_ERROR)
    assert r is not None and r.kind is RungKind.NONE and not r.absent and not dormant(r, set())


def test_a_kernel_with_neither_kprobes_nor_raw_tracepoints_has_no_xfs_rung():
    plan = plan_probes(fake_kernel(kprobes_why_not="off", tracepoints=HEALTH_TPS, raw_tracepoints=False))
    assert plan.kind(ProbePoint.XFS_ERROR) is None and plan.kind(ProbePoint.XFS_SHUTDOWN) is None


def test_classes_without_err_compile_no_xfs_program():
    plan = plan_probes(HERE)
    info = ProgramConfig(classes=frozenset({RecordClass.INFO}), watch_all=True)
    assert not [s for s in required_offsets(plan, info) if s.startswith("xfs")]
    assert "ATTACH_XFS" not in preamble(plan, info, {})


# -- masks and reasons ------------------------------------------------------------

@pytest.mark.parametrize("scope, mask, names", [
    ("inode", 0x10, ["directory"]),
    ("inode", 0x1 | 0x2, ["inode_core", "bmbt_data"]),
    ("inode", 1 << 13, ["dirtree"]),
    ("ag", 0x400, ["inodes"]),
    ("ag", (1 << 4) | (1 << 1), ["agf", "bnobt"]),
    ("fs", 0x1, ["counters"]),
    ("rtgroup", 0x2, ["bitmap"]),
    ("ag", 1 << 20, ["bit20"]),
    ("fs", 0, []),
])
def test_health_masks_decode_to_structure_names(scope, mask, names):
    assert decode_mask(scope, mask) == names


# This kernel's print fmt of xfs:xfs_force_shutdown (Linux 6.18).
SHUTDOWN_FORMAT = ('print fmt: "dev %d:%d tag %s flags %s file %s line_num %d", ((unsigned int) ((REC->dev) >> 20)), '
                   '((unsigned int) ((REC->dev) & ((1U << 20) - 1))), __print_flags(REC->ptag, "|", { 0u, "none" }, '
                   '{ (1u << 0), "iflush" }, { (1u << 1), "logres" }, { (1u << 2), "aildelete" }, '
                   '{ (1u << 3) , "error_report" }, { (1u << 4), "corrupt" }, { (1u << 5), "ioerror" }, '
                   '{ (1u << 6), "logerror" }, { (1u << 7), "fsb_zero" }, { (1u << 8), "verifier" }), '
                   '__print_flags(REC->flags, "|", { (1u << 0), "metadata_io" }, { (1u << 1), "log_io" }, '
                   '{ (1u << 2), "force_umount" }, { (1u << 3), "corruption" }, { (1u << 5), "device_removed" }), '
                   '__get_str(fname), REC->line_num')


def test_the_reason_names_come_from_the_format_files_print_flags_table():
    table = flags_table(SHUTDOWN_FORMAT, "flags")
    assert table == {1: "metadata_io", 2: "log_io", 4: "force_umount", 8: "corruption", 32: "device_removed"}
    assert flags_table(SHUTDOWN_FORMAT, "ptag")[1 << 5] == "ioerror"
    assert decode_reasons(0x6, table) == ["log_io", "force_umount"]
    assert decode_reasons(0x10 | 0x1, table) == ["metadata_io", "bit4"]  # a bit this kernel does not name
    assert flags_table("print fmt: \"%d\", REC->x", "flags") == {}


# -- records -------------------------------------------------------------------------

def _xfs_record(report: int, scope: int = 0, **kw) -> bytes:
    return bytes(raw_record(type=RecordType.XFS_ERROR, cls=RecordClass.ERR, rung=Rung.RAW_TRACEPOINT,
                            dev=kernel_dev(7, 1), arg=report | scope << 8, **kw))


def test_an_inode_mark_decodes_to_health_scope_inode_and_structures():
    ev = decode(_xfs_record(XfsReport.MARK_SICK, XfsScope.INODE, value=0x10, ino=131,
                            fields=Field.TEXT | Field.INODE, comm=b"ls"), 1, Clock())
    assert ev.type is EventType.FS_ERROR and ev.cls is EventClass.ERR and ev.fs_type == "xfs"
    assert ev.inode == 131 and ev.dev == "7:1" and ev.function is None
    assert ev.extra == {"health": "sick", "scope": "inode", "structures": ["directory"]}
    assert describe(ev) == "sick inode 131 directory"


def test_a_group_mark_carries_its_group_and_a_corrupt_mark_says_so():
    ev = decode(_xfs_record(XfsReport.MARK_CORRUPT, XfsScope.RTGROUP, value=0x1, direction=3, fields=Field.TEXT),
                1, Clock())
    assert ev.extra == {"health": "corrupt", "scope": "rtgroup", "group": 3, "structures": ["super"]}


def test_a_btree_record_names_the_btree_its_level_and_group():
    ev = decode(_xfs_record(XfsReport.BTREE_CORRUPT, XfsScope.AG, value=8, level=2, direction=0,
                            func=b"xfs_bnobt", fields=Field.TEXT), 1, Clock())
    assert ev.extra == {"scope": "ag", "group": 0, "btree": "bnobt", "btree_level": 1, "daddr": 8}


def test_a_kprobe_corruption_report_has_file_line_and_tag():
    ev = decode(_xfs_record(XfsReport.CORRUPTION_ERROR, func=b"fs/xfs/libxfs/xfs_dir2_block.c",
                            path=b"xfs_dir3_block_read", line=123, fields=Field.TEXT | Field.LINE),
                1, Clock())
    assert ev.extra == {"file": "fs/xfs/libxfs/xfs_dir2_block.c", "tag": "xfs_dir3_block_read"}
    assert ev.line == 123 and "fs/xfs/libxfs/xfs_dir2_block.c:123" in describe(ev)


def test_a_verifier_failure_has_the_verifier_and_errno():
    ev = decode(_xfs_record(XfsReport.VERIFIER_ERROR, XfsScope.AG, func=b"xfs_dir3_block", err=74, direction=1,
                            fields=Field.TEXT | Field.ERRNO), 1, Clock())
    assert ev.extra["verifier"] == "dir3_block" and ev.extra["group"] == 1
    assert ev.errno == 74 and ev.errno_name == "EBADMSG"


def test_an_address_names_the_kernel_function_it_points_into(monkeypatch):
    monkeypatch.setattr(xfs_error, "_kallsyms", lambda: ([0x1000, 0x2000], ["xfs_btree_check_block", "other"]))
    assert xfs_error.symbolize(0x1010) == "xfs_btree_check_block"
    assert xfs_error.symbolize(0) is None and xfs_error.symbolize(0x10) is None


def test_ext4_fs_errors_keep_ext4s_text():
    ev = Event(1, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", fs_type="ext4",
               function="htree_dirblock_to_tree", line=12)
    assert describe(ev) == "htree_dirblock_to_tree:12"


def test_a_shutdown_record_decodes_reasons_and_file():
    raw = bytes(raw_record(type=RecordType.SHUTDOWN, cls=RecordClass.ERR, rung=Rung.RAW_TRACEPOINT,
                           dev=kernel_dev(7, 1), value=0x1, func=b"fs/xfs/xfs_trans_buf.c", line=311,
                           fields=Field.LINE))
    ev = decode(raw, 1, Clock())
    assert ev.type is EventType.SHUTDOWN and ev.cls is EventClass.ERR and ev.fs_type == "xfs"
    assert ev.extra == {"reasons": ["metadata_io"], "file": "fs/xfs/xfs_trans_buf.c"} and ev.line == 311
    assert describe(ev) == "shut down: metadata_io at fs/xfs/xfs_trans_buf.c:311"


# -- the user-space halves -------------------------------------------------------------

MI = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
50 22 7:1 / /mnt/x rw,relatime shared:30 - xfs /dev/loop1 rw,attr2,inode64
51 22 7:1 / /mnt/y rw,relatime shared:31 - xfs /dev/loop1 rw,attr2,inode64
"""


def _shutdown(seq: int, rung: str = "raw_tracepoint", mnt_id: int = 50) -> Event:
    return Event(seq, 0, 0.0, EventClass.ERR, EventType.SHUTDOWN, rung, dev="7:1", mount_point="/mnt/x",
                 fs_type="xfs", mnt_id=mnt_id, pid=9, comm="xfs_io", extra={"reasons": ["force_umount"]})


def _make(**kw) -> Event:
    return Event(0, 0, 0.0, **kw)


def test_a_shutdown_leaves_one_read_only_event_linked_to_it_and_mountinfo_does_not_undo_it():
    table = MountTable(parse_mountinfo(MI))
    ro = ReadOnlyTracker(table, lambda m: True, lambda: 100.0)
    ro.on_shutdown(_shutdown(7), _make)
    (ev,) = ro.poll(_make)
    assert ev.type is EventType.READ_ONLY and ev.cls is EventClass.ERR and ev.mount_point == "/mnt/x"
    assert ev.extra == {"read_only": True, "flag": "shutdown", "cause": "error", "caused_by_seq": 7}
    assert ev.comm == "xfs_io" and ev.rung == "raw_tracepoint"
    ro.on_shutdown(_shutdown(8), _make)  # a second report of the same shutdown: nothing new
    table.generation += 1  # mountinfo changed elsewhere; XFS's still says rw
    assert ro.poll(_make) == []


def test_the_kprobe_rung_reports_the_first_shutdown_call_per_mount_only():
    once = ShutdownOnce(None)  # type: ignore[arg-type]  # the half reads nothing from its context
    assert once.process(_shutdown(1, "kprobe")) and not once.process(_shutdown(2, "kprobe"))
    assert once.process(_shutdown(3, "kprobe", mnt_id=60))  # mounted again: a new shutdown
    assert once.process(_shutdown(4)) and once.process(_shutdown(5))  # the tracepoint fires once anyway


# -- the kernel log (raw tracepoint rung) --------------------------------------------

@pytest.mark.parametrize("body, truncated, want", [
    ("Metadata CRC error detected at xfs_dir3_block_read_verify+0x9e/0x100, xfs_dir3_block block 0x78 ", False,
     {"function": "xfs_dir3_block_read_verify", "errno": 74, "extra": {"verifier": "dir3_block", "daddr": 0x78}}),
    ("Metadata corruption detected at xfs_dinode_verify+0xa0/0x7e0 [xfs], inode 0x83 dinode", False,
     {"function": "xfs_dinode_verify", "errno": 117, "inode": 0x83, "extra": {"verifier": "inode"}}),
    # cut by the record's text length: the number that ends it may be short
    ("Metadata corruption detected at xfs_btree_check_block+0x10/0x20, xfs_bnobt block 0x1", True,
     {"function": "xfs_btree_check_block", "errno": 117, "extra": {}}),
    ("Internal error ltbno + ltlen > bno at line 1933 of file fs/xfs/libxfs/xfs_alloc.c.  Caller "
     "xfs_free_ag_extent+0x3f6/0x870", False,
     {"function": "xfs_free_ag_extent", "line": 1933,
      "extra": {"file": "fs/xfs/libxfs/xfs_alloc.c", "tag": "ltbno + ltlen > bno"}}),
    ("Unmount and run xfs_repair", False, None),
    ("Metadata I/O Error (0x1) detected at xfs_trans_read_buf_map+0x1c1/0x330", False, None),
])
def test_xfs_corruption_lines_parse_to_function_verifier_and_errno(body, truncated, want):
    assert xfs_error.log_fields(body, truncated) == want


def test_the_log_reader_is_made_on_the_raw_tracepoint_rung_only():
    from fsev.events.clock import Clock as C
    from fsev.probes.point import SessionContext

    def ctx(facts):
        return SessionContext(plan=plan_probes(facts), classes=frozenset({EventClass.ERR}),
                              table=MountTable(parse_mountinfo(MI)), clock=C(), watched=[], probes=None,
                              now=lambda: 0.0, make_event=C().user_event, mount_watched=lambda m: True)

    here = ctx(fake_kernel(kprobes_why_not="x", tracepoints=HEALTH_TPS | {"printk:console"}))
    reader = xfs_error.POINT.monitor(here)
    assert reader is not None and here.log_readers["xfs"]
    from fsev.linux.kernel_log import parse_line
    line = parse_line("XFS (loop1): Metadata CRC error detected at xfs_dir3_block_read_verify+0x9e/0x100, "
                      "xfs_dir3_block block 0x78 ", ts_ns=5, pid=3, comm="ls")
    line = dataclasses.replace(line, dev="7:1")
    (ev,) = reader.read(line)
    assert ev.type is EventType.FS_ERROR and ev.rung == "kernel_log" and ev.ts_ns == 5
    assert ev.wall_time == here.clock.wall(5)
    assert ev.mount_point == "/mnt/x" and ev.fs_type == "xfs" and ev.function == "xfs_dir3_block_read_verify"
    assert ev.extra == {"verifier": "dir3_block", "daddr": 0x78} and ev.errno == 74
    stock = ctx(fake_kernel(kprobes=True, kprobe_functions=XFS_618_FUNCTIONS, tracepoints={"printk:console"}))
    assert xfs_error.POINT.monitor(stock) is None and not stock.log_readers


def test_a_mount_id_reused_for_a_new_mount_starts_without_the_old_shutdown():
    table = MountTable(parse_mountinfo(MI))
    ro = ReadOnlyTracker(table, lambda m: True, lambda: 100.0)
    ro.on_shutdown(_shutdown(7), _make)
    assert len(ro.poll(_make)) == 1
    # Unmounted and another filesystem mounted elsewhere before the table was
    # read again: the kernel gave the new mount the old one's id.
    table._index(parse_mountinfo(MI.replace("/mnt/x rw", "/mnt/other rw")))
    table.generation += 1
    assert ro.poll(_make) == []
    ro.on_shutdown(_shutdown(9, mnt_id=50), _make)
    (ev,) = ro.poll(_make)
    assert ev.extra["caused_by_seq"] == 9 and ev.mount_point == "/mnt/other"


# -- kernels whose xfs module has no BTF (5.10), and the kernel log rungs ------------

# Debian 11's 5.10 with xfs and btrfs loaded: kprobes and their functions, but
# no module BTF (5.11+), so neither rung that reads their structs can start.
DEBIAN_510 = fake_kernel(release="5.10.0-30-cloud-amd64", kprobes=True,
                         kprobe_functions={"xfs_corruption_error", "xfs_buf_verifier_error", "xfs_do_force_shutdown",
                                           "__btrfs_handle_fs_error", "__btrfs_abort_transaction",
                                           "btrfs_dev_stat_inc_and_print"},
                         tracepoints={xfs_error.BTREE_TRACEPOINT, "printk:console"},
                         modules_without_btf=frozenset({"xfs", "btrfs"}))


def test_modules_without_btf_plan_the_kernel_log_and_read_no_struct_of_theirs():
    plan = plan_probes(DEBIAN_510)
    for point, kind in ((ProbePoint.XFS_ERROR, RungKind.TRACEPOINT), (ProbePoint.XFS_SHUTDOWN, RungKind.TRACEPOINT),
                        (ProbePoint.BTRFS_ERROR, RungKind.TRACEPOINT), (ProbePoint.BTRFS_DEV_STATS, RungKind.POLLED)):
        r = plan.rung(point)
        assert r is not None and r.kind is kind, (point, r)
        assert any("module has no BTF (module BTF is Linux 5.11+)" in why for why in r.skipped), (point, r.skipped)
    assert not [s for s in required_offsets(plan, ALL) if s.startswith(("xfs", "btrfs"))]
    # With the BTF there, the same kernel plans the kprobes.
    there = plan_probes(dataclasses.replace(DEBIAN_510, modules_without_btf=frozenset()))
    assert there.kind(ProbePoint.XFS_ERROR) is RungKind.KPROBE and there.kind(ProbePoint.BTRFS_ERROR) is RungKind.KPROBE


def test_shutdown_lines_of_5_10_and_of_5_18_on_give_reasons_and_place():
    old = xfs_shutdown.shutdown_fields("xfs_do_force_shutdown(0x8) called from line 1097 of file fs/xfs/xfs_trans.c. "
                                       "Return address = 00000000a1b2c3d4")
    assert old == {"flags": 8, "function": None, "file": "fs/xfs/xfs_trans.c", "line": 1097}
    new = xfs_shutdown.shutdown_fields("Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x128/0x150 "
                                       "[xfs] (fs/xfs/xfs_trans.c:1097).  Shutting down filesystem.")
    assert new == {"flags": 8, "function": "xfs_trans_cancel", "file": "fs/xfs/xfs_trans.c", "line": 1097}
    cut = xfs_shutdown.shutdown_fields("Metadata I/O Error (0x1) detected at xfs_trans_read_buf_map+0x1e5/0x2b0 "
                                       "[xfs] (fs/xfs/xfs_tr")  # 111 bytes kept: the place is cut off
    assert cut == {"flags": 1, "function": "xfs_trans_read_buf_map"}
    assert xfs_shutdown.shutdown_fields("Please unmount the filesystem and rectify the problem(s)") is None
    assert xfs_shutdown.decode_reasons(8, xfs_shutdown.SHUTDOWN_REASONS) == ["corruption"]


def test_the_shutdown_log_reader_reports_the_first_call_per_mount():
    from fsev.events.clock import Clock as C
    from fsev.linux.kernel_log import parse_line
    from fsev.probes.point import SessionContext

    facts = dataclasses.replace(DEBIAN_510, tracepoints=DEBIAN_510.tracepoints | {"printk:console"})
    here = SessionContext(plan=plan_probes(facts), classes=frozenset({EventClass.ERR}),
                          table=MountTable(parse_mountinfo(MI)), clock=C(), watched=[], probes=None,
                          now=lambda: 0.0, make_event=C().user_event, mount_watched=lambda m: True)
    reader = xfs_shutdown.POINT.monitor(here)
    assert isinstance(reader, xfs_shutdown.ShutdownLogReader) and reader.read in here.log_readers["xfs"]

    def line(text: str):  # noqa: ANN202
        got = parse_line("XFS (loop1): " + text, ts_ns=7, pid=3, comm="cp")
        assert got is not None
        return dataclasses.replace(got, dev="7:1")

    (ev,) = reader.read(line("xfs_do_force_shutdown(0x2) called from line 1263 of file fs/xfs/xfs_log.c. "
                             "Return address = 0000000012345678"))
    assert ev.type is EventType.SHUTDOWN and ev.rung == "kernel_log" and ev.ts_ns == 7 and ev.comm == "cp"
    assert ev.extra["reasons"] == ["log_io"] or ev.extra["reasons"] == xfs_shutdown.decode_reasons(2)
    assert ev.extra["file"] == "fs/xfs/xfs_log.c" and ev.line == 1263 and ev.mount_point == "/mnt/x"
    # 5.10 prints it on every call: the filesystem is down already.
    assert reader.read(line("xfs_do_force_shutdown(0x8) called from line 1097 of file fs/xfs/xfs_trans.c. "
                            "Return address = 0000000012345678")) == []
    assert reader.read(line("Please unmount the filesystem and rectify the problem(s)")) == []
