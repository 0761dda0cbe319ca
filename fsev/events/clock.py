"""Kernel time to wall time."""

from __future__ import annotations

import time
from typing import Any

from fsev.events.event import Event


class Clock:
    """Maps kernel CLOCK_MONOTONIC nanoseconds to wall time."""

    def __init__(self) -> None:
        # time.monotonic_ns() is CLOCK_MONOTONIC on Linux, as bpf_ktime_get_ns().
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def wall(self, ts_ns: int) -> float:
        return (ts_ns + self.offset_ns) / 1e9

    def user_event(self, **fields: Any) -> Event:
        """An event fsev makes in user space, now (no kernel record behind it);
        seq 0: it is numbered when it is emitted."""
        ts = time.monotonic_ns()
        return Event(seq=0, ts_ns=ts, wall_time=self.wall(ts), **fields)
