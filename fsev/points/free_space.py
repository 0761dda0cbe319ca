"""What the three free-space threshold points share (thr_tmpfs, thr_ext4, thr_other).

Their kernel records (FSEV_TYPE_THRESHOLD) are hints, never crossings: the
threshold monitor (fsev/thresholds/monitor.py) confirms each with statfs
before fsev reports it. Their programs are compiled in only for mounts armed
with --thr (ProgramConfig.thr_points), whatever the classes.
"""

from __future__ import annotations

from typing import ClassVar

from fsev.events import Event, EventType
from fsev.kernel.records import Field, RecordClass, RecordType
from fsev.kernel.thr_slots import Hook
from fsev.probes.ladder import Rung, RungKind
from fsev.probes.point import Point
from fsev.probes.program import ProgramConfig

_DIRECTION = {1: "down", 2: "up"}
_F_SETTLE = int(Field.SETTLE)


def describe_threshold(ev: Event) -> str:
    return f"{ev.level} {ev.direction}: {ev.avail_blocks} blocks available (level {ev.level_blocks})"


class FreeSpacePoint(Point):
    record_type = RecordType.THRESHOLD
    event_type = EventType.THRESHOLD
    classes = frozenset({RecordClass.THR})

    # Its C's switch for "armed on exactly one superblock" (ProgramConfig.thr_single).
    single_switch: ClassVar[str | None] = None

    def compiled(self, rung: Rung, config: ProgramConfig | None) -> bool:
        """Armed: a kernel rung, and --thr on a mount of this point's kind
        (whatever the classes asked for)."""
        return (config is not None and self.name in config.thr_points
                and rung.kind in (RungKind.KPROBE, RungKind.RAW_TRACEPOINT))

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        d = super().defines(rung, config)
        if self.single_switch is not None:
            d.append((self.single_switch, str(int(self.name in config.thr_single))))
        return d

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        ev.avail_blocks = value
        ev.level = f"L{level}"
        ev.direction = _DIRECTION.get(direction)
        if f & _F_SETTLE:
            # A kernel threshold hint whose change comes after it (fsev/thresholds/monitor.py).
            ev.extra["settle"] = True

    def describe(self, ev: Event) -> str:
        return describe_threshold(ev)


__all__ = ["FreeSpacePoint", "Hook", "describe_threshold"]

