"""Probe point ext4_error_detail: errno and inode for ext4 errors on the tracepoint rung.

No BPF of its own: on the kprobe rung ext4_error has them from the function
arguments; otherwise this point's user-space half (Ext4ErrorDetail) adds them.

ext4:ext4_error carries only device, function and line. Two other sources
know more, and are merged into the fs_error events, each field marked with
where it came from (`errno_source`, `inode_source`, `block_source`):

- fanotify FAN_FS_ERROR (5.16+), a filesystem mark per watched ext4 mount:
  the errno and inode of an error, and how many errors were merged into the
  queued event while it waited. ext4 queues it right after the tracepoint
  fires (after printing the error to the console, which on a serial console
  can take a while), so fsev matches events in order per device: the first
  error of a queued event gets its errno and inode, errors merged behind it
  get none from fanotify.
- the superblock's recorded last error (/sys/fs/ext4/<dev>/last_error_*),
  used only when its function and line are the event's: for an error
  fanotify did not tell (no mark, or nothing came in time) its errno, inode
  and block; for an error fanotify merged, its errno only (the inode of the
  last error may be another error's). ext4 copies its errors into that
  on-disk superblock from a work item, a moment after the error; so an error
  waits until `errors_count` there has counted it.

- the kernel log line of the error (the kernel_log point, where it runs):
  ext4 prints inode and block there, in the erroring task, right after the
  tracepoint. It is matched by device, function, line and pid, and is the
  one source left on a filesystem fanotify cannot mark (a zero fsid: no
  UUID) on a read-only device (ext4 records nothing in sysfs there). An
  error waits for its line only while ext4's rate limit lets lines through
  (ext4_error_log.RateModel); past it the log tells nothing.

How many errors fanotify merged depends on when a reader reads, so fsev
reads its group from a thread of its own as soon as the kernel queues an
event (FsErrorWatch.start_reader); an error fanotify merged all the same is
marked `errno_merged`. Two fsev processes may still take an errno from
different sources; waiting for each source to catch up is what makes them
agree on the value.

Errors with no tracepoint: __ext4_std_error (journal and I/O failures on
the write path) fires none, so on this rung such an error is made here, from
its kernel log line (rung "kernel_log") or, without one, from its
FAN_FS_ERROR event that no traced error took (rung "fanotify"). On 7.0+,
FAN_FS_ERROR reports XFS errors too (fserror_report): XFS mounts are marked
and their errors made the same way.

Every event waits behind an error whose detail has not come yet (at most
HOLD_S), so that the stream keeps the kernel's order, across devices too.
"""

from __future__ import annotations

import errno as errno_mod
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.linux.fanotify import FanEvent, FsErrorWatch
from fsev.linux.kernel_log import LogLine
from fsev.linux.mountinfo import Mount
from fsev.points.ext4_error import plan_ext4_error
from fsev.points.ext4_error_log import RateModel, parse_ext4_error, rate_model
from fsev.points.kernel_log import CONSOLE_TRACEPOINT
from fsev.points.kernel_log import NAME as KERNEL_LOG_POINT
from fsev.probes.ladder import Rung, RungKind
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "ext4_error_detail"

_FS_ERROR = EventType.FS_ERROR  # an enum member lookup costs on the flood path
# The longest an event waits for fanotify or the superblock. Normally both
# come within a millisecond; ext4 prints the error to the console first, and
# a slow serial console under load has taken over 100 ms.
HOLD_S = 0.5
# While an error waits for the superblock to count it, sysfs is re-read at
# most this often per device (a flood would otherwise cost six reads each).
SYSFS_REREAD_S = 0.001
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
_LAST_ERROR_KEYS = ("func", "line", "errcode", "ino", "block")
_WAIT: dict = {}  # _superblock_error: not counted yet (compared by identity)


@dataclass
class _Queued:
    """One FAN_FS_ERROR event: its first error told, the rest merged."""

    errno: int | None
    ino: int | None
    untold: int  # errors still to match: the first carries errno/inode
    since: float = 0.0  # when fsev read it: one no error takes is an error with no tracepoint
    read_ns: int = 0  # the same on the kernel's clock (events' ts_ns)
    # Read while the ring buffer dropped records: its traced error may be one
    # of them, so it never stands alone (the loss event counts that error).
    lossy: bool = False


