"""ext4_error_detail's flood path (_merged_at_once) answers as _complete does.

The same script of errors, fanotify events, superblock updates, clock steps
and polls runs through two detail halves, one with the flood path switched
off; every event must come out at the same step, in the same order, with the
same errno, inode and sources. A script that never took the flood path would
prove nothing, so the test also checks it was taken.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fsev.events import Event, EventClass, EventType
from fsev.linux.fanotify import FAN_FS_ERROR, FanEvent
from fsev.points.ext4_error_detail import Ext4ErrorDetail

DEV = "7:3"
FUNCS = (("trigger_test_error", 0), ("htree_dirblock_to_tree", 1051))


class Fan:
    fd = 1

    def __init__(self) -> None:
        self.pending: list[FanEvent] = []

    def read(self) -> list[FanEvent]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        pass


class Superblock:
    def __init__(self, count: int) -> None:
        self.last = {"func": "", "line": 0, "errcode": 0, "ino": 0, "block": 0, "count": count}

    def __call__(self, dev: str) -> dict:
        return dict(self.last)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _run(script: list[tuple], fast: bool) -> tuple[list[list[tuple]], int]:
    now, fan, sb = Clock(), Fan(), Superblock(count=10)
    d = Ext4ErrorDetail(fan, now, last_error=sb)  # type: ignore[arg-type]
    d._fsid_dev[42] = DEV
    d._fan_devs.add(DEV)
    d._ordinal[DEV] = 10
    taken = [0]
    if fast:
        merged = d._merged_at_once

        def counting(ev: Event, dev: str, ordinal: int | None) -> bool:
            got = merged(ev, dev, ordinal)
            taken[0] += got
            return got

        d._merged_at_once = counting  # type: ignore[method-assign]
    else:
        d._merged_at_once = lambda ev, dev, ordinal: False  # type: ignore[method-assign]
    steps: list[list[tuple]] = []
    for i, step in enumerate(script):
        kind = step[0]
        out: list[Event] = []
        if kind == "error":
            func, line = FUNCS[step[1]]
            dev = DEV if step[2] else "8:1"
            out = d.process(Event(i, 0, 0.0, EventClass.ERR, EventType.FS_ERROR, "tracepoint", dev=dev,
                                  function=func, line=line))
        elif kind == "fan":
            fan.pending.append(FanEvent(FAN_FS_ERROR, 1, fsid=42, ino=step[1], error=step[2], error_count=step[3]))
        elif kind == "sb":
            func, line = FUNCS[step[1]]
            sb.last.update(func=func, line=line, errcode=step[2])
            sb.last["count"] += step[3]
        elif kind == "tick":
            now.t += step[1]
        elif kind == "poll":
            out = d.poll()
        steps.append([(e.seq, e.errno, e.inode, dict(e.extra)) for e in out])
    steps.append([(e.seq, e.errno, e.inode, dict(e.extra)) for e in d.flush()])
    return steps, taken[0]


def _script(rnd: random.Random, n: int) -> list[tuple]:
    out: list[tuple] = []
    for _ in range(n):
        k = rnd.random()
        if k < 0.6:
            out.append(("error", rnd.randrange(2), rnd.random() < 0.9))
        elif k < 0.7:
            out.append(("fan", rnd.choice([0, 12]), rnd.choice([5, 74, 117]), rnd.randint(1, 30)))
        elif k < 0.8:
            out.append(("sb", rnd.randrange(2), rnd.choice([0, 4, 5]), rnd.randint(1, 30)))
        elif k < 0.9:
            out.append(("tick", rnd.choice([0.0001, 0.002, 0.6])))
        else:
            out.append(("poll",))
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_the_flood_path_gives_what_the_full_path_gives(seed):
    script = _script(random.Random(seed), 120)
    assert _run(script, fast=True)[0] == _run(script, fast=False)[0]


def test_a_flood_of_merged_errors_takes_the_flood_path():
    """One fanotify event merging 1000 errors, the superblock counted them all."""
    script: list[tuple] = [("fan", 12, 117, 1000), ("sb", 0, 5, 1000)]
    script += [("error", 0, True)] * 1000
    fast, taken = _run(script, fast=True)
    assert fast == _run(script, fast=False)[0]
    assert taken == 998  # all but the first (fanotify told it) and the second (read the superblock)
    assert fast[2] == [(2, 117, 12, {"errno_source": "fanotify", "inode_source": "fanotify"})]
    assert fast[3] == [(3, 117, None, {"errno_merged": True, "errno_source": "sysfs"})]
