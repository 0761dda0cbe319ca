"""Probe point block_io_error: a block request completed with an error (bpf/block_io_error.bpf.c).

Ladder: the block:block_rq_error tracepoint, else a kprobe on
blk_update_request (kernels without that tracepoint). A request names the
whole disk; the user-space half maps its sector to the partition and the
mounts on it.
"""

from __future__ import annotations

from fsev.events import Event, EventType
from fsev.events.device import Device
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType, c_string
from fsev.linux.blockdev import disk_of, partition_of, source_dev
from fsev.linux.mountinfo import Mount
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "block_io_error"
BLOCK_RQ_ERROR = "block:block_rq_error"
# bool blk_update_request(struct request *, blk_status_t, unsigned int)  4.13+
BLOCK_KPROBE = "blk_update_request"
KPROBE_OFFSETS = ("request.part", "block_device.bd_dev", "request.__sector")
# blk_status_t values that have kept their number since 4.13 -> errno
# (block/blk-core.c blk_errors[]); the rest are reported raw.
BLK_STATUS_ERRNO = {1: 95, 2: 110, 3: 28, 10: 5}


def plan_block_io(facts: KernelFacts) -> Rung:
    misses = ("errors below a stacked device (dm, md) show on the device that failed, which fsev maps to "
              "mounts only when it, or a partition of it, is mounted")
    if facts.has_tracepoint(BLOCK_RQ_ERROR):
        return Rung(NAME, RungKind.TRACEPOINT, (BLOCK_RQ_ERROR,),
                    gives="device, sector, bytes, errno, operation of each failed request",
                    misses=misses)
    skipped = (f"tracepoint: {BLOCK_RQ_ERROR} not present (older kernel)",)
    why = kprobe_skip_reason(facts, (BLOCK_KPROBE,))
    if why is None:
        return Rung(NAME, RungKind.KPROBE, (BLOCK_KPROBE,),
                    gives="device, sector, bytes and blk_status_t of each failed request completion",
                    misses=misses + "; the operation (read or write)", skipped=skipped)
    return Rung(NAME, RungKind.NONE, skipped=skipped + (why,))


def describe_block_io(ev: Event) -> str:
    x = ev.extra
    err = f"{ev.errno_name}({ev.errno})" if ev.errno is not None else f"blk_status {x.get('blk_status')}"
    where = f"sector {x.get('sector')} +{x.get('bytes')}B"
    return f"{x.get('rwbs', 'I/O')} {err} {where}"


class BlockIoMonitor(PointMonitor):
    """The request names the disk; the filesystem sits on it or on a partition."""

    handles = frozenset({EventType.BLOCK_IO_ERROR})

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._generation = -1
        self._source_key: tuple[int, str] | None = None
        self._source_mounts: list[Mount] = []
        self.mounts_changed()

    def mounts_changed(self) -> None:
        """The disks of the watched mounts, again when the watched set changed (fsev serve)."""
        ctx = self.ctx
        if ctx.probes is None or ctx.watch_all or ctx.watch_generation == self._generation:
            return
        self._generation = ctx.watch_generation
        ctx.probes.set_keys("watched_disks", sorted({Device.parse(disk_of(d)).kernel for m in ctx.watched
                                                     for d in (m.dev, self._source(m)) if d}))

    @staticmethod
    def _source(m: Mount) -> str | None:
        """The block device behind a superblock whose dev is anonymous (btrfs: 0:N)."""
        return source_dev(m.source) if m.major == 0 else None

    def _by_source(self, dev: str) -> list[Mount]:
        key = (self.ctx.table.generation, dev)
        if self._source_key != key:
            self._source_key = key
            self._source_mounts = [m for m in self.ctx.table if m.major == 0 and self._source(m) == dev]
        return self._source_mounts

    def process(self, ev: Event) -> list[Event]:
        if ev.dev is None:
            return [ev]
        disk = ev.dev
        part = partition_of(disk, int(ev.extra.get("sector") or 0))
        d = Device.parse(part)
        mounts = self.ctx.table.by_dev(d.major, d.minor) or self._by_source(part)
        if part != disk:
            ev.extra["disk"] = disk
            ev.dev = part
        if mounts:
            m = next((m for m in mounts if self.ctx.mount_watched(m)), mounts[0])
            ev.mount_point, ev.fs_type, ev.source, ev.mnt_id = m.mount_point, m.fs_type, m.source, m.mnt_id
            if len(mounts) > 1:
                ev.extra["mount_points"] = [x.mount_point for x in mounts]
        return [ev]


class BlockIoError(Point):
    name = NAME
    record_type = RecordType.BLOCK_IO_ERROR
    event_type = EventType.BLOCK_IO_ERROR
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({BLOCK_RQ_ERROR})
    kprobe_functions = frozenset({BLOCK_KPROBE})

    switches = {RungKind.TRACEPOINT: "FSEV_BLOCK_IO_TRACEPOINT", RungKind.KPROBE: "FSEV_BLOCK_IO_KPROBE"}
    rung_offsets = {RungKind.KPROBE: KPROBE_OFFSETS}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_block_io(facts)

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        x = ev.extra
        x["sector"] = ev.block
        ev.block = None  # a device sector, not a filesystem block
        x["bytes"] = value
        if ev.rung == "kprobe":  # blk_update_request: a blk_status_t, not an errno
            x["blk_status"] = arg
            if arg in BLK_STATUS_ERRNO:
                ev.errno = BLK_STATUS_ERRNO[arg]
        else:
            x["rwbs"] = c_string(func)

    def describe(self, ev: Event) -> str:
        return describe_block_io(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        # Built whatever the classes: the watched disks go to the kernel filter
        # at start, as they always have.
        return BlockIoMonitor(ctx)


POINT = BlockIoError()