@dataclass
class _Held:
    """An event waiting for what comes after it in the kernel."""

    since: float
    ev: Event
    ordinal: int | None = None  # the superblock's errors_count once it has counted this error
    merged: bool = False  # fanotify merged it: only the superblock can tell its errno
    told: bool = False  # fanotify told its errno (the fanotify step is done)
    log: bool = False  # waits for its kernel log line
    std: bool = False  # made from a std error's log line: still takes its fanotify event
    done: bool = False  # made complete (from a FAN_FS_ERROR event alone)


def sysfs_last_error(name: str, root: str = "/sys/fs/ext4") -> dict | None:
    """The superblock's last recorded error: func (str); line, errcode, ino,
    block, count (int; count is errors_count, None if unreadable)."""
    out: dict = {}
    for key in _LAST_ERROR_KEYS:
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
    out["count"] = sysfs_errors_count(name, root)
    return out


def sysfs_errors_count(name: str, root: str = "/sys/fs/ext4") -> int | None:
    try:
        with open(os.path.join(root, name, "errors_count")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def block_dev_name(dev: str) -> str | None:
    """The kernel's name of a block device ("loop2", "sda1"): ext4's sysfs directory."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{dev}"))
    except OSError:
        return None


def _same_error(ev: Event, last: dict | None) -> bool:
    return last is not None and last.get("func") == ev.function and last.get("line") == ev.line


def fill_merged_from_sysfs(ev: Event, last: dict | None, ordinal: int | None) -> None:
    """An error fanotify merged: errno from the superblock's last error if it
    is this one. Not its inode: the last error's may be another error's."""
    if last is None or not _same_error(ev, last) or not last["errno"]:
        return
    if ev.errno is None:
        ev.errno = last["errno"]
        ev.extra["errno_source"] = "sysfs"
    if ev.block is None and last.get("block") and ordinal is not None:
        ev.block = last["block"]  # counted: the last error is this one
        ev.extra["block_source"] = "sysfs"


def fill_from_sysfs(ev: Event, last: dict | None) -> bool:
    """Take errno, inode, block from the superblock's last error if it is this
    event's error (same function and line)."""
    if last is None or not _same_error(ev, last):
        return False
    code, ino, block = last.get("errcode"), last.get("ino"), last.get("block")
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
                 last_error: Callable[[str], dict | None] | None = None,
                 make_event: Callable[..., Event] | None = None, log: bool = False,
                 rates: Callable[[str], RateModel] | None = None, xfs: bool = False,
                 drops: Callable[[], int] | None = None) -> None:
        self.fan = watch
        self.now = now
        self._last_error = last_error or self._read_sysfs
        self._make_event = make_event or _plain_event
        self.log = log  # the kernel_log point runs: errors wait for their lines
        self._rates = rates or self._read_rates
        self.xfs = xfs  # FAN_FS_ERROR reports XFS errors (7.0+): mark XFS mounts too
        self._drops = drops  # the ring buffer's drop count (KernelTables.drops)
        self._drops_seen = 0
        self._drop_at = float("-inf")  # when that count last grew
        self.withheld = 0  # errors of FAN_FS_ERROR events not emitted, the ring having dropped records
        self._fsid_dev: dict[int, str] = {}
        self._fan_devs: set[str] = set()  # devices with a FAN_FS_ERROR mark
        self._alone: set[str] = set()  # marked devices with no tracepoint error: fanotify is all
        self._mounts: dict[str, Mount] = {}  # dev -> the watched mount, for events made here
        self._queued: dict[str, deque[_Queued]] = {}
        self._late: dict[str, int] = {}  # errors given up on whose fanotify event may still come
        self._held: deque[_Held] = deque()
        self._names: dict[str, str | None] = {}
        self._sysfs: dict[str, tuple[float, dict | None]] = {}  # dev -> (read at, last error)
        self._ordinal: dict[str, int] = {}  # dev -> errors_count once the superblock has counted all seen
        self._rate: dict[str, RateModel] = {}
        # The newest kernel time of an event or log line this half has seen, and
        # when it last saw one: a FAN_FS_ERROR event read before that time had
        # its traced error (if any) processed already (_orphans).
        self._seen_ns = 0
        self._last_seen = float("-inf")
        self.notes: list[str] = []  # what a user should know about a mount's details (stderr, doctor)

    # -- which filesystems -------------------------------------------------
    def watch(self, mounts: list[Mount]) -> None:
        """Follow these mounts from now on (the watched ones of the mount table)."""
        ids: dict[str, set[int]] = {}
        for m in mounts:
            ids.setdefault(m.dev, set()).add(m.mnt_id)
        for dev, old in list(self._mounts.items()):
            if old.mnt_id not in ids.get(dev, ()):
                self._forget(dev, old)  # gone: a new filesystem may come on the same device
        for m in mounts:
            if m.fs_type not in ("ext4", "xfs") or m.dev in self._mounts:
                continue
            if m.fs_type == "xfs" and not (self.xfs and self.fan is not None):
                continue
            self._mounts[m.dev] = m
            try:
                fsid = os.statvfs(m.mount_point).f_fsid
            except OSError:
                continue
            if self.fan is None or self.fan.watch(m.mount_point):
                self._fsid_dev[fsid] = m.dev
                if self.fan is not None:
                    self._fan_devs.add(m.dev)
                    if m.fs_type == "xfs":
                        self._alone.add(m.dev)
            else:
                self.notes.append(self._refused_note(m))
            if m.fs_type != "ext4":
                continue
            last = self._read_last_error(m.dev)
            if last is not None and last.get("count") is not None:
                self._ordinal[m.dev] = last["count"]

    def _forget(self, dev: str, m: Mount) -> None:
        del self._mounts[dev]
        for fsid in [f for f, d in self._fsid_dev.items() if d == dev]:
            del self._fsid_dev[fsid]
        self._fan_devs.discard(dev)
        self._alone.discard(dev)
        self._ordinal.pop(dev, None)
        self._rate.pop(dev, None)
        self._sysfs.pop(dev, None)
        self._names.pop(dev, None)
        self._late.pop(dev, None)
        self._queued.pop(dev, None)
        if self.fan is not None:
            self.fan.marked.discard(m.mount_point)

    def _refused_note(self, m: Mount) -> str:
        err = self.fan.refused.get(m.mount_point, 0) if self.fan is not None else 0
        why = ("its filesystem has a zero fsid (no UUID: tune2fs -U clear)" if err == errno_mod.ENODEV
               else os.strerror(err) if err else "the mark was refused")
        name = self._names.get(m.dev) or block_dev_name(m.dev)
        ro = _bdev_read_only(name) if name else False
        where = ("inode and block from the kernel log alone, no errno (the device is read-only: ext4 "
                 "records no error in sysfs)" if ro
                 else "errno, inode and block from the superblock's last recorded error (sysfs) and the kernel log")
        return f"{m.mount_point} ({m.dev}): FAN_FS_ERROR cannot mark it: {why}; its errors get {where}"

    def on_fanotify(self, events: list[FanEvent]) -> None:
        now = self.now()
        if events and self._drops is not None:
            # A dropped record's error came before its FAN_FS_ERROR event (the
            # tracepoint fires first), so the count read now has it; HOLD_S
            # covers an event the reader thread took after that count grew.
            total = self._drops()
            if total > self._drops_seen:
                self._drops_seen, self._drop_at = total, now
        lossy = now - self._drop_at <= HOLD_S
        for fe in events:
            dev = self._fsid_dev.get(fe.fsid) if fe.fsid is not None else None
            if dev is None or fe.error is None:
                continue
            q = _Queued(fe.error, fe.ino, max(1, fe.error_count or 1), now, int(now * 1e9), lossy)
            if dev in self._alone:  # nothing to match: the event is the error
                self._held.append(_Held(now, self._fanotify_event(dev, q), done=True))
                continue
            late = self._late.get(dev, 0)
            if late:  # errors that went out without it: theirs, not the next error's
                skip = min(late, q.untold)
                self._late[dev] = late - skip
                q.untold -= skip
                q.errno = q.ino = None
                if q.untold <= 0:
                    continue
            self._queued.setdefault(dev, deque()).append(q)

    # -- the kernel log (fsev/points/kernel_log.py) --------------------------
    def on_log(self, line: LogLine) -> list[Event]:
        """An ext4 log line: the details of the error it prints. Events come
        out of poll(), in order (none from here)."""
        dev = line.dev
        if dev is None or dev not in self._mounts:
            return []
        self._saw(line.ts_ns)
        got = parse_ext4_error(line)
        if got is None:
            return []
        if got.std:
            self._rate_of(dev).printed(line.ts_ns)  # it took a line of the same limit
            ev = self._new_event(dev, "kernel_log", ts_ns=line.ts_ns, pid=line.pid or None,
                                 tgid=line.tgid or None, comm=line.comm or None, function=line.function,
                                 line=line.line, errno=got.errno)
            ev.extra["std_error"] = True
            if got.errno is not None:
                ev.extra["errno_source"] = "kernel_log"
            # It takes its place among the device's errors: its FAN_FS_ERROR
            # event and its count in the superblock are its own.
            self._held.append(_Held(self.now(), ev, self._count(dev), log=False, std=True))
            return []
        for h in self._held:
            ev = h.ev
            if (h.log and ev.dev == dev and ev.function == line.function and ev.line == line.line
                    and (not ev.pid or not line.pid or ev.pid == line.pid)):
                h.log = False
                if ev.inode is None and got.inode:
                    ev.inode = got.inode
                    ev.extra["inode_source"] = "kernel_log"
                if ev.block is None and got.block:
                    ev.block = got.block
                    ev.extra["block_source"] = "kernel_log"
                break
        return []

    def _saw(self, ts_ns: int) -> None:
        if ts_ns > self._seen_ns:
            self._seen_ns = ts_ns
        self._last_seen = self.now()

    def _rate_of(self, dev: str) -> RateModel:
        r = self._rate.get(dev)
        if r is None:
            r = self._rate[dev] = self._rates(dev)
        return r

    def _read_rates(self, dev: str) -> RateModel:
        name = self._name(dev)
        return rate_model(name) if name else RateModel()

    # -- events ------------------------------------------------------------
    def process(self, ev: Event) -> list[Event]:
        """Events ready to go on, in order; fs_errors may wait for their detail."""
        if ev.ts_ns > self._seen_ns:  # _saw(), inline: this is the flood path
            self._seen_ns = ev.ts_ns
        self._last_seen = self.now()
        if ev.type is not _FS_ERROR or ev.fs_type not in (None, "ext4"):  # another filesystem's: its own point's
            if self._held:
                self._held.append(_Held(0.0, ev))
                return self._release()
            return [ev]
        dev = ev.dev or ""
        ordinal = self._count(dev)
        log = (ev.errno is None and self.log and dev in self._mounts
               and self._rate_of(dev).printed(ev.ts_ns))  # its kernel log line will follow
        if ev.errno is None and not log and not self._held and self._merged_at_once(ev, dev, ordinal):
            return [ev]
        h = _Held(0.0, ev, ordinal)
        if ev.errno is not None:  # the kprobe rung had it from the arguments
            ev.extra["errno_source"] = ev.rung
            if ev.inode is not None:
                ev.extra["inode_source"] = ev.rung
            if ev.block is not None:
                ev.extra["block_source"] = ev.rung
            if not self._held:
                return [ev]
            h.ordinal = None
        else:
            h.log = log
            if not self._held and self._complete(h, self.now(), force=False):
                # The common case, a flood too: fanotify told already (or merged
                # this error into one it told), or there is nothing to wait for.
                return [ev]
        h.since = self.now()
        self._held.append(h)
        return self._release()

    def poll(self) -> list[Event]:
        got = self._read_fanotify()
        if got:
            self.on_fanotify(got)
        self._orphans()
        if not self._held:
            return []
        return self._release()

    def flush(self) -> list[Event]:
        self.on_fanotify(self._read_fanotify())
        self._orphans(force=True)
        return self._release(force=True)

    @property
    def holding(self) -> bool:
        return bool(self._held) or any(self._queued.values())

    def _count(self, dev: str) -> int | None:
        """This error's place in the superblock's errors_count."""
        n = self._ordinal.get(dev)
        if n is None:
            return None
        self._ordinal[dev] = n + 1
        return n + 1

    def _read_fanotify(self) -> list[FanEvent]:
        return self.fan.read() if self.fan is not None and self.fan.fd >= 0 else []

    def _orphans(self, force: bool = False) -> None:
        """FAN_FS_ERROR events no traced error took: errors with no
        tracepoint (__ext4_std_error without its log line). Sure once an event
        the kernel sent after fsev read it has been seen (a traced error's
        record comes before its FAN_FS_ERROR event), or once nothing has come
        for HOLD_S; never while fsev lags behind the kernel in a flood, and
        never one read while the ring buffer dropped records (_Queued.lossy)."""
        now = self.now()
        idle = now - self._last_seen >= HOLD_S
        for dev, q in self._queued.items():
            if not q or any(h.ev.dev == dev and self._wants_fanotify(h) for h in self._held):
                continue
            while q and (force or self._seen_ns > q[0].read_ns or (idle and now - q[0].since >= HOLD_S)):
                orphan = q.popleft()
                if orphan.lossy:
                    self.withheld += orphan.untold
                else:
                    self._held.append(_Held(now, self._fanotify_event(dev, orphan), done=True))

    @staticmethod
    def _wants_fanotify(h: _Held) -> bool:
        return (h.ev.type is _FS_ERROR and not (h.done or h.told or h.merged)
                and (h.std or "errno_source" not in h.ev.extra))

    def _fanotify_event(self, dev: str, q: _Queued) -> Event:
        ev = self._new_event(dev, "fanotify", errno=q.errno, inode=q.ino or None)
        if q.errno is not None:
            ev.extra["errno_source"] = "fanotify"
        else:
            ev.extra["errno_merged"] = True
        if q.ino:
            ev.extra["inode_source"] = "fanotify"
        if q.untold > 1:
            ev.extra["errors_merged"] = q.untold - 1
        return ev

    def _new_event(self, dev: str, rung: str, ts_ns: int | None = None, **fields: object) -> Event:
        ev = self._make_event(cls=EventClass.ERR, type=_FS_ERROR, rung=rung, dev=dev, **fields)
        if ts_ns:
            ev.ts_ns = ts_ns
        m = self._mounts.get(dev)
        if m is not None:
            ev.mount_point, ev.fs_type, ev.source, ev.mnt_id = m.mount_point, m.fs_type, m.source, m.mnt_id
        return ev

    def _release(self, force: bool = False) -> list[Event]:
        out: list[Event] = []
        now = self.now()
        held = self._held
        while held:
            h = held[0]
            if h.ev.type is _FS_ERROR and not h.done and (h.std or "errno_source" not in h.ev.extra or h.log):
                if not self._complete(h, now, force or now - h.since >= HOLD_S):
                    break
            held.popleft()
            out.append(h.ev)
        return out

    def _complete(self, h: _Held, now: float, force: bool) -> bool:
        """Fill one tracepoint error from fanotify, its log line or the
        superblock; False while it should wait (never when force)."""
        ev, dev = h.ev, h.ev.dev or ""
        if dev in self._fan_devs and not h.merged and not h.told:
            if not self._queued.get(dev):
                self.on_fanotify(self._read_fanotify())
            told = self._take(dev, ev)
            if told is None:  # fanotify has not told of it yet
                if not force:
                    return False
                self._late[dev] = self._late.get(dev, 0) + 1
            elif told:
                h.told = True
            else:
                h.merged = True
                ev.extra["errno_merged"] = True
        if h.log:  # its kernel log line comes right behind it
            if not force:
                return False
            h.log = False
            self._rate_of(dev).silenced()
        h.std = False
        if h.told:
            # Block: fanotify has none; the superblock's, if it has recorded
            # this error by now (no wait for it: told errors go at once).
            if ev.block is None:
                got = self._sysfs.get(dev)
                last = got[1] if got is not None else None
                if last is not None and self._counted(last, h.ordinal):
                    fill_from_sysfs(ev, last)
            return True
        last = self._superblock_error(dev, h, now, force)
        if last is _WAIT:
            return False
        if h.merged:
            fill_merged_from_sysfs(ev, last, h.ordinal)
        else:
            fill_from_sysfs(ev, last)
        return True

    def _merged_at_once(self, ev: Event, dev: str, ordinal: int | None) -> bool:
        """The flood's case of _complete, without a _Held or a read: fanotify
        merged this error into the queued event at the head (its first error
        told already), no kernel log line is to come for it, and the
        superblock, as last read, has counted it. Then
        it completes as _complete would (the superblock's errno if its last
        error is this one) and True; False, having changed nothing, for
        _complete to decide (tests/unit/points/test_ext4_error_detail_fast.py
        holds the two to the same answers)."""
        q = self._queued.get(dev)
        if not q or q[0].errno is not None or dev not in self._fan_devs:
            return False
        got = self._sysfs.get(dev)
        if got is None:
            return False
        last = got[1]
        if ordinal is not None and last is not None and last.get("count") is not None and last["count"] < ordinal:
            return False  # not counted yet (_counted)
        head = q[0]
        head.untold -= 1
        if head.untold <= 0:
            q.popleft()
        ev.extra["errno_merged"] = True
        fill_merged_from_sysfs(ev, last, ordinal)
        return True

    def _take(self, dev: str, ev: Event) -> bool | None:
        """Match the next fanotify error of this device: True if it told this
        error's errno, False if it merged it, None if none came yet."""
        q = self._queued.get(dev)
        if not q:
            return None
        head = q[0]
        told = head.errno is not None
        if told:  # the first error of this queued event
            if ev.errno is None:
                ev.errno = head.errno
                ev.extra["errno_source"] = "fanotify"
            # The kernel log line may have come first: fanotify's inode is the
            # same one, and errno and inode then name one source.
            if head.ino and (ev.inode is None or ev.extra.get("inode_source") == "kernel_log"):
                ev.inode = head.ino
                ev.extra["inode_source"] = "fanotify"
            head.errno = None
        head.untold -= 1
        if head.untold <= 0:
            q.popleft()
        return told

    def _superblock_error(self, dev: str, h: _Held, now: float, force: bool) -> dict | None:
        """The superblock's last error once it has counted this one; _WAIT to wait."""
        got = self._sysfs.get(dev)
        last = got[1] if got is not None else None
        if got is not None and self._counted(last, h.ordinal):
            return last
        if got is None or now - got[0] >= SYSFS_REREAD_S or force:
            last = self._read_last_error(dev)
            self._sysfs[dev] = (now, last)
            if self._counted(last, h.ordinal):
                return last
        if not force:
            return _WAIT
        # Given up: the superblock did not count this error (a read-only
        # device does not record errors). Later errors of the device do not wait for it.
        if h.ordinal is not None:
            self._ordinal.pop(dev, None)
            for o in self._held:
                if o.ev.dev == dev:
                    o.ordinal = None
        return last

    @staticmethod
    def _counted(last: dict | None, ordinal: int | None) -> bool:
        if ordinal is None or last is None or last.get("count") is None:
            return True  # nothing to wait for
        return last["count"] >= ordinal

    def _read_last_error(self, dev: str) -> dict | None:
        last = self._last_error(dev)
        if last is not None:
            last["errno"] = EXT4_ERRCODE_ERRNO.get(last.get("errcode", 0))
        return last

    def _name(self, dev: str) -> str | None:
        if dev not in self._names:
            self._names[dev] = block_dev_name(dev)
        return self._names[dev]

    def _read_sysfs(self, dev: str) -> dict | None:
        name = self._name(dev)
        return sysfs_last_error(name) if name else None

    def close(self) -> None:
        if self.fan is not None:
            self.fan.close()


