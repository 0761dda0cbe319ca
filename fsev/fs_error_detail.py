"""errno and inode for ext4 errors on the tracepoint rung.

ext4:ext4_error carries only device, function and line. Two other sources
know more, and are merged into the fs_error events, each field marked with
where it came from (`errno_source`, `inode_source`, `block_source`):

- fanotify FAN_FS_ERROR (5.16+), a filesystem mark per watched ext4 mount:
  the errno and inode of an error, and how many errors were merged into the
  queued event while it waited. ext4 queues it right after the tracepoint
  fires, so fsev reads it promptly and matches events in order per device:
  the first error of a queued event gets its errno and inode, errors merged
  behind it get none from fanotify.
- the superblock's recorded last error (/sys/fs/ext4/<dev>/last_error_*),
  used only when its function and line are the event's: for an error
  fanotify did not tell (no mark, or nothing came in time) its errno, inode
  and block; for an error fanotify merged, its errno only (the inode of the
  last error may be another error's).

Events of a device wait behind an error whose fanotify event has not come
yet (at most HOLD_S), so that order is kept.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .events import Event, EventType
from .fanotify import FanEvent, FsErrorWatch
from .mountinfo import Mount

_FS_ERROR = EventType.FS_ERROR  # an enum member lookup costs on the flood path
HOLD_S = 0.1
# The superblock's last error is re-read at most this often per device (in
# event time): a flood of errors would otherwise cost five sysfs reads each.
SYSFS_TTL_NS = 50_000_000
# ext4's own error codes (fs/ext4/ext4.h EXT4_ERR_*, 5.9+), as
# /sys/fs/ext4/<dev>/last_error_errcode shows them -> errno. They are
# #defines, not in BTF.
EXT4_ERRCODE_ERRNO = {
    2: 5,  # EXT4_ERR_EIO
    3: 12,  # ENOMEM
    4: 74,  # EFSBADCRC = EBADMSG
    5: 117,  # EFSCORRUPTED = EUCLEAN
    6: 28,  # ENOSPC
    7: 126,  # ENOKEY
    8: 30,  # EROFS
    9: 27,  # EFBIG
    10: 17,  # EEXIST
    11: 34,  # ERANGE
    12: 75,  # EOVERFLOW
    13: 16,  # EBUSY
    14: 20,  # ENOTDIR
    15: 39,  # ENOTEMPTY
    16: 108,  # ESHUTDOWN
    17: 14,  # EFAULT
}


@dataclass
class _Queued:
    """One FAN_FS_ERROR event: its first error told, the rest merged."""

    errno: int | None
    ino: int | None
    untold: int  # errors still to match: the first carries errno/inode


def sysfs_last_error(name: str, root: str = "/sys/fs/ext4") -> dict | None:
    """The superblock's last recorded error: func (str); line, errcode, ino, block (int)."""
    out: dict = {}
    for key in ("func", "line", "errcode", "ino", "block"):
        try:
            with open(os.path.join(root, name, f"last_error_{key}")) as f:
                text = f.read().strip()
        except OSError:
            return None
        if key == "func":
            out[key] = text
        else:
            try:
                out[key] = int(text)
            except ValueError:
                return None
    return out


def block_dev_name(dev: str) -> str | None:
    """The kernel's name of a block device ("loop2", "sda1"): ext4's sysfs directory."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{dev}"))
    except OSError:
        return None


def fill_from_sysfs(ev: Event, last: dict | None) -> bool:
    """Take errno, inode, block from the superblock's last error if it is this
    event's error (same function and line)."""
    if not last or last.get("func") != ev.function or last.get("line") != ev.line:
        return False
    code, ino, block = last.get("errcode"), last.get("ino"), last.get("block")
    if ev.errno is None and code in EXT4_ERRCODE_ERRNO:
        ev.errno = EXT4_ERRCODE_ERRNO[code]  # type: ignore[index]
        ev.extra["errno_source"] = "sysfs"
    if ev.inode is None and ino:
        ev.inode = ino
        ev.extra["inode_source"] = "sysfs"
    if ev.block is None and block:
        ev.block = block
        ev.extra["block_source"] = "sysfs"
    return True


