"""A paced ext4 error writer for the benchmarks: a separate process pinned to
CPU 1 raises errors through /sys/fs/ext4/<dev>/trigger_fs_error at a given
rate (0: as fast as it can) for a given time, then prints how many it raised."""

from __future__ import annotations

import subprocess
import sys

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
