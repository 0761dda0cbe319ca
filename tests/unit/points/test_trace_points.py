"""Pure logic, no root: decoding, planning, mount table, preamble, rendering."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from support.kernels import fake_kernel, raw_record

from fsev.errors import FsevError
from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.device import kernel_dev
from fsev.events.inert import inert
from fsev.kernel.records import DecodeError, Field, RecordClass, RecordType, Rung
from fsev.linux.mountinfo import MountTable, parse_mountinfo, parse_mountinfo_line
from fsev.points.registry import ProbePoint, decode, kprobe_attachments, plan_probes, preamble, required_offsets
from fsev.probes.ladder import RungKind
from fsev.probes.program import ProgramConfig
from fsev.session.pipeline import Enricher
from fsev.session.selection import parse_classes, resolve_mounts
from fsev.session.sinks import JsonSink, human_line

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
44 22 7:0 / /mnt/data rw,relatime shared:30 - ext4 /dev/loop0 rw,errors=continue
45 22 0:39 / /mnt/with\\040space rw,relatime shared:31 - tmpfs tmpfs rw,size=8192k
46 22 0:21 / /proc rw,nosuid - proc proc rw
47 22 7:0 /sub /srv/bind ro,relatime shared:30 - ext4 /dev/loop0 rw,errors=continue
"""

KPROBE_KERNEL = fake_kernel(
    release="6.1.0-13-cloud-amd64", kprobes=True,
    kprobe_functions=frozenset({"__ext4_error", "__ext4_error_inode", "__ext4_std_error", "cleanup_mnt"}),
    tracepoints=frozenset({"ext4:ext4_error", "syscalls:sys_enter_umount", "syscalls:sys_exit_umount"}),
)
NO_KPROBE_KERNEL = fake_kernel(
    release="6.18.44-fc", kprobes=False, kprobes_why_not="kernel built without CONFIG_KPROBES",
    tracepoints=frozenset({"ext4:ext4_error", "syscalls:sys_enter_umount", "syscalls:sys_exit_umount"}),
)


record = raw_record


# -- decoding --------------------------------------------------------------

def test_decode_tracepoint_fs_error_leaves_what_the_rung_cannot_know_empty():
    r = record(ts_ns=5_000_000_000, type=RecordType.FS_ERROR, cls=RecordClass.ERR, rung=Rung.TRACEPOINT,
               fields=Field.LINE | Field.FUNC, dev=kernel_dev(7, 0), pid=42, tgid=41, line=1051,
               comm=b"ls", func=b"htree_dirblock_to_tree", err=99, ino=12)
    ev = decode(bytes(r), 7, Clock())
    assert (ev.seq, ev.cls, ev.type, ev.rung) == (7, EventClass.ERR, EventType.FS_ERROR, "tracepoint")
    assert (ev.dev, ev.pid, ev.tgid, ev.comm) == ("7:0", 42, 41, "ls")
    assert (ev.function, ev.line) == ("htree_dirblock_to_tree", 1051)
    assert ev.errno is None and ev.inode is None and ev.block is None  # flags say absent


def test_decode_kprobe_fs_error_carries_errno_inode_block():
    r = record(type=RecordType.FS_ERROR, cls=RecordClass.ERR, rung=Rung.KPROBE,
               fields=Field.LINE | Field.FUNC | Field.ERRNO | Field.INODE | Field.BLOCK,
               dev=kernel_dev(8, 1), err=117, ino=12, block=1549, func=b"ext4_lookup", line=1799)
    ev = decode(bytes(r), 1, Clock())
    assert (ev.errno, ev.errno_name, ev.inode, ev.block) == (117, "EUCLEAN", 12, 1549)
    d = ev.to_json_dict()
    assert d["errno_name"] == "EUCLEAN" and d["rung"] == "kprobe"


def test_decode_umount_record():
    r = record(type=RecordType.UMOUNT, cls=RecordClass.INFO, rung=Rung.TRACEPOINT,
               fields=Field.PATH | Field.LAZY, path=b"/mnt/data", comm=b"umount")
    ev = decode(bytes(r), 1, Clock())
    assert ev.type is EventType.UMOUNT and ev.path == "/mnt/data" and ev.lazy is True and ev.dev is None


@pytest.mark.parametrize("cls, typ", [(0, 1), (3, 0), (9, 1), (3, 77)])
def test_zeroed_or_unknown_records_never_decode(cls, typ):
    with pytest.raises(DecodeError):
        decode(bytes(record(cls=cls, type=typ)), 1, Clock())


