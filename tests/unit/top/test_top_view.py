"""The `fsev top` screen as a pure function of the model, rendered to a fixed-width console."""

from __future__ import annotations

import io
import re

from rich.console import Console
from support.top_data import HOSTILE, NOW, ev, lines_with, model, mounts, screen, thr_ev

from fsev.events import EventClass, EventType
from fsev.thresholds.levels import Levels
from fsev.top.fs_snapshot import Ext4ErrorState, FsStats, RecordedError
from fsev.top.model import TopModel
from fsev.top.view import feed_line, header, render, usage_bar


def _row(text: str, mount_point: str) -> str:
    rows = [l for l in text.splitlines() if l.startswith(mount_point + " ")]
    assert len(rows) == 1, text
    return rows[0]


def test_mount_rows_show_every_column():
    m = model()
    m.apply(ev(at=NOW - 12), NOW - 12)
    text = screen(m, width=200)
    head = lines_with(text, "MOUNT")[0]
    for title in ("TYPE", "DEVICE", "SIZE", "USAGE", "AVAIL", "THR", "RO", "ERRORS", "LAST ERROR", "LAST EV"):
        assert title in head
    row = _row(text, "/srv/data")
    assert re.search(r"/srv/data\s+ext4\s+/dev/loop0 7:0\s+31M\s+█{9}░{3}\s+75%\s+2000\s+-\s+rw\s+1\s+"
                     r"trigger_test_error:129 12s\s+12s$", row), row
    root = _row(text, "/")
    assert re.search(r"ext4\s+/dev/vda 254:0\s+3\.8G\s+█{5}░{7}\s+42%\s+550000\s+-\s+rw\s+0\s+-\s+-$", root), root


def test_pseudo_filesystems_hidden_unless_all():
    assert not lines_with(screen(model()), "/proc")
    shown = screen(model(show_all=True))
    assert re.search(r"^/proc\s+proc\s+proc 0:21", shown, re.M), shown


def test_watched_mounts_only_when_mount_given():
    text = screen(model(watched=["/srv/data"]))
    assert _row(text, "/srv/data")
    assert not lines_with(text, "/dev/shm") and not lines_with(text, "/dev/vda")


def test_usage_bar_and_threshold_marks():
    m = model(levels={"0:51": Levels(512, 128)})  # /mnt/thr: 2048 blocks, usable 2048
    row = next(r for r in m.rows if r.mount.mount_point == "/mnt/thr")
    bar = usage_bar(row, m.state_of(row))
    # half used; L1 (512 avail) sits at 75 % of the bar (cell 9), L2 (128 avail) at 93.75 % (cell 11)
    assert bar.plain == "██████░░░1░2  50%"
    styles = {str(s.style) for s in bar.spans}
    assert "bold black on yellow" in styles and "bold white on red" in styles
    assert _row(screen(m), "/mnt/thr").split()[5:9] == ["██████░░░1░2", "50%", "1024", "ok"]
    assert "1" not in usage_bar(row, None).plain.split()[0]  # no levels, no marks


def test_threshold_events_move_the_state_and_draw_levels_from_the_event():
    m = model()  # no --thr given: levels come from the events
    assert _row(screen(m), "/mnt/thr").split()[8] == "-"
    m.apply(thr_ev("L1", "down", 500, 512), NOW)
    assert _row(screen(m), "/mnt/thr").split()[8] == "L1"
    m.apply(thr_ev("L2", "down", 200, 256), NOW)
    row = _row(screen(m), "/mnt/thr")
    assert row.split()[8] == "L2"
    assert "12" in row.split()[5]  # L1 at 75 %, L2 (256) at 87.5 %: neighbouring cells
    m.apply(thr_ev("L2", "up", 300, 256), NOW)
    assert _row(screen(m), "/mnt/thr").split()[8] == "L1"
    m.apply(thr_ev("L1", "up", 900, 512), NOW)
    assert _row(screen(m), "/mnt/thr").split()[8] == "ok"
    feed = lines_with(screen(m), "threshold")
    assert "L1 up: 900 blocks available (level 512)" in feed[0]  # newest first
    assert "L1 down: 500 blocks available (level 512)" in feed[-1]


def test_rows_sorted_by_severity_then_usage():
    m = model()
    m.apply(ev(), NOW)  # errors on /srv/data
    m.apply(thr_ev("L2", "down", 10, 256), NOW)  # /mnt/thr at L2: worse than errors
    order = [l.split()[0] for l in screen(m).splitlines()[4:9]]
    assert order[:2] == ["/mnt/thr", "/srv/data"]
    assert order[2:] == ["/", "/mnt/[red]x[/red]\\x1b[2J", "/dev/shm"]  # then by usage: 45 %, 10 %, 0 %


