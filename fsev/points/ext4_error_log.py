"""What ext4_error_detail reads in ext4's kernel log lines (pure: unit tests feed it lines).

ext4 prints every error it raises, in the erroring task, right after the
ext4:ext4_error tracepoint fires (fs/ext4/super.c __ext4_error*):

    EXT4-fs error (device loop0): ext4_lookup:1813: inode #12: comm ls: ...
    EXT4-fs error (device loop0): ext4_readdir:263: inode #2: block 1234: comm ls: path /m: ...
    EXT4-fs error (device loop0): ext4_mb_generate_buddy:1218: group 1, block bitmap and bg descriptor ...
    EXT4-fs error (device loop0) in ext4_reserve_inode_write:5741: IO failure      (__ext4_std_error)

__ext4_std_error (journal and I/O failures on the write path) fires no
tracepoint at all: its line, and its FAN_FS_ERROR event, are all fsev sees
of it on the tracepoint rung. Every one of these calls goes through one rate
limit per superblock (ext4_error_ratelimit: `err_ratelimit_burst` lines per
`err_ratelimit_interval_ms`, 10 per 5 s by default, in /sys/fs/ext4/<dev>/):
past it the error is raised, traced and counted, but not printed. RateModel
follows that limit, so an error waits for its line only while one will come.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from fsev.linux.kernel_log import LogLine, ext4_fields

# ext4_decode_error()'s words for the errno __ext4_std_error was given.
STD_ERRSTR_ERRNO = {
    "Corrupt filesystem": 117,  # EFSCORRUPTED = EUCLEAN
    "Filesystem failed CRC": 74,  # EFSBADCRC = EBADMSG
    "IO failure": 5,
    "Out of memory": 12,
    "Journal has aborted": 30,  # EROFS, with the journal aborted
    "Readonly filesystem": 30,
}
_STD_ERROR_N = re.compile(r"error (-?\d+)$")  # the default: snprintf("error %d", -errno)
# __ext4_grp_locked_error: "group N, " then optional "inode N: " and "block N:".
_GROUP = re.compile(r"group (\d+), (?:inode (\d+): )?(?:block (\d+):)?")


@dataclass(frozen=True)
class Ext4LogError:
    """One ext4 error line: where, and what ext4 printed of it."""

    std: bool  # __ext4_std_error's "in function:line: errstr" form
    inode: int | None
    block: int | None
    errno: int | None  # std errors only (from the errstr)


def parse_ext4_error(line: LogLine) -> Ext4LogError | None:
    """An "EXT4-fs error" line with its function and line -> its details; None otherwise."""
    if line.fs != "ext4" or line.level != "error" or line.function is None or line.line is None:
        return None
    if f") in {line.function}:" in line.text:
        body = line.body.strip()
        err = STD_ERRSTR_ERRNO.get(body)
        if err is None:
            m = _STD_ERROR_N.match(body)
            err = abs(int(m.group(1))) if m else None
        return Ext4LogError(True, None, None, err)
    g = _GROUP.match(line.body)
    if g is not None:
        ino, blk = g.group(2), g.group(3)
        return Ext4LogError(False, int(ino) if ino else None, int(blk) if blk else None, None)
    f = ext4_fields(line.body)
    return Ext4LogError(False, f.inode, f.block, None)


# ext4's defaults (fs/ext4/super.c: DEFAULT_RATELIMIT_INTERVAL, _BURST).
DEFAULT_INTERVAL_MS = 5000
DEFAULT_BURST = 10


class RateModel:
    """ext4's error rate limit of one superblock (lib/ratelimit.c ___ratelimit):
    a window opens at the first call after the last one closed, and lets
    `burst` lines through until `interval` has passed. Fed the kernel
    timestamps of the errors in order, it says which ones ext4 printed."""

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS, burst: int = DEFAULT_BURST) -> None:
        self.interval_ns = interval_ms * 1_000_000
        self.burst = burst
        self._begin: int | None = None
        self._printed = 0

    def printed(self, ts_ns: int) -> bool:
        """One more error at ts_ns: whether ext4 printed its line."""
        if self.interval_ns <= 0:  # a zero interval turns the limit off
            return True
        if self._begin is None or ts_ns - self._begin >= self.interval_ns:
            self._begin, self._printed = ts_ns, 0
        if self._printed < self.burst:
            self._printed += 1
            return True
        return False

    def silenced(self) -> None:
        """A line that was due never came: the window is spent (the model was
        off, e.g. errors fsev does not see took the lines)."""
        self._printed = self.burst


def kernel_hz(paths: tuple[str, ...] | None = None) -> int | None:
    """CONFIG_HZ of the running kernel, from its config (/proc/config.gz, else
    /boot/config-<release>); None if neither says."""
    import gzip

    for path in paths or ("/proc/config.gz", f"/boot/config-{os.uname().release}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=", 1)[1])
        except (OSError, ValueError, EOFError):
            continue
    return None


@functools.lru_cache(maxsize=1)
def _running_kernel_hz() -> int | None:
    return kernel_hz()


def rate_model(name: str, root: str = "/sys/fs/ext4", hz: int | None = -1) -> RateModel:
    """The superblock's limit as its sysfs files say (ext4's defaults if unreadable).

    err_ratelimit_interval_ms is in jiffies, whatever its name says: ext4
    keeps ratelimit_state.interval (5 * HZ by default) and its sysfs file
    shows and takes that number as it is. Measured here (HZ 250): it reads
    1250 while ext4 lets 10 lines through every 5 s (dmesg), and read as ms it
    made fsev expect a line every 1.25 s that never came, an error held
    HOLD_S (0.5 s) each time. hz: the kernel's CONFIG_HZ (-1: read it; None:
    unknown, the number is taken as ms)."""
    def read(key: str) -> int | None:
        try:
            with open(os.path.join(root, name, key)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None
    if hz == -1:
        hz = _running_kernel_hz()
    jiffies = read("err_ratelimit_interval_ms")
    if jiffies is None:
        interval_ms = DEFAULT_INTERVAL_MS
    else:
        interval_ms = jiffies * 1000 // hz if hz else jiffies
    burst = read("err_ratelimit_burst")
    return RateModel(interval_ms, DEFAULT_BURST if burst is None else burst)
