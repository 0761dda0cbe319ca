"""Kernel log lines of filesystems, as the kernel formats them.

fsev reads them from the printk:console tracepoint (fsev/points/kernel_log.py),
which gives the text without its <level> prefix, as a printk call stored it.
This module knows only the text: the heads that ext4, btrfs and XFS put in
front of their messages (their printk wrappers in fs/ext4/super.c,
fs/btrfs/messages.c, fs/xfs/xfs_message.c), the device they name, and the
"function:line:" that error messages start with. What a line means is its
filesystem's point's business.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# The heads, one expression for all three:
#   EXT4-fs error (device loop0): htree_dirblock_to_tree:1051: inode #12: comm ls: ...
#   EXT4-fs error (device loop0) in ext4_reserve_inode_write:5741: IO failure      (__ext4_std_error)
#   EXT4-fs (loop0): mounted filesystem ... r/w with ordered data mode            (ext4_msg)
#   BTRFS error (device loop0 state EA): bdev /dev/loop0 errs: wr 1, rd 0, ...
#   BTRFS: error (device loop0 state A) in __btrfs_abort_transaction:2007: errno=-5 IO failure
#   BTRFS info: devid 1 device path /dev/loop0 changed to ...                     (no fs_info)
#   XFS (loop0): Metadata corruption detected at xfs_dinode_verify+0x.../0x..., inode 0x83 dinode
_HEAD = re.compile(
    r"(?P<fs>EXT4-fs|BTRFS|XFS):?"
    r"(?: (?P<level>[a-z]+))?"
    r"(?: \((?:device )?(?P<device>[^\s()]+)(?: state (?P<state>[A-Za-z]+))?\))?"
    r"(?P<sep>:| in) (?P<body>.*)",
    re.S)
_FS = {"EXT4-fs": "ext4", "BTRFS": "btrfs", "XFS": "xfs"}
# "function:line: " at the start of the body: the C function names kernels use.
_LOCATION = re.compile(r"(?P<function>[A-Za-z_][A-Za-z0-9_.]*):(?P<line>\d+): ?(?P<rest>.*)", re.S)
# What the BPF side copies (bpf/kernel_log.bpf.c): lines whose first four
# bytes are one of these. The tracepoint fires for every printk; the filter
# keeps everything else in the kernel.
PREFIXES = (b"EXT4", b"BTRF", b"XFS ")


@dataclass(frozen=True)
class LogLine:
    """One kernel log line of a filesystem, with the task that printed it."""

    ts_ns: int  # CLOCK_MONOTONIC when the line was stored (as an Event's ts_ns)
    pid: int
    tgid: int
    comm: str
    fs: str  # "ext4", "btrfs" or "xfs"
    level: str | None  # the word after the filesystem's name: "error", "warning", ...; None if none
    device: str | None  # the superblock's s_id as printed, e.g. "loop0"
    dev: str | None  # that block device's "major:minor" (not btrfs's anonymous s_dev), if it exists
    state: str | None  # btrfs: the fs_info state letters, e.g. "EA"
    function: str | None  # an error's "function:line:" (or "in function:line:")
    line: int | None
    body: str  # after the head, and after function:line when there is one
    text: str  # the whole line as the kernel stored it (truncated at the record's text length)
    truncated: bool  # the line filled the record: the kernel's text goes on


def parse_line(text: str, ts_ns: int = 0, pid: int = 0, tgid: int = 0, comm: str = "",
               truncated: bool = False) -> LogLine | None:
    """A filesystem's log line -> LogLine; None for any other text."""
    m = _HEAD.match(text)
    if m is None:
        return None
    device = m.group("device")
    body = m.group("body")
    function: str | None = None
    line: int | None = None
    loc = _LOCATION.match(body)
    if loc is not None:
        function, line, body = loc.group("function"), int(loc.group("line")), loc.group("rest")
    return LogLine(ts_ns=ts_ns, pid=pid, tgid=tgid, comm=comm, fs=_FS[m.group("fs")], level=m.group("level"),
                   device=device, dev=block_dev(device) if device else None, state=m.group("state"),
                   function=function, line=line, body=body, text=text, truncated=truncated)


_DEV_CACHE: dict[str, str | None] = {}


def block_dev(name: str) -> str | None:
    """"loop0" -> "7:0", from /sys/class/block (None if there is no such device).
    Names repeat (one filesystem logs many lines), so answers are kept."""
    if name in _DEV_CACHE:
        return _DEV_CACHE[name]
    dev: str | None = None
    if "/" not in name and name not in (".", ".."):
        try:
            with open(os.path.join("/sys/class/block", name, "dev")) as f:
                dev = f.read().strip() or None
        except OSError:
            dev = None
    if len(_DEV_CACHE) > 1024:
        _DEV_CACHE.clear()
    if dev is not None:  # a device that is not there yet may be made later: ask again then
        _DEV_CACHE[name] = dev
    return dev


# ext4's own fields in an error line, after function:line:
#   inode #12: block 1234: comm ls: path /x: <message>
_EXT4_INODE = re.compile(r"inode #(\d+): ")
_EXT4_BLOCK = re.compile(r"block (\d+): ")
_EXT4_COMM = re.compile(r"comm (.*?): ")


@dataclass(frozen=True)
class Ext4Fields:
    inode: int | None
    block: int | None
    comm: str | None
    message: str  # ext4's own words, e.g. "Directory block failed checksum"


def ext4_fields(body: str) -> Ext4Fields:
    """The inode, block and comm ext4 prints before its message (in that order,
    each optional: fs/ext4/super.c __ext4_error*)."""
    inode = block = None
    comm = None
    m = _EXT4_INODE.match(body)
    if m is not None:
        inode, body = int(m.group(1)), body[m.end():]
    m = _EXT4_BLOCK.match(body)
    if m is not None:
        block, body = int(m.group(1)), body[m.end():]
    m = _EXT4_COMM.match(body)
    if m is not None:
        comm, body = m.group(1), body[m.end():]
    return Ext4Fields(inode, block, comm, body)