def test_clock_maps_monotonic_to_wall_time():
    import time

    c = Clock()
    assert abs(c.wall(time.monotonic_ns()) - time.time()) < 0.05


# -- mount table and enrichment ---------------------------------------------

def test_mountinfo_parsing_unescapes_and_splits():
    ms = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in ms] == ["/", "/mnt/data", "/mnt/with space", "/proc", "/srv/bind"]
    m = ms[1]
    assert (m.mnt_id, m.dev, m.fs_type, m.source) == (44, "7:0", "ext4", "/dev/loop0")
    assert "errors=continue" in m.super_options
    assert ms[4].read_only and not ms[1].read_only
    assert ms[3].pseudo and not ms[2].pseudo


def test_mountinfo_line_with_optional_fields_and_bad_lines():
    m = parse_mountinfo_line("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:5 - ext3 /dev/root rw,errors=continue")
    assert (m.root, m.mount_point, m.fs_type) == ("/mnt1", "/mnt2", "ext3")
    with pytest.raises(ValueError):
        parse_mountinfo_line("garbage without separator")


def _table(text: str = MOUNTINFO) -> MountTable:
    return MountTable(parse_mountinfo(text))


def test_enricher_prefers_watched_mount_and_remembers_departed_ones():
    t = _table()
    ev = Event(1, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev="7:0")
    assert Enricher(t).enrich(ev).mount_point == "/mnt/data"
    ev2 = Event(1, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev="7:0")
    assert Enricher(t, frozenset({"/srv/bind"})).enrich(ev2).mount_point == "/srv/bind"
    # After the mount is gone, an umount record still finds it by its path.
    t._index(parse_mountinfo(MOUNTINFO.splitlines()[0] + "\n"))
    gone = Event(1, 0, 0.0, EventClass.INFO, EventType.UMOUNT, "tracepoint", path="/mnt/with space")
    e = Enricher(t).enrich(gone)
    assert (e.mount_point, e.fs_type, e.dev) == ("/mnt/with space", "tmpfs", "0:39")


def test_enricher_cache_forgets_on_refresh():
    t = _table()
    en = Enricher(t)
    mk = lambda: Event(1, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev="7:0")  # noqa: E731
    assert en.enrich(mk()).mount_point == "/mnt/data"
    t._index(parse_mountinfo(MOUNTINFO.replace("/mnt/data", "/mnt/moved")))
    assert en.enrich(mk()).mount_point == "/mnt/moved"


def test_resolve_mounts_rejects_non_mount_points(tmp_path):
    t = MountTable.read()
    assert resolve_mounts(["/"], t)[0].mount_point == "/"
    with pytest.raises(FsevError, match="not a mount point"):
        resolve_mounts([str(tmp_path)], t)
    with pytest.raises(FsevError, match="no such file"):
        resolve_mounts([str(tmp_path / "nope")], t)


def test_parse_classes():
    assert parse_classes(None) == frozenset(EventClass)
    assert parse_classes("err, thr") == {EventClass.ERR, EventClass.THR}
    with pytest.raises(FsevError, match="unknown event class 'oops'"):
        parse_classes("err,oops")


# -- planning ---------------------------------------------------------------

def test_plan_prefers_kprobes_when_the_kernel_has_them():
    plan = plan_probes(KPROBE_KERNEL)
    ext4 = plan.rung(ProbePoint.EXT4_ERROR)
    assert ext4.kind is RungKind.KPROBE
    assert ext4.targets == ("__ext4_error", "__ext4_error_inode", "__ext4_std_error")  # file variant absent
    assert plan.rung(ProbePoint.MOUNT_DROP).targets == ("cleanup_mnt",)
    assert not ext4.skipped


def test_plan_falls_back_to_tracepoints_and_says_why():
    plan = plan_probes(NO_KPROBE_KERNEL, {ProbePoint.EXT4_ERROR, ProbePoint.MOUNT_DROP})
    for point in (ProbePoint.EXT4_ERROR, ProbePoint.MOUNT_DROP):
        r = plan.rung(point)
        assert r.kind is RungKind.TRACEPOINT
        assert any("CONFIG_KPROBES" in s for s in r.skipped)
        assert r.misses
    assert plan.summary() == {"ext4_error": "tracepoint", "mount_drop": "tracepoint"}