def _plain_event(**fields: object) -> Event:
    return Event(seq=0, ts_ns=time.monotonic_ns(), wall_time=time.time(), **fields)  # type: ignore[arg-type]


def _bdev_read_only(name: str) -> bool:
    try:
        with open(f"/sys/class/block/{name}/ro") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


# The detail rung's target when FAN_FS_ERROR reports XFS errors too (7.0+: fserror_report).
FAN_XFS = "FAN_FS_ERROR (XFS)"


def plan_ext4_error_detail(facts: KernelFacts) -> Rung:
    base = plan_ext4_error(facts)
    if base.kind is RungKind.KPROBE:
        return Rung(NAME, RungKind.KPROBE, base.targets, gives="errno, inode, block from the function arguments")
    if base.kind is RungKind.NONE:
        return Rung(NAME, RungKind.NONE, skipped=("no ext4 error rung",))
    skipped: tuple[str, ...] = ("kprobe: the ext4 error rung is " + base.kind.value,)
    log = facts.has_tracepoint(CONSOLE_TRACEPOINT)
    from_log = ("; inode and block from the error's kernel log line while ext4 does not rate-limit it "
                "(10 lines per 5 s by default)") if log else ""
    std = ("; __ext4_std_error errors (no tracepoint) from their kernel log line or FAN_FS_ERROR event"
           if log else "; __ext4_std_error errors (no tracepoint) from their FAN_FS_ERROR event")
    if facts.fanotify_fs_error:
        targets: tuple[str, ...] = ("FAN_FS_ERROR", "/sys/fs/ext4/*/last_error_*")
        if facts.fserror:
            targets += (FAN_XFS,)
        return Rung(NAME, RungKind.FANOTIFY, targets,
                    gives="errno and inode of the first error fanotify queued (read by a thread of its own the "
                    "moment it is queued); else the superblock's last recorded error (errno, inode, block) when "
                    "its function and line match" + from_log + std,
                    misses="errno of errors merged into one queued fanotify event anyway that the superblock's "
                    "last error does not describe (marked errno_merged); filesystems with a zero fsid cannot "
                    "be marked (shown at start); after ring-buffer loss, errno may be matched to the wrong error",
                    skipped=skipped)
    skipped += ("fanotify: no FAN_FS_ERROR (kernel before 5.16)",)
    return Rung(NAME, RungKind.POLLED, ("/sys/fs/ext4/*/last_error_*",),
                gives="errno, inode, block of the superblock's last recorded error when its function and line "
                "match the event's" + from_log,
                misses="every error but the last of a burst past the log's rate limit; __ext4_std_error errors "
                "without a log line", skipped=skipped)


