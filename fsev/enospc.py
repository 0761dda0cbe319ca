"""ENOSPC storms: one event, then an exact count per second.

The kernel (bpf/enospc.bpf.c) counts every ENOSPC failure per
superblock with an atomic add and sends a record only for the first failure
after a quiet second; the record carries its ordinal n (this was failure
number n on that superblock). Every second fsev reads the per-superblock
totals. A summary covers the failures up to the total read one tick earlier
(by then every record numbered within it has been sent, or was lost and
counted as loss), minus those already reported one by one. So the counts of
all events add up exactly to the failures, with no lock in the kernel.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Callable

from .events import Event, EventClass, EventType
from .records import FSEV_H

TICK_S = 1.0


@dataclass
class _Key:
    """One kernel counter (a superblock, or the lookup base of path calls)."""

    snapshots: list[tuple[float, int]] = field(default_factory=list)  # (time, total) per tick
    summarized: int = 0  # every failure <= this is in some emitted event
    details: list[int] = field(default_factory=list)  # ordinals > summarized reported one by one
    last_detail: Event | None = None  # names the mount and call of a summary
    last_summary: float = -1e18


@dataclass(frozen=True)
class KernelTotal:
    """What the kernel's enospc_states holds for one key."""

    failures: int
    last_pid: int = 0
    last_call: str | None = None
    last_comm: str | None = None


class EnospcAggregator:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self._keys: dict[int, _Key] = {}

    def on_record(self, kernel_dev: int, ev: Event) -> Event:
        """A kernel ENOSPC record (first of a storm): reported now, counting one."""
        k = self._keys.setdefault(kernel_dev, _Key())
        n = int(ev.extra.pop("_ordinal", 0))
        if n > k.summarized:
            bisect.insort(k.details, n)
            ev.extra["count"] = 1
        else:  # a summary already counted it (it came more than a tick late)
            ev.extra["count"] = 0
        k.last_detail = ev
        return ev

    def tick(self, totals: dict[int, KernelTotal], make_event: Callable[..., Event], final: bool = False
             ) -> list[Event]:
        """Summaries due now. totals: the kernel's counters read just now.
        final: fsev is stopping; cover everything read (a record still on its
        way is then counted here instead of reported)."""
        now = self.now()
        out: list[Event] = []
        for dev, total in totals.items():
            k = self._keys.setdefault(dev, _Key())
            k.snapshots.append((now, total.failures))
            if not final and now - k.last_summary < TICK_S - 1e-9:
                continue  # at most one summary a second
            # The newest snapshot at least one tick old; at the end, the last.
            due = [s for s in k.snapshots if final or now - s[0] >= TICK_S - 1e-9]
            if not due:
                continue
            since, upto = due[-1]
            k.snapshots = [s for s in k.snapshots if s[0] > since]
            if upto <= k.summarized:
                continue
            cut = bisect.bisect_right(k.details, upto)
            reported = cut
            count = upto - k.summarized - reported
            first = k.summarized + 1
            k.details = k.details[cut:]
            k.summarized = upto
            if count <= 0:
                continue
            k.last_summary = now
            out.append(self._summary(dev, k, total, count, first, upto, make_event))
        return out

    def _summary(self, dev: int, k: _Key, total: KernelTotal, count: int, first: int, upto: int,
                 make_event: Callable[..., Event]) -> Event:
        base = k.last_detail
        extra = {"count": count, "count_total": upto, "storm": True}
        if total.last_call:
            extra["call"] = total.last_call
        if base is not None:
            for key in ("space",):
                if key in base.extra:
                    extra[key] = base.extra[key]
        return make_event(
            cls=EventClass.WARN, type=EventType.ENOSPC, rung=base.rung if base else "raw_tracepoint",
            dev=base.dev if base else f"{dev >> 20}:{dev & 0xFFFFF}",
            mount_point=base.mount_point if base else None, fs_type=base.fs_type if base else None,
            source=base.source if base else None, mnt_id=base.mnt_id if base else None,
            pid=total.last_pid or None, tgid=None, comm=total.last_comm, errno=FSEV_H.FSEV_ENOSPC, extra=extra,
        )


def resolve_create_path(path: str, pid: int, containing: Callable[[str], object]) -> object | None:
    """The mount a create/mkdir path names (the tracepoint rung sends the path
    as the caller passed it): absolute paths directly, relative ones through
    the task's cwd while it still lives. None when it cannot be told."""
    if not path:
        return None
    if not path.startswith("/"):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        path = os.path.join(cwd, path)
    parent = os.path.dirname(os.path.normpath(path)) or "/"
    return containing(parent)
