"""EventPipeline without a kernel: routing to the points' halves, the order a
holding half keeps, numbering on the way out, and who sees what."""

from __future__ import annotations

from typing import ClassVar

import pytest

from fsev.events import ALL_CLASSES, Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.numbering import EventNumbers
from fsev.linux.mountinfo import MountTable
from fsev.probes.ladder import Plan
from fsev.probes.point import PointMonitor
from fsev.session import pipeline as pipeline_mod
from fsev.session.pipeline import EventPipeline, _poll_order

MOUNTINFO = "36 25 7:0 / /mnt/a rw,relatime shared:1 - ext4 /dev/loop0 rw\n"


def ev(typ: EventType, cls: EventClass = EventClass.ERR, **kw: object) -> Event:
    return Event(seq=0, ts_ns=1, wall_time=0.0, cls=cls, type=typ, rung="tracepoint", dev="7:0", **kw)  # type: ignore[arg-type]


class Holder(PointMonitor):
    """Holds the first fs_error until poll(); everything behind it waits."""

    orders = True

    def __init__(self) -> None:
        self.held: list[Event] = []

    def process(self, e: Event) -> list[Event]:
        if e.type is EventType.FS_ERROR and not self.held:
            self.held.append(e)
            return []
        if self.held:
            self.held.append(e)
            return []
        return [e]

    def poll(self) -> list[Event]:
        out, self.held = self.held, []
        return out


class Watcher(PointMonitor):
    handles: ClassVar[frozenset[EventType]] = frozenset({EventType.READ_ONLY})
    observes: ClassVar[frozenset[EventType]] = frozenset({EventType.FS_ERROR, EventType.MOUNT})

    def __init__(self) -> None:
        self.seen: list[tuple[EventType, int]] = []

    def process(self, e: Event) -> list[Event]:
        e.extra["_private"] = 1  # fsev's own key: must not leave
        return [e]

    def observe(self, e: Event) -> None:
        self.seen.append((e.type, e.seq))


class Mounts(PointMonitor):
    handles: ClassVar[frozenset[EventType]] = frozenset({EventType.MOUNT})


@pytest.fixture
def rig(monkeypatch, tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    table = MountTable.read(str(mi))
    holder, watcher = Holder(), Watcher()

    class FakePoint:
        def __init__(self, m: PointMonitor) -> None:
            self.m = m

        def monitor(self, ctx: object) -> PointMonitor:
            return self.m

    monkeypatch.setattr(pipeline_mod, "POINTS", (FakePoint(watcher), FakePoint(holder)))
    p = EventPipeline(Plan(()), ALL_CLASSES, table, Clock(), [], None, EventNumbers())
    return p, holder, watcher


def test_a_holding_half_keeps_the_kernel_order_and_numbers_come_on_the_way_out(rig):
    p, holder, watcher = rig
    assert p.process(ev(EventType.FS_ERROR, function="a")) == []  # held
    assert p.process(ev(EventType.READ_ONLY)) == []  # waits behind it
    out = p.poll()
    assert [(e.type, e.seq) for e in out] == [(EventType.FS_ERROR, 1), (EventType.READ_ONLY, 2)]
    assert out[0].mount_point == "/mnt/a"  # enriched on the way in
    assert "_private" not in out[1].extra
    assert watcher.seen == [(EventType.FS_ERROR, 1)]  # observers see numbered events


def test_the_fs_error_flood_path_numbers_and_shows_it_to_observers(rig):
    p, holder, watcher = rig
    holder.held = []
    p._order = None  # no holding half: the path a flood takes
    [e] = p.process(ev(EventType.FS_ERROR))
    assert e.seq == 1 and watcher.seen == [(EventType.FS_ERROR, 1)]


def test_unwatched_classes_are_dropped_before_they_are_numbered(rig):
    p, _, watcher = rig
    p.classes = frozenset({EventClass.ERR})
    p._order = None
    assert p.process(ev(EventType.READ_ONLY, cls=EventClass.INFO)) == []
    assert [e.seq for e in p.process(ev(EventType.READ_ONLY))] == [1]


def test_halves_poll_before_those_that_observe_what_they_make():
    holder, watcher, mounts = Holder(), Watcher(), Mounts()
    assert _poll_order([watcher, mounts, holder]) == [holder, mounts, watcher]


def test_a_filesystem_mounted_after_a_start_without_its_module_is_noted_once(tmp_path):
    """The XFS points were planned with nothing to watch (no xfs module): an
    XFS filesystem mounted since is untraced by them, and fsev says so."""
    from fsev.probes.ladder import Rung, RungKind

    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    table = MountTable.read(str(mi))
    plan = Plan((Rung("xfs_error", RungKind.NONE, absent="the xfs module is not loaded"),
                 Rung("xfs_shutdown", RungKind.NONE, absent="the xfs module is not loaded"),
                 Rung("block_io_error", RungKind.NONE)))
    p = EventPipeline(plan, ALL_CLASSES, table, Clock(), [], None, EventNumbers())
    p.mounts_changed()
    assert p.notes() == []  # the mounts at start: the plan saw them
    mi.write_text(MOUNTINFO + "37 25 7:1 / /mnt/x rw,relatime shared:2 - xfs /dev/loop1 rw\n")
    table.refresh()
    p.mounts_changed()
    (note,) = p.notes()
    assert note.startswith("/mnt/x (7:1): xfs mounted after fsev started") and "xfs_error, xfs_shutdown" in note
    table.refresh()
    p.mounts_changed()
    assert p.notes() == []  # once per mount
