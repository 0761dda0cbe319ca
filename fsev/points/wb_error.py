"""Probe point wb_error: a writeback error was recorded on a file (errseq; bpf/wb_error.bpf.c).

Ladder: the raw filemap_set_wb_err tracepoint (the errseq after the error,
read from mapping->wb_err), else a kprobe on __filemap_set_wb_err.
"""

from __future__ import annotations

from fsev.events import Event, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason, raw_tp_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext

NAME = "wb_error"
FILEMAP_SET_WB_ERR = "filemap:filemap_set_wb_err"
# void __filemap_set_wb_err(struct address_space *, int err)  4.14+
WB_KPROBE = "__filemap_set_wb_err"
_SB = ("super_block.s_dev",)
OFFSETS = {
    RungKind.KPROBE: (*_SB, "address_space.host", "inode.i_sb", "inode.i_ino"),
    RungKind.RAW_TRACEPOINT: (*_SB, "address_space.host", "address_space.wb_err", "inode.i_sb", "inode.i_ino"),
}
_SEEN_MAX = 4096  # files remembered for the errseq test, at most


def plan_wb(facts: KernelFacts) -> Rung:
    misses = "the task is whoever completed the I/O (often a kworker or an interrupt); the file's path"
    # The tracepoint's own errseq field is errseq_set()'s return: the value
    # before the set (0 on a file's first error). The raw tracepoint reads
    # mapping->wb_err instead, so no perf-tracepoint rung is offered.
    why = raw_tp_skip_reason(facts, (FILEMAP_SET_WB_ERR,))
    if why is None:
        return Rung(NAME, RungKind.RAW_TRACEPOINT, ("filemap_set_wb_err",),
                    gives="device, inode, errseq after the error was recorded (errno in its low bits)",
                    misses=misses)
    skipped = (why,)
    why = kprobe_skip_reason(facts, (WB_KPROBE,))
    if why is None:
        return Rung(NAME, RungKind.KPROBE, (WB_KPROBE,), gives="device, inode, errno (the function's argument)",
                    misses=misses + "; the errseq", skipped=skipped)
    return Rung(NAME, RungKind.NONE, skipped=skipped + (why,))


class WbErrorMonitor(PointMonitor):
    """An errseq that did not change records nothing new: the error is set
    already and nobody has seen it yet (measured: ext4 records a failed
    write-back twice)."""

    handles = frozenset({EventType.WB_ERROR})

    def __init__(self) -> None:
        self._errseq: dict[tuple[str | None, int | None], object] = {}

    def process(self, ev: Event) -> list[Event]:
        key = (ev.dev, ev.inode)
        if ev.extra.get("errseq") == self._errseq.get(key):
            return []
        if len(self._errseq) > _SEEN_MAX:
            self._errseq.clear()
        self._errseq[key] = ev.extra.get("errseq")
        return [ev]


class WbError(Point):
    name = NAME
    record_type = RecordType.WB_ERROR
    event_type = EventType.WB_ERROR
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({FILEMAP_SET_WB_ERR})
    kprobe_functions = frozenset({WB_KPROBE})

    switches = {RungKind.RAW_TRACEPOINT: "FSEV_WB_RAW_TP", RungKind.KPROBE: "FSEV_WB_KPROBE"}
    rung_offsets = OFFSETS

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_wb(facts)

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        ev.extra["errseq"] = value

    def describe(self, ev: Event) -> str:
        return f"writeback {ev.errno_name}({ev.errno}) inode {ev.inode}"

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        return WbErrorMonitor()


POINT = WbError()