def test_sort_by_mount_and_usage():
    m = model(sort="mount")
    assert [l.split()[0] for l in screen(m).splitlines()[4:9]] == [
        "/", "/dev/shm", "/mnt/[red]x[/red]\\x1b[2J", "/mnt/thr", "/srv/data"]
    m.sort = "usage"
    assert [l.split()[0] for l in screen(m).splitlines()[4:9]][:3] == ["/srv/data", "/mnt/thr", "/"]


def test_emergency_ro_shows_and_sorts_first():
    mounts_ro = "\n".join([
        r"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        r"44 27 7:0 / /srv/data rw,relatime - ext4 /dev/loop0 rw,emergency_ro,errors=remount-ro",
        r"45 27 7:1 / /srv/ro ro,relatime - ext4 /dev/loop1 ro",
    ])
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts(mounts_ro), {27: FsStats(4096, 10, 5, 5, False), 44: FsStats(4096, 10, 9, 9, False)})
    out = screen(m)
    first = out.splitlines()[4]
    assert first.startswith("/srv/data") and " RO! " in first, out
    assert " ro " in _row(out, "/srv/ro") and " rw " in _row(out, "/")


def test_btrfs_read_only_after_an_abort_shows_ro_bang_and_its_events_in_the_feed():
    table = "\n".join([
        r"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        r"46 27 0:55 / /srv/b rw,relatime - btrfs /dev/loop3 ro,space_cache=v2,subvolid=5,subvol=/",
        r"47 27 0:56 / /srv/admin ro,relatime - btrfs /dev/loop4 ro,subvolid=5,subvol=/",
    ])
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts(table), {27: FsStats(4096, 10, 5, 5, False)})
    m.apply(ev(dev="0:55", mount_point="/srv/b", fs_type="btrfs", function="__btrfs_run_delayed_items", line=1181,
               errno=5, extra={"transaction_abort": True, "message": "IO failure"}, at=NOW - 2), NOW)
    m.apply(ev(typ=EventType.READ_ONLY, dev="0:55", mount_point="/srv/b", fs_type="btrfs", at=NOW - 1,
               extra={"read_only": True, "flag": "sb_rdonly", "cause": "error", "caused_by_seq": 1}), NOW)
    m.apply(ev(typ=EventType.DEVICE_ERRORS, dev="0:55", mount_point="/srv/b", fs_type="btrfs", rung="polled",
               extra={"counters": {"write_io_errs": 2}, "totals": {"write_io_errs": 2, "read_io_errs": 0},
                      "devid": 1, "device": "/dev/loop3"}), NOW)
    out = screen(m)
    first = out.splitlines()[4]
    assert first.startswith("/srv/b") and " RO! " in first, out
    assert " ro " in _row(out, "/srv/admin")  # read-only by a remount: no error behind it
    feed = out.split("events, newest first")[1]
    assert "device_errors" in feed and "/dev/loop3 (devid 1): write_io_errs +2" in feed
    assert "__btrfs_run_delayed_items:1181 EIO(5) transaction abort IO failure" in feed
    (dev_line,) = [e for e in m.feed if e.type is EventType.DEVICE_ERRORS]
    assert any(str(sp.style) == "bold red" for sp in feed_line(dev_line).spans)  # class err's colour


def test_feed_newest_first_coloured_by_class():
    m = model()
    m.apply(ev(cls=EventClass.INFO, typ=EventType.UMOUNT, mount_point="/mnt/old", dev="0:60", at=NOW - 3), NOW)
    m.apply(ev(at=NOW - 2), NOW)
    m.apply(thr_ev("L1", "down", 500, 512, at=NOW - 1), NOW)
    m.apply(ev(cls=EventClass.WARN, typ=EventType.LOSS, lost=7, lost_total=7, at=NOW), NOW)
    feed = screen(m).split("events, newest first")[1].splitlines()[1:5]
    assert "loss" in feed[0] and "7 events lost" in feed[0] and "ring buffer" in feed[0]
    assert "threshold" in feed[1] and "/mnt/thr" in feed[1]
    assert "fs_error" in feed[2] and "trigger_test_error:129" in feed[2] and "pid 4242 bash" in feed[2]
    assert "umount" in feed[3] and "/mnt/old" in feed[3]
    expect = {EventClass.ERR: "bold red", EventClass.WARN: "yellow", EventClass.THR: "magenta", EventClass.INFO: "dim"}
    for e in list(m.feed):
        spans = feed_line(e).spans
        assert any(str(s.style) == expect[e.cls] for s in spans), (e.cls, spans)