class Ext4ErrorDetail:
    def __init__(self, watch: FsErrorWatch | None, now: Callable[[], float] = time.monotonic,
                 last_error: Callable[[str], dict | None] | None = None) -> None:
        self.fan = watch
        self.now = now
        self._last_error = last_error or self._read_sysfs
        self._fsid_dev: dict[int, str] = {}
        self._fan_devs: set[str] = set()  # devices with a FAN_FS_ERROR mark
        self._queued: dict[str, deque[_Queued]] = {}
        self._held: dict[str, deque[tuple[float, Event]]] = {}
        self._names: dict[str, str | None] = {}
        self._sysfs: dict[str, tuple[int, dict | None]] = {}

    # -- which filesystems -------------------------------------------------
    def watch(self, mounts: list[Mount]) -> None:
        for m in mounts:
            if m.fs_type != "ext4" or m.dev in self._fsid_dev.values():
                continue
            try:
                fsid = os.statvfs(m.mount_point).f_fsid
            except OSError:
                continue
            if self.fan is None or self.fan.watch(m.mount_point):
                self._fsid_dev[fsid] = m.dev
                if self.fan is not None:
                    self._fan_devs.add(m.dev)

    def on_fanotify(self, events: list[FanEvent]) -> None:
        for fe in events:
            dev = self._fsid_dev.get(fe.fsid) if fe.fsid is not None else None
            if dev is None or fe.error is None:
                continue
            self._queued.setdefault(dev, deque()).append(_Queued(fe.error, fe.ino, max(1, fe.error_count or 1)))

    # -- events ------------------------------------------------------------
    def process(self, ev: Event) -> list[Event]:
        """Events ready to go on, in order; fs_errors may wait for fanotify."""
        dev = ev.dev or ""
        held = self._held.get(dev)
        if ev.type is not _FS_ERROR:
            if held:
                held.append((0.0, ev))
                return self._release(dev)
            return [ev]
        if ev.errno is not None:  # the kprobe rung had it from the arguments
            ev.extra["errno_source"] = ev.rung
            if ev.inode is not None:
                ev.extra["inode_source"] = ev.rung
            if not held:
                return [ev]
        elif not held:
            # The common case, a flood too: fanotify told already (or merged
            # this error into one it told), or there is nothing to wait for.
            if dev in self._fan_devs:
                if not self._queued.get(dev):
                    self.on_fanotify(self._read_fanotify())
                if self._take(dev, ev):
                    return [ev]
            else:
                fill_from_sysfs(ev, self._cached_last_error(dev, ev.ts_ns))
                return [ev]
        if held is None:
            held = self._held[dev] = deque()
        held.append((self.now(), ev))
        return self._release(dev)

    def poll(self) -> list[Event]:
        if not self._held:
            return []
        self.on_fanotify(self._read_fanotify())
        out: list[Event] = []
        for dev in list(self._held):
            out += self._release(dev)
        return out

    def flush(self) -> list[Event]:
        self.on_fanotify(self._read_fanotify())
        out: list[Event] = []
        for dev in list(self._held):
            out += self._release(dev, force=True)
        return out

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def _read_fanotify(self) -> list[FanEvent]:
        return self.fan.read() if self.fan is not None and self.fan.fd >= 0 else []

    def _release(self, dev: str, force: bool = False) -> list[Event]:
        held = self._held[dev]
        out: list[Event] = []
        now = self.now()
        while held:
            since, ev = held[0]
            if ev.type is _FS_ERROR and "errno_source" not in ev.extra:
                if not self._take(dev, ev):
                    if not force and now - since < HOLD_S and dev in self._fan_devs:
                        break
                    fill_from_sysfs(ev, self._cached_last_error(dev, ev.ts_ns))  # fanotify never told
            held.popleft()
            out.append(ev)
        if not held:
            del self._held[dev]
        return out

    def _take(self, dev: str, ev: Event) -> bool:
        """Match the next fanotify error of this device; False if none came yet."""
        q = self._queued.get(dev)
        if not q:
            return False
        head = q[0]
        if head.errno is not None:  # the first error of this queued event
            ev.errno = head.errno
            ev.extra["errno_source"] = "fanotify"
            if head.ino:
                ev.inode = head.ino
                ev.extra["inode_source"] = "fanotify"
            head.errno = None
        else:  # merged into it: fanotify kept only a count
            got = self._sysfs.get(dev)
            last = got[1] if got is not None and 0 <= ev.ts_ns - got[0] < SYSFS_TTL_NS else \
                self._cached_last_error(dev, ev.ts_ns)
            if last and last["func"] == ev.function and last["line"] == ev.line and last["errno"]:
                ev.errno = last["errno"]
                ev.extra["errno_source"] = "sysfs"
        head.untold -= 1
        if head.untold <= 0:
            q.popleft()
        return True

    def _cached_last_error(self, dev: str, ts_ns: int) -> dict | None:
        got = self._sysfs.get(dev)
        if got is None or ts_ns - got[0] >= SYSFS_TTL_NS or ts_ns < got[0]:
            last = self._last_error(dev)
            if last is not None:
                last["errno"] = EXT4_ERRCODE_ERRNO.get(last.get("errcode", 0))
            got = self._sysfs[dev] = (ts_ns, last)
        return got[1]

    def _read_sysfs(self, dev: str) -> dict | None:
        if dev not in self._names:
            self._names[dev] = block_dev_name(dev)
        name = self._names[dev]
        return sysfs_last_error(name) if name else None

    def close(self) -> None:
        if self.fan is not None:
            self.fan.close()
