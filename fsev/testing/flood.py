"""A paced ext4 error writer for the benchmarks: a separate process pinned to
CPU 1 raises errors through /sys/fs/ext4/<dev>/trigger_fs_error at a given
rate (0: as fast as it can) for a given time, then prints how many it raised."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsev.points.registry import ProbePoint

WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
os.sched_setaffinity(0, {1})
n, t0 = 0, time.monotonic()
end = t0 + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - t0) * rate) if rate > 0 else n + 1000
    while n < due:
        os.write(fd, b"x")
        n += 1
    if rate > 0 and n >= due:
        time.sleep(0.0005)
print(n)
"""


def start_writer(dev_name: str, rate: float, seconds: float) -> subprocess.Popen:
    """The writer, started; read its count with .communicate()[0]."""
    return subprocess.Popen([sys.executable, "-c", WRITER, f"/sys/fs/ext4/{dev_name}/trigger_fs_error",
                             str(rate), str(seconds)], stdout=subprocess.PIPE, text=True)


# An independent count of the errors the kernel raised on one device: its own
# BPF program on the same tracepoint, so that delivered + lost can be checked
# against it exactly (/sys/fs/ext4/<dev>/errors_count is not exact under a
# flood). The caller compiles it with bcc (only fsev.kernel.loader imports
# bcc in the package): BPF(text=raised_counter(dev_t)), then reads
# b["raised"][0].value.
RAISED_COUNTER = r"""
BPF_ARRAY(raised, u64, 1);
TRACEPOINT_PROBE(ext4, ext4_error) {
    if (args->dev != WATCHED_DEV) return 0;
    u32 zero = 0;
    u64 *n = raised.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def raised_counter(kernel_dev_t: int) -> str:
    """RAISED_COUNTER's text for one device (kernel dev_t: major << 20 | minor)."""
    return RAISED_COUNTER.replace("WATCHED_DEV", str(kernel_dev_t))


def fs_error_points() -> "set[ProbePoint]":
    """Every probe point but kernel_log, for sessions whose accounting counts
    fs_errors: kernel_log's records (ext4's own log lines, rate-limited to a
    few a second) share the ring and its one drop counter, so one of them
    dropped would count as a lost fs_error. Pass to plan_probes(facts, points=...)."""
    from fsev.points.registry import ProbePoint  # imported here: a writer alone needs none of the points

    return set(ProbePoint) - {ProbePoint.KERNEL_LOG}