def test_drops_red_only_when_non_zero():
    m = model()
    line = header(m, NOW)[0]
    assert "drops 0" in line.plain
    assert any(str(s.style) == "green" and line.plain[s.start:s.end] == "0" for s in line.spans)
    m.set_drops(12)
    line = header(m, NOW)[0]
    assert "drops 12" in line.plain
    assert any(str(s.style) == "bold white on red" and line.plain[s.start:s.end] == "12" for s in line.spans)
    # and on a colour terminal the number really is red
    c = Console(width=160, force_terminal=True, color_system="standard", file=io.StringIO(), highlight=False)
    c.print(line)
    assert "\x1b[1;37;41m12" in c.file.getvalue()


def test_header_shows_host_kernel_uptime_rate_and_rungs():
    m = model()
    for i in range(10):
        m.apply(ev(), NOW - 2 + i * 0.1)
    top, probes = (l.plain for l in header(m, NOW))
    assert "testhost" in top and "Linux 6.18.0-test" in top and "up 1m " in top
    assert "events 10" in top and "2.0/s" in top  # 10 events over the last 5 s
    assert "ext4_error tracepoint" in probes and "mount_drop tracepoint" in probes
    assert "sort severity" in probes


def test_kernel_strings_are_inert():
    m = model()
    m.apply(ev(comm=HOSTILE, function="f[/]" + HOSTILE, mount_point="/mnt/[red]x[/red]\x1b[2J", dev="0:52"), NOW)
    for color in (None, "truecolor"):
        c = Console(width=220, force_terminal=True, color_system=color, record=True, file=io.StringIO())
        c.print(render(m, 220, 40, NOW))
        raw = c.file.getvalue()
        if color is None:
            assert "\x1b" not in raw  # not one escape byte reaches the terminal
        else:  # the only escapes are rich's own colour codes (SGR): no clear screen, no cursor moves
            assert not re.search(r"\x1b(?!\[[0-9;]*m)", raw)
        text = c.export_text()
        assert "pid 4242 [red]x[/red]\\x1b[2J" in text  # markup stays literal text, ESC shows as \x1b
        row = _row(text, "/mnt/[red]x[/red]\\x1b[2J")
        assert "src[bold]y\\x1b[31m" in row
        assert "f[/][red]x[/red]\\x1b[2J:129" in row


def test_historical_errors_in_table_and_as_first_feed_entries():
    m = model()
    data = next(x for x in mounts() if x.mount_point == "/srv/data")
    first = RecordedError(int(NOW) - 86400, "ext4_lookup", 1800, 12, 0, 5)
    last = RecordedError(int(NOW) - 3600, "htree_dirblock_to_tree", 1085, 2, 1234, 4)
    m.load_history(data, Ext4ErrorState("loop0", 3, first, last))
    m.apply(ev(at=NOW - 1), NOW)
    text = screen(m)
    feed = text.split("events, newest first")[1].splitlines()[1:]
    assert "fs_error" in feed[0] and "trigger_test_error" in feed[0] and "historical" not in feed[0]
    assert feed[1].lstrip().startswith("historical") and "htree_dirblock_to_tree:1085 EFSBADCRC" in feed[1]
    assert "last error recorded" in feed[1] and "errors_count 3" in feed[1]
    assert feed[2].lstrip().startswith("historical") and "ext4_lookup:1800 EFSCORRUPTED" in feed[2]
    assert "first error recorded" in feed[2]
    m2 = model()
    m2.load_history(data, Ext4ErrorState("loop0", 3, first, last))
    row = _row(screen(m2, width=200), "/srv/data")
    assert re.search(r"\s0/3\s+htree_dirblock_to_tree:1085 EFSBADCRC 1h hist", row), row


def test_full_screen_has_exact_height_header_table_feed_footer():
    m = model()
    for i in range(100):
        m.apply(ev(at=NOW - 100 + i, line=i), NOW)
    text = screen(m, width=120, height=30)
    lines = text.splitlines()
    assert len(lines) == 30
    assert lines[0].startswith("fsev top") and lines[-1].startswith("q quit")
    feed = [l for l in lines if "fs_error" in l]
    assert len(feed) == 30 - 2 - 1 - 6 - 1 - 1  # header, blank, table (head + 5 rows), rule, footer
    assert "trigger_test_error:99" in feed[0]  # newest on top
    assert all(len(l) <= 120 for l in lines)