def test_plan_kprobes_present_but_function_inlined():
    facts = fake_kernel(release="x", kprobes=True, kprobe_functions=frozenset({"cleanup_mnt"}),
                        tracepoints=NO_KPROBE_KERNEL.tracepoints)
    r = plan_probes(facts).rung(ProbePoint.EXT4_ERROR)
    assert r.kind is RungKind.TRACEPOINT and "__ext4_error, __ext4_error_inode not a traceable symbol" in r.skipped[0]


def test_plan_nothing_usable():
    facts = fake_kernel(release="x", kprobes=False, kprobes_why_not="no", tracepoints=frozenset())
    plan = plan_probes(facts, {ProbePoint.EXT4_ERROR, ProbePoint.MOUNT_DROP})
    assert all(not r.usable for r in plan.rungs)
    assert all(len(r.skipped) == 2 for r in plan.rungs)
    # free-space thresholds always have a rung left: statfs polling
    assert all(r.kind is RungKind.POLLED for r in plan_probes(facts).rungs if r.point.value.startswith("thr_"))


# -- program preamble -------------------------------------------------------

def test_preamble_for_the_tracepoint_rungs_needs_no_offsets():
    plan = plan_probes(NO_KPROBE_KERNEL)
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR}), watch_all=False, ringbuf_pages=8)
    assert required_offsets(plan) == []
    p = preamble(plan, cfg, {})
    assert "#define FSEV_EXT4_ERROR_TRACEPOINT 1" in p
    assert "#define FSEV_MOUNT_DROP_TRACEPOINT 0" in p  # info not asked for: not even compiled
    assert "#define FSEV_CLASS_MASK 0x8" in p and "#define FSEV_WATCH_ALL 0" in p
    assert "#define FSEV_RINGBUF_PAGES 8" in p
    assert "#define FSEV_KPROBES 0" in p  # no kprobe program: bpf/common.h skips ptrace.h


def test_preamble_for_kprobes_carries_btf_offsets_and_arg_positions():
    plan = plan_probes(KPROBE_KERNEL)
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR, RecordClass.INFO}), watch_all=True)
    specs = required_offsets(plan)
    assert "mount.mnt.mnt_sb" in specs and "inode.i_ino" in specs
    p = preamble(plan, cfg, {s: i * 8 for i, s in enumerate(specs)})
    assert "#define OFF_MOUNT_MNT_MNT_SB" in p and "#define ATTACH___EXT4_ERROR_INODE 1" in p
    assert "#define ARG___EXT4_ERROR_ERRNO(ctx) PT_REGS_PARM5(ctx)" in p
    assert ("cleanup_mnt", "kp_cleanup_mnt") in kprobe_attachments(plan, cfg)
    assert "#define FSEV_KPROBES 1" in p  # struct pt_regs for PT_REGS_PARMn()


@pytest.mark.parametrize(("release", "btf_param", "errno_arg"), [
    ("5.10.0-32-cloud-amd64", None, 4),   # Debian 11, no BTF answer: the 5.8-5.10 order by release
    ("5.10.0-32-cloud-amd64", 4, 4),      # Debian 11's BTF prototype says the same
    ("5.10.0-32-cloud-amd64", 5, 5),      # a stable backport of force_ro: the prototype wins
    ("6.1.0-13-cloud-amd64", None, 5),
    ("6.12.48+deb13-cloud-amd64", 5, 5),
])
def test_ext4_error_errno_argument_follows_the_kernel(release, btf_param, errno_arg):
    kernel = fake_kernel(release=release, kprobes=True, kprobe_functions=KPROBE_KERNEL.kprobe_functions,
                         tracepoints=KPROBE_KERNEL.tracepoints, ext4_error_errno_param=btf_param)
    plan = plan_probes(kernel)
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR}), watch_all=True)
    p = preamble(plan, cfg, {s: i * 8 for i, s in enumerate(required_offsets(plan))})
    assert f"#define ARG___EXT4_ERROR_ERRNO(ctx) PT_REGS_PARM{errno_arg}(ctx)" in p
    assert f"#define ARG___EXT4_ERROR_BLOCK(ctx) PT_REGS_PARM{errno_arg + 1}(ctx)" in p
    assert f"argument {errno_arg}" in plan.rung("ext4_error").gives


