"""Probe point btrfs_error: btrfs handled a filesystem error, aborted a
transaction, or failed a checksum (bpf/btrfs_error.bpf.c; fs_error events).

btrfs has no error tracepoint (6.18 neither). Every error goes through
__btrfs_handle_fs_error(fs_info, function, line, error, fmt, ...), which
prints "BTRFS: error (device D state S) in FUNCTION:LINE: errno=-N TEXT" and
turns the filesystem read-only (SB_RDONLY: mountinfo shows `ro`; the
read_only point reports it, linked to this error, when it re-reads mountinfo
after the fs_error); a transaction abort goes through
__btrfs_abort_transaction(trans, function, line, error, first_hit), which
calls the former with the same function and line.

Ladder:
- kprobe: kprobes on both functions (argument positions the same in 6.1
  and 6.18; only the errno argument's name changed, to `error`): device (fs_info->sb->s_dev, or
  trans->fs_info->sb->s_dev), function, line, errno, the erroring task, and
  which were aborts. Checksum failures, which btrfs only logs, still come
  from the kernel log lines.
- tracepoint: the kernel log lines (the kernel_log point, printk:console):
  btrfs's error lines parsed for function, line, errno; "Transaction
  aborted (error -N)" before one marks it an abort; "csum failed root R ino I
  off O ... mirror M" and "checksum verify failed on logical L mirror M" give
  the data/metadata checksum failures; other lines at level error or
  critical are fs_errors with btrfs's message. The line is printed in the
  erroring task, so pid and comm are its.
  Misses: lines btrfs rate-limited (its btrfs_err/warn/crit: 100 lines per
  5 s per level; the "in FUNCTION:LINE" line is never rate-limited); an abort
  after the first since mount (btrfs prints "Transaction aborted" only for the
  first: later ones are fs_errors without transaction_abort); text past the
  record's 111 bytes (a checksum line's `mirror` may be cut off).
- none.
The device counters (I/O, corruption, generation errors) are the
btrfs_dev_stats point's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import TEXT_LEN, RecordClass, RecordType
from fsev.linux.kernel_log import LogLine
from fsev.points.btrfs_fs import FS_TYPE, BtrfsMounts
from fsev.points.kernel_log import event_of_line
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, module_btf_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "btrfs_error"
# Known signatures (the kprobe programs read arguments by these positions;
# 6.1 names the fourth `errno`):
#   void __btrfs_handle_fs_error(struct btrfs_fs_info *fs_info, const char *function,
#                                unsigned int line, int error, const char *fmt, ...)   6.1: super.c; 6.18: messages.c
#   void __btrfs_abort_transaction(struct btrfs_trans_handle *trans, const char *function,
#                                  unsigned int line, int error, bool first_hit)        6.1 and 6.18: transaction.c
HANDLE_FS_ERROR = "__btrfs_handle_fs_error"
ABORT_TRANSACTION = "__btrfs_abort_transaction"
CONSOLE_TRACEPOINT = "printk:console"
KPROBE_OFFSETS = ("super_block.s_dev", "super_block.s_flags", "btrfs_fs_info.sb", "btrfs_trans_handle.fs_info")

_LOG_MISSES = ("lines btrfs rate-limited (100 per 5 s per level); aborts after the first since mount "
               "(no 'Transaction aborted' line: an fs_error without transaction_abort); "
               f"text past {TEXT_LEN - 1} bytes")


def plan_btrfs_error(facts: KernelFacts) -> Rung:
    why = kprobe_skip_reason(facts, (HANDLE_FS_ERROR,)) or module_btf_skip_reason(facts, FS_TYPE, "kprobe")
    csum = ("; checksum failures from the kernel log (printk:console)"
            if facts.has_tracepoint(CONSOLE_TRACEPOINT) else "")
    if why is None:
        targets = (HANDLE_FS_ERROR,) + ((ABORT_TRANSACTION,) if ABORT_TRANSACTION in facts.kprobe_functions else ())
        return Rung(NAME, RungKind.KPROBE, targets,
                    gives="every btrfs error and transaction abort: device, function, line, errno, task" + csum,
                    misses="" if csum else "checksum failures (btrfs only logs them)")
    skipped = (why,)
    if facts.has_tracepoint(CONSOLE_TRACEPOINT):
        return Rung(NAME, RungKind.TRACEPOINT, (CONSOLE_TRACEPOINT,),
                    gives="btrfs's error lines in the kernel log (the kernel_log point): function, line, errno, "
                          "task; transaction aborts; checksum failures with root, inode, offset, mirror",
                    misses=_LOG_MISSES, skipped=skipped)
    return Rung(NAME, RungKind.NONE, skipped=skipped + (f"tracepoint: {CONSOLE_TRACEPOINT} not present",))


# -- btrfs's log lines (pure) ----------------------------------------------------
# __btrfs_handle_fs_error: "in FUNCTION:LINE: errno=-5 IO failure" (kernel_log parsed function and line)
_ERRNO = re.compile(r"errno=(-?\d+) ?(?P<text>.*)", re.S)
# the btrfs_abort_transaction macro, first abort since mount: btrfs_err, or WARN for unusual errors
_ABORTED = re.compile(r"Transaction aborted \(error (-?\d+)\)")
# btrfs_print_data_csum_error (fs/btrfs/inode.c); a long line is cut before its mirror
_DATA_CSUM = re.compile(r"csum failed root (-?\d+) ino (\d+) off (\d+)(?:.*? mirror (\d+))?")
# btrfs_validate_extent_buffer (fs/btrfs/disk-io.c): a tree block's checksum
_META_CSUM = re.compile(r"checksum verify failed on logical (\d+) mirror (\d+)")
# btrfs_dev_stat_print_on_error: the counters line (btrfs_dev_stats reads the counters themselves)
_DEV_STATS_LINE = re.compile(r"bdev \S+ errs: ")
_ERROR_LEVELS = frozenset({"error", "critical", "alert", "emergency"})
EIO = 5


@dataclass(frozen=True)
class BtrfsLogError:
    """What one btrfs log line says of an error (the fs_error's fields)."""

    function: str | None = None
    line: int | None = None
    errno: int | None = None
    inode: int | None = None
    message: str | None = None
    extra: tuple[tuple[str, int], ...] = ()  # root, offset, logical, mirror
    handled: bool = False  # the "in FUNCTION:LINE: errno=" line of __btrfs_handle_fs_error


def abort_marker(line: LogLine) -> int | None:
    """The errno of a "Transaction aborted (error -N)" line, else None."""
    m = _ABORTED.search(line.body)
    return abs(int(m.group(1))) if m else None


def parse_btrfs_error(line: LogLine) -> BtrfsLogError | None:
    """A btrfs log line -> the error it reports, or None (info lines, the counters line)."""
    body = line.body
    if line.function is not None:
        m = _ERRNO.match(body)
        if m is not None:
            return BtrfsLogError(function=line.function, line=line.line, errno=abs(int(m.group(1))) or None,
                                 message=m.group("text").strip() or None, handled=True)
    m = _DATA_CSUM.search(body)
    if m is not None:
        extra = [("root", int(m.group(1))), ("offset", int(m.group(3)))]
        if m.group(4) is not None:
            extra.append(("mirror", int(m.group(4))))
        return BtrfsLogError(inode=int(m.group(2)), message="csum failed", extra=tuple(extra))
    m = _META_CSUM.search(body)
    if m is not None:
        return BtrfsLogError(message="checksum verify failed",
                             extra=(("logical", int(m.group(1))), ("mirror", int(m.group(2)))))
    if line.level in _ERROR_LEVELS and not _DEV_STATS_LINE.match(body) and abort_marker(line) is None:
        return BtrfsLogError(function=line.function, line=line.line, message=body.strip())
    return None


ABORT_WINDOW_NS = 1_000_000_000  # the abort's own error line follows its marker at once, in the same task


class BtrfsLogReader:
    """btrfs's log lines of watched filesystems -> fs_error events."""

    def __init__(self, ctx: SessionContext, mounts: BtrfsMounts, handled_by_kprobe: bool) -> None:
        self.ctx = ctx
        self.mounts = mounts
        # On the kprobe rung the kprobes report __btrfs_handle_fs_error and
        # aborts; the lines add only what btrfs logs alone (checksums, others).
        self.handled_by_kprobe = handled_by_kprobe
        # "Transaction aborted" markers by the task that printed them, and by device: [errno, ts_ns, used]
        self._aborts: dict[int, list] = {}
        self._aborts_on: dict[str, list] = {}

    def __call__(self, line: LogLine) -> list[Event]:
        err_of_abort = abort_marker(line)
        if err_of_abort is not None:
            if len(self._aborts) + len(self._aborts_on) > 256:
                self._aborts = {p: a for p, a in self._aborts.items() if line.ts_ns - a[1] < ABORT_WINDOW_NS}
                self._aborts_on = {d: a for d, a in self._aborts_on.items() if line.ts_ns - a[1] < ABORT_WINDOW_NS}
            marker = [err_of_abort, line.ts_ns, False]  # errno, when, used: one marker marks one error
            self._aborts[line.pid] = marker
            if line.device:
                self._aborts_on[line.device] = marker
            return []
        got = parse_btrfs_error(line)
        if got is None or (got.handled and self.handled_by_kprobe):
            return []
        self.mounts.refresh(self.ctx.watch_generation)
        found = self.mounts.by_member(line.dev, line.device)
        if found is None:
            return []  # not a watched, mounted btrfs filesystem
        w, _member = found
        m = w.mount
        extra: dict[str, object] = dict(got.extra)
        if got.message:
            extra["message"] = got.message
        if got.handled:
            # The same task printed the marker just before; where the task is
            # not the erroring one (kernels before 5.15 trace the console's
            # printing), the same device's marker.
            for abort in (self._aborts.get(line.pid), self._aborts_on.get(line.device or "")):
                if abort is not None and not abort[2] and abort[0] == got.errno \
                        and 0 <= line.ts_ns - abort[1] < ABORT_WINDOW_NS:
                    abort[2] = True
                    extra["transaction_abort"] = True
                    break
            own = self._aborts.pop(line.pid, None)
            if own is not None:  # the task's next error line after its marker is the abort's, or none is
                own[2] = True
        return [event_of_line(self.ctx, line, EventType.FS_ERROR, m.fs_type, mount=m, function=got.function,
                              line=got.line, errno=got.errno, inode=got.inode, extra=extra)]


class BtrfsErrorMonitor(PointMonitor):
    """Registers the log reader; makes no events of its own between lines."""

    def __init__(self, ctx: SessionContext, reader: BtrfsLogReader) -> None:
        self.reader = reader
        ctx.read_kernel_log(FS_TYPE, reader)

    def mounts_changed(self) -> None:
        self.reader.mounts.refresh(self.reader.ctx.watch_generation)


class BtrfsError(Point):
    name = NAME
    module = FS_TYPE
    record_type = RecordType.BTRFS_ERROR
    event_type = EventType.FS_ERROR
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({CONSOLE_TRACEPOINT})
    kprobe_functions = frozenset({HANDLE_FS_ERROR, ABORT_TRANSACTION})
    switches = {RungKind.KPROBE: "FSEV_BTRFS_ERROR_KPROBE"}
    rung_offsets = {RungKind.KPROBE: KPROBE_OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_btrfs_error(facts)

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        if value & 1:
            ev.extra["transaction_abort"] = True

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        kind = ctx.plan.kind(NAME)
        if EventClass.ERR not in ctx.classes or kind is None or ctx.plan.kind("kernel_log") is None:
            return None
        reader = BtrfsLogReader(ctx, BtrfsMounts(ctx.table, ctx.mount_watched), kind is RungKind.KPROBE)
        return BtrfsErrorMonitor(ctx, reader)


POINT = BtrfsError()