def test_many_mounts_leave_room_for_the_feed():
    lines = [r"27 1 254:0 / / rw - ext4 /dev/vda rw"] + [
        rf"{100 + i} 27 0:{100 + i} / /mnt/t{i:02d} rw - tmpfs tmpfs rw" for i in range(40)]
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts("\n".join(lines)))
    m.apply(ev(), NOW)
    out = screen(m, width=120, height=24).splitlines()
    assert len(out) == 24
    assert any("more mounts" in l for l in out)
    assert sum("fs_error" in l for l in out) == 1


def test_narrow_screen_drops_columns_not_the_mount_point():
    m = model()
    m.apply(ev(), NOW)
    text = screen(m, width=80, height=20)
    assert all(len(l) <= 80 for l in text.splitlines())
    head = lines_with(text, "MOUNT")[0]
    assert "DEVICE" not in head and "USAGE" in head and "ERRORS" in head
    assert _row(text, "/srv/data")


def test_help_and_filter_prompt():
    m = model()
    m.key("?")
    text = screen(m, height=40)
    assert "emergency_ro" in text and re.search(r"^  q +quit", text, re.M)
    m.key("x")  # any key closes the help
    assert "emergency_ro" not in screen(m, height=40)
    for k in "//srv":  # the first / opens the prompt
        m.key(k)
    assert screen(m, height=40).splitlines()[-1].startswith("filter: /srv")


XFS_MOUNTS = "\n".join([
    r"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    r"44 27 7:1 / /srv/xfs rw,relatime - xfs /dev/loop1 rw,attr2,inode64",
])


def test_an_xfs_mark_names_what_it_marked_and_a_shutdown_shows_ro_and_sorts_first():
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts(XFS_MOUNTS), {27: FsStats(4096, 10, 5, 5, False), 44: FsStats(4096, 10, 9, 9, False)})
    mark = ev(dev="7:1", mount_point="/srv/xfs", fs_type="xfs", function=None, line=None, rung="raw_tracepoint",
              inode=131, extra={"health": "sick", "scope": "inode", "structures": ["directory"]}, at=NOW - 3)
    m.apply(mark, NOW)
    out = screen(m)
    row = _row(out, "/srv/xfs")
    assert " rw " in row and "sick inode 131 directory 3s" in row, out  # not "?": XFS names no function
    assert "sick inode 131 directory" in feed_line(mark).plain
    down = ev(typ=EventType.SHUTDOWN, dev="7:1", mount_point="/srv/xfs", fs_type="xfs", rung="raw_tracepoint",
              line=311, extra={"reasons": ["metadata_io"], "file": "fs/xfs/xfs_trans_buf.c"}, at=NOW - 2)
    ro = ev(typ=EventType.READ_ONLY, dev="7:1", mount_point="/srv/xfs", fs_type="xfs", rung="raw_tracepoint",
            extra={"read_only": True, "flag": "shutdown", "cause": "error", "caused_by_seq": 2}, at=NOW - 2)
    m.apply(down, NOW)
    m.apply(ro, NOW)
    out = screen(m)
    # mountinfo and statfs still say rw; the read_only event is what tells.
    first = out.splitlines()[4]
    assert first.startswith("/srv/xfs") and " RO! " in first, out
    line = feed_line(down).plain
    assert "err  shutdown" in line and "shut down: metadata_io at fs/xfs/xfs_trans_buf.c:311" in line
    assert "after error #2" in feed_line(ro).plain
    m.update_mounts(mounts(XFS_MOUNTS), {44: FsStats(4096, 10, 9, 9, False)})
    assert " RO! " in _row(screen(m), "/srv/xfs")  # a mount-table change does not undo it...
    m.update_mounts(mounts(XFS_MOUNTS.splitlines()[0]), {})
    m.update_mounts(mounts(XFS_MOUNTS), {44: FsStats(4096, 10, 9, 9, False)})
    assert " rw " in _row(screen(m), "/srv/xfs")  # ...mounting it again does


def test_an_error_read_only_state_clears_when_the_filesystem_is_read_write_again():
    m = TopModel("h", "k", started=NOW)
    m.update_mounts(mounts(XFS_MOUNTS), {44: FsStats(4096, 10, 9, 9, False)})
    m.apply(ev(typ=EventType.READ_ONLY, dev="7:1", mount_point="/srv/xfs",
               extra={"read_only": True, "flag": "aborted", "cause": "error"}), NOW)
    assert " RO! " in _row(screen(m), "/srv/xfs")
    m.apply(ev(typ=EventType.READ_ONLY, dev="7:1", mount_point="/srv/xfs", cls=EventClass.INFO,
               extra={"read_only": False, "flag": "sb_rdonly", "cause": "remount"}), NOW)
    assert " rw " in _row(screen(m), "/srv/xfs")