def test_ext4_shutdown_bit_at_its_known_value_when_btf_dropped_the_enum():
    """Debian 13's 6.12 BTF has ext4_sb_info.s_ext4_flags but no EXT4_FLAGS_*
    enum; errors=remount-ro sets only EXT4_FLAGS_SHUTDOWN there."""
    kernel = fake_kernel(release="6.12.117+deb13-cloud-amd64", kprobes=True,
                         kprobe_functions={"ext4_handle_error", "reconfigure_super"},
                         ext4_shutdown_bit=1, ext4_shutdown_known=True)
    plan = plan_probes(kernel)
    cfg = ProgramConfig(classes=frozenset({RecordClass.ERR}), watch_all=True)
    specs = required_offsets(plan, cfg)
    assert "ext4_sb_info.s_ext4_flags" in specs and "enum:EXT4_FLAGS_SHUTDOWN" not in specs
    p = preamble(plan, cfg, {s: 8 for s in specs})
    assert "#define OFF_ENUM_EXT4_FLAGS_SHUTDOWN 1" in p
    assert "its known value" in plan.rung("read_only").gives


def test_tmpfs_without_folios_or_a_shmem_pair_is_polled():
    """Debian 11's 5.10: no shmem accounting pair fsev knows, and the page cache
    tracepoints pass a struct page, not the folio the raw rung reads."""
    kernel = fake_kernel(release="5.10.0-32-cloud-amd64", kprobes=True, folio=False,
                         tracepoints={"filemap:mm_filemap_delete_from_page_cache", "pagemap:mm_lru_insertion"})
    rung = plan_probes(kernel).rung("thr_tmpfs")
    assert rung.kind.value == "polled" and any("no struct folio" in s for s in rung.skipped), rung


def test_ring_buffer_pages_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        ProgramConfig(classes=frozenset(), watch_all=True, ringbuf_pages=3)


# -- output -----------------------------------------------------------------

def test_json_line_is_snake_case_with_exact_class_values():
    import io

    buf = io.StringIO()
    ev = Event(3, 10, 1.5, EventClass.WARN, EventType.LOSS, "ringbuf", lost=4, lost_total=9, since_wall_time=1.0)
    JsonSink(buf).emit(ev)
    d = json.loads(buf.getvalue())
    assert d == {"seq": 3, "ts_ns": 10, "wall_time": 1.5, "class": "warn", "type": "loss", "rung": "ringbuf",
                 "lost": 4, "lost_total": 9, "since_wall_time": 1.0}
    assert Event.from_json_dict(d) == ev


def test_human_line_is_inert_against_markup_and_escapes():
    ev = Event(1, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev="7:0",
               mount_point="/mnt/[red]x[/red]\x1b[2J", comm="[bold]evil\x1b[2J", function="f", line=3, pid=9)
    con = Console(width=200, force_terminal=True, color_system=None, record=True)
    con.print(human_line(ev))
    text = con.export_text()
    assert "/mnt/[red]x[/red]\\x1b[2J" in text and "[bold]evil\\x1b[2J" in text
    assert "\x1b" not in text


def test_inert():
    assert inert("plain") == "plain"
    assert inert("a\x1b[2Jb\n") == "a\\x1b[2Jb\\x0a"
    assert inert(None) == ""


def test_plan_kprobe_rung_needs_the_central_ext4_error_functions():
    facts = fake_kernel(release="x", kprobes=True, kprobe_functions=frozenset({"__ext4_error", "cleanup_mnt"}),
                        tracepoints=NO_KPROBE_KERNEL.tracepoints)
    r = plan_probes(facts).rung(ProbePoint.EXT4_ERROR)
    assert r.kind is RungKind.TRACEPOINT and "__ext4_error_inode not a traceable" in r.skipped[0]


def test_struct_format_is_derived_from_the_ctypes_mirror():
    from fsev.kernel.records import RECORD_FIELDS, RECORD_SIZE, RECORD_STRUCT

    r = record(ts_ns=1, ino=2, block=3, value=4, type=5, cls=6, rung=7, fields=8, dev=9, pid=10, tgid=11,
               err=-12, line=13, mnt_id=14, level=15, direction=16, comm=b"c", func=b"f", path=b"p")
    assert RECORD_STRUCT.size == RECORD_SIZE
    got = dict(zip(RECORD_FIELDS, RECORD_STRUCT.unpack(bytes(r))))
    assert [got[k] for k in RECORD_FIELDS[:16]] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -12, 13, 14, 15, 16]
    assert got["comm"].rstrip(b"\0") == b"c" and got["path"].rstrip(b"\0") == b"p"
