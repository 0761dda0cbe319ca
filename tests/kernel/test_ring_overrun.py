"""A full ring buffer drops records, and fsev counts every one it dropped.

The kernel never waits on fsev. With a one-page ring buffer and a flood of
real ext4 errors, delivered + reported-lost must equal the errors the kernel
raised, as counted by an independent BPF program on the same tracepoint.
"""

from __future__ import annotations

import threading
import time

import pytest

from fsev.testing.flood import raised_counter
from fsev.testing.kernel_rig import FsevTrace, ext4

pytestmark = pytest.mark.root


def test_overrun_is_counted_exactly():
    from bcc import BPF

    with ext4() as fs:
        major, minor = (int(x) for x in fs.dev.split(":"))
        counter = BPF(text=raised_counter(major << 20 | minor).encode())
        try:
            with FsevTrace(["--mount", fs.mount_point, "--events", "err", "--ringbuf-pages", "1"]) as t:
                t.wait_attached()
                # Two writers so the kernel outruns the consumer for certain.
                writers = [threading.Thread(target=fs.trigger_errors, args=(20000,)) for _ in range(2)]
                for w in writers:
                    w.start()
                for w in writers:
                    w.join()
                time.sleep(0.5)
                assert t.stop() == 0
            raised = counter[b"raised"][0].value
        finally:
            counter.cleanup()
        evs = t.events()
        delivered = sum(1 for e in evs if e["type"] == "fs_error")
        losses = [e for e in evs if e["type"] == "loss"]
        lost = sum(e["lost"] for e in losses)
        assert raised == 40000
        assert lost > 0, "the flood did not overrun a one-page ring buffer"
        assert delivered + lost == raised, (delivered, lost, raised)
        assert losses[-1]["lost_total"] == lost
        assert all(e["class"] == "warn" and e["since_wall_time"] <= e["wall_time"] for e in losses)


PACED_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
rate, total = int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
for i in range(total):
    if i % 100 == 0:
        ahead = i / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    os.write(fd, b"x")
"""


def test_no_drop_below_the_rate_fsev_keeps_up_with():
    """20 000 errors/s into the default ring buffer: nothing may be lost.
    (A torn consumer-position store once made the kernel drop a few in 100 000.)"""
    import subprocess
    import sys

    from bcc import BPF

    with ext4() as fs:
        major, minor = (int(x) for x in fs.dev.split(":"))
        counter = BPF(text=raised_counter(major << 20 | minor).encode())
        try:
            with FsevTrace(["--mount", fs.mount_point, "--events", "err"]) as t:
                t.wait_attached()
                w = subprocess.run([sys.executable, "-c", PACED_WRITER, f"/sys/fs/ext4/{fs.name}/trigger_fs_error",
                                    "20000", "60000"], timeout=60)
                assert w.returncode == 0
                raised = counter[b"raised"][0].value
                t.wait_for(lambda e: len(e) >= raised, timeout=10)
                assert t.stop() == 0
        finally:
            counter.cleanup()
    evs = t.events()
    assert raised == 60000
    assert [e for e in evs if e["type"] == "loss"] == []
    assert sum(1 for e in evs if e["type"] == "fs_error") == raised
