"""Kernel log lines of ext4, btrfs and XFS, as their printk wrappers format
them (fsev/linux/kernel_log.py), and the half that hands them to their
filesystem's readers (fsev/points/kernel_log.py)."""

from __future__ import annotations

import pytest
from support.kernels import TRACEPOINTS_ONLY, fake_kernel

from fsev.events import Event, EventClass, EventType
from fsev.linux.kernel_log import ext4_fields, parse_line
from fsev.points.kernel_log import KernelLogMonitor, plan_kernel_log
from fsev.probes.ladder import RungKind

CASES = [
    # text, fs, level, device, state, function, line, body
    ("EXT4-fs error (device loop0): htree_dirblock_to_tree:1051: inode #12: comm ls: Directory block failed checksum",
     "ext4", "error", "loop0", None, "htree_dirblock_to_tree", 1051,
     "inode #12: comm ls: Directory block failed checksum"),
    ("EXT4-fs error (device sda1) in ext4_reserve_inode_write:5741: IO failure",
     "ext4", "error", "sda1", None, "ext4_reserve_inode_write", 5741, "IO failure"),
    ("EXT4-fs (loop3): Remounting filesystem read-only", "ext4", None, "loop3", None, None, None,
     "Remounting filesystem read-only"),
    ("EXT4-fs warning (device loop0): ext4_dx_find_entry:1796: inode #2: comm ls: error -5 reading directory block",
     "ext4", "warning", "loop0", None, "ext4_dx_find_entry", 1796,
     "inode #2: comm ls: error -5 reading directory block"),
    ("BTRFS: error (device loop0 state A) in __btrfs_abort_transaction:2007: errno=-5 IO failure",
     "btrfs", "error", "loop0", "A", "__btrfs_abort_transaction", 2007, "errno=-5 IO failure"),
    ("BTRFS error (device nvme0n1p2 state EA): bdev /dev/nvme0n1p2 errs: wr 1, rd 0, flush 0, corrupt 0, gen 0",
     "btrfs", "error", "nvme0n1p2", "EA", None, None,
     "bdev /dev/nvme0n1p2 errs: wr 1, rd 0, flush 0, corrupt 0, gen 0"),
    ("BTRFS info: devid 1 device path /dev/loop0 changed to /dev/loop1", "btrfs", "info", None, None, None, None,
     "devid 1 device path /dev/loop0 changed to /dev/loop1"),
    ("XFS (dm-0): Metadata corruption detected at xfs_dinode_verify+0x1a/0x60, inode 0x83 dinode",
     "xfs", None, "dm-0", None, None, None,
     "Metadata corruption detected at xfs_dinode_verify+0x1a/0x60, inode 0x83 dinode"),
]


@pytest.mark.parametrize("text, fs, level, device, state, function, line, body", CASES)
def test_heads_parse(text, fs, level, device, state, function, line, body):
    got = parse_line(text, ts_ns=5, pid=7, tgid=7, comm="ls")
    assert got is not None
    assert (got.fs, got.level, got.device, got.state, got.function, got.line, got.body) == (
        fs, level, device, state, function, line, body)
    assert got.text == text and (got.pid, got.comm, got.ts_ns) == (7, "ls", 5)


@pytest.mark.parametrize("text", ["", "EXT4", "ext4-fs error (device loop0): x:1: y", "XFSx (loop0): y",
                                  "usb 1-1: new high-speed USB device", "BTRFSX error (device a): b"])
def test_other_lines_are_not_filesystem_lines(text):
    assert parse_line(text) is None


def test_a_device_name_that_is_no_block_device_gives_no_dev():
    assert parse_line("EXT4-fs (no-such-dev-fsev): x").dev is None
    assert parse_line("EXT4-fs (..): x").dev is None


def test_ext4_fields_in_order_each_optional():
    f = ext4_fields("inode #12: block 4242: comm my prog: Directory block failed checksum")
    assert (f.inode, f.block, f.comm, f.message) == (12, 4242, "my prog", "Directory block failed checksum")
    f = ext4_fields("comm ls: bad")
    assert (f.inode, f.block, f.comm, f.message) == (None, None, "ls", "bad")
    f = ext4_fields("IO failure")
    assert (f.inode, f.block, f.comm, f.message) == (None, None, None, "IO failure")


def test_the_one_rung_is_the_console_tracepoint():
    assert plan_kernel_log(fake_kernel(tracepoints=frozenset({"printk:console"}))).kind is RungKind.TRACEPOINT
    none = plan_kernel_log(TRACEPOINTS_ONLY)
    assert none.kind is RungKind.NONE and "printk:console" in none.skipped[0]


class _Ctx:
    def __init__(self) -> None:
        self.log_readers: dict = {}

    def read_kernel_log(self, fs, reader):
        self.log_readers.setdefault(fs, []).append(reader)


def _line_event(text: str) -> Event:
    ev = Event(0, 1, 0.0, EventClass.ERR, EventType.KERNEL_LOG, "tracepoint")
    ev.extra["_log"] = parse_line(text)
    return ev


def test_the_monitor_hands_lines_to_the_readers_of_their_filesystem_only():
    ctx = _Ctx()
    mon = KernelLogMonitor(ctx)  # type: ignore[arg-type]
    got: list[str] = []
    out = Event(0, 2, 0.0, EventClass.ERR, EventType.FS_ERROR, "kernel_log")
    ctx.read_kernel_log("btrfs", lambda line: (got.append(line.text), [out])[1])  # registered after the monitor
    assert mon.process(_line_event("EXT4-fs (loop0): mounted")) == []
    assert mon.process(_line_event("BTRFS info (device loop1): first mount")) == [out]
    assert got == ["BTRFS info (device loop1): first mount"]
    assert (mon.lines, mon.unread) == (2, 1)
