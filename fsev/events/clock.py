"""Kernel time to wall time."""

from __future__ import annotations

import time


class Clock:
    """Maps kernel CLOCK_MONOTONIC nanoseconds to wall time."""

    def __init__(self) -> None:
        # time.monotonic_ns() is CLOCK_MONOTONIC on Linux, as bpf_ktime_get_ns().
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def wall(self, ts_ns: int) -> float:
        return (ts_ns + self.offset_ns) / 1e9