_HELD_POLL_MS = 2  # loop turn while events wait for fanotify


class DetailMonitor(PointMonitor):
    """Completes fs_errors; every event waits in order behind one that waits
    for its detail (so this half sees every event first: orders)."""

    orders = True

    def __init__(self, ctx: SessionContext, detail: Ext4ErrorDetail) -> None:
        self.ctx = ctx
        self.detail = detail
        # Every event of the session passes here: one call, not two.
        self.process = detail.process  # type: ignore[method-assign]
        self._generation = (-1, -1)
        self._noted = 0
        if detail.log:
            ctx.read_kernel_log("ext4", detail.on_log)
        self.mounts_changed()

    def mounts_changed(self) -> None:
        ctx = self.ctx
        generation = (ctx.table.generation, ctx.watch_generation)
        if self._generation == generation:
            return
        self._generation = generation
        self.detail.watch([m for m in ctx.table if m.fs_type in ("ext4", "xfs") and ctx.mount_watched(m)])

    def process(self, ev: Event) -> list[Event]:
        return self.detail.process(ev)

    def poll(self) -> list[Event]:
        self.mounts_changed()
        return self.detail.poll()

    def flush(self) -> list[Event]:
        return self.detail.flush()

    def timeout_ms(self, default: int) -> int:
        return min(default, _HELD_POLL_MS) if self.detail.holding else default

    def wake_fds(self) -> list[int]:
        fan = self.detail.fan
        if fan is None or fan.fd < 0:
            return []
        return [fan.wake_fd] if fan.wake_fd >= 0 else [fan.fd]

    def notes(self) -> list[str]:
        new = self.detail.notes[self._noted:]
        self._noted = len(self.detail.notes)
        return new

    def close(self) -> None:
        self.detail.close()


