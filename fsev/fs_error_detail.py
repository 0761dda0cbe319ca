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
  used only when its function and line are the event's.

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

HOLD_S = 0.1
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


def sysfs_last_error(name: str, root: str = "/sys/fs/ext4") -> dict[str, str] | None:
    out = {}
    for key in ("func", "line", "errcode", "ino", "block"):
        try:
            with open(os.path.join(root, name, f"last_error_{key}")) as f:
                out[key] = f.read().strip()
        except OSError:
            return None
    return out


def block_dev_name(dev: str) -> str | None:
    """The kernel's name of a block device ("loop2", "sda1"): ext4's sysfs directory."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{dev}"))
    except OSError:
        return None


def fill_from_sysfs(ev: Event, last: dict[str, str] | None) -> bool:
    """Take errno, inode, block from the superblock's last error if it is this
    event's error (same function and line)."""
    if not last or last.get("func") != ev.function or str(ev.line) != last.get("line"):
        return False
    try:
        code, ino, block = int(last["errcode"]), int(last["ino"]), int(last["block"])
    except (KeyError, ValueError):
        return False
    if ev.errno is None and code in EXT4_ERRCODE_ERRNO:
        ev.errno = EXT4_ERRCODE_ERRNO[code]
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
                 last_error: Callable[[str], dict[str, str] | None] | None = None) -> None:
        self.fan = watch
        self.now = now
        self._last_error = last_error or self._read_sysfs
        self._fsid_dev: dict[int, str] = {}
        self._queued: dict[str, deque[_Queued]] = {}
        self._held: dict[str, deque[tuple[float, Event]]] = {}
        self._names: dict[str, str | None] = {}

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
        if ev.type is EventType.FS_ERROR:
            if ev.errno is not None:
                ev.extra["errno_source"] = ev.rung
                if ev.inode is not None:
                    ev.extra["inode_source"] = ev.rung
            elif self.fan is not None and self.fan.fd >= 0 and not self._queued.get(dev):
                self.on_fanotify(self.fan.read())
        held = self._held.get(dev)
        if held or (ev.type is EventType.FS_ERROR and ev.errno is None):
            self._held.setdefault(dev, deque()).append((self.now(), ev))
            return self._release(dev)
        return [ev]

    def poll(self) -> list[Event]:
        if not any(self._held.values()):
            return []
        if self.fan is not None and self.fan.fd >= 0:
            self.on_fanotify(self.fan.read())
        out: list[Event] = []
        for dev in list(self._held):
            out += self._release(dev)
        return out

    def flush(self) -> list[Event]:
        if self.fan is not None and self.fan.fd >= 0:
            self.on_fanotify(self.fan.read())
        out: list[Event] = []
        for dev in list(self._held):
            out += self._release(dev, force=True)
        return out

    @property
    def holding(self) -> bool:
        return any(self._held.values())

    def _release(self, dev: str, force: bool = False) -> list[Event]:
        held = self._held.get(dev)
        out: list[Event] = []
        now = self.now()
        while held:
            since, ev = held[0]
            if ev.type is EventType.FS_ERROR and ev.errno is None and "errno_source" not in ev.extra:
                told = self._fill(dev, ev)
                if not told and not force and now - since < HOLD_S and self._fanotify_covers(dev):
                    break
                if "errno_source" not in ev.extra:
                    fill_from_sysfs(ev, self._last_error(dev))
            held.popleft()
            out.append(ev)
        if not held:
            self._held.pop(dev, None)
        return out

    def _fanotify_covers(self, dev: str) -> bool:
        return self.fan is not None and self.fan.fd >= 0 and dev in self._fsid_dev.values()

    def _fill(self, dev: str, ev: Event) -> bool:
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
        head.untold -= 1
        if head.untold <= 0:
            q.popleft()
        return True

    def _read_sysfs(self, dev: str) -> dict[str, str] | None:
        if dev not in self._names:
            self._names[dev] = block_dev_name(dev)
        name = self._names[dev]
        return sysfs_last_error(name) if name else None

    def close(self) -> None:
        if self.fan is not None:
            self.fan.close()