def mark_notes(mounts: list[Mount]) -> list[str]:
    """`fsev doctor`: the mounts among these that FAN_FS_ERROR cannot mark, and why."""
    try:
        fan = FsErrorWatch()
    except OSError:
        return []  # not root, or no fanotify: doctor says so elsewhere
    try:
        d = Ext4ErrorDetail(fan, last_error=lambda dev: None)
        d.watch([m for m in mounts if m.fs_type == "ext4"])
        return d.notes
    finally:
        fan.close()


class Ext4ErrorDetailPoint(Point):
    name = NAME

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_ext4_error_detail(facts)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        kind = ctx.plan.kind(NAME)
        if EventClass.ERR not in ctx.classes or kind is None:
            return None
        fan = None
        if kind is RungKind.FANOTIFY:
            try:
                fan = FsErrorWatch()
            except OSError:
                fan = None
            else:
                fan.start_reader()
        log = ctx.plan.kind(KERNEL_LOG_POINT) is not None
        rung = ctx.plan.rung(NAME)
        xfs = rung is not None and FAN_XFS in rung.targets
        drops = ctx.probes.drops if ctx.probes is not None else None
        return DetailMonitor(ctx, Ext4ErrorDetail(fan, ctx.now, make_event=ctx.make_event,
                                                  log=log and kind is not RungKind.KPROBE, xfs=xfs, drops=drops))


POINT = Ext4ErrorDetailPoint()
