"""close() from one thread while another reads the ring buffer never crashes.

A consumer thread inside RingReader.read()/wait() or TraceSession.events()
and a close() from the main thread at a random moment, under a flood of real
ext4 errors: the ring's pages were once unmapped under the reader (SIGSEGV,
which killed pytest and left its mounts behind). The rounds run in a child
process (tests/support/ring_close_child.py), so that a crash fails this test with the
child's return code (-11) instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fsev.testing.kernel_rig import ext4

pytestmark = pytest.mark.root

CHILD = str(Path(__file__).resolve().parent.parent / "support" / "ring_close_child.py")
READER_ROUNDS = 200  # RingReader over one compiled program: cheap rounds
PROBES_ROUNDS = 10  # KernelProbes, each compiling a small program
SESSION_ROUNDS = 20  # whole sessions, each compiling fsev's program

# Raises ext4 errors at about RATE/s until killed (or, as a safety net, for
# SECONDS). Paced: the consumer must be kept busy, not the machine.
FLOOD = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
n = 0
while time.monotonic() - t0 < seconds:
    for _ in range(100):
        os.write(fd, b"x")
    n += 100
    ahead = n / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
"""
FLOOD_RATE = 100_000


def test_close_while_consuming_never_crashes():
    with ext4() as fs:
        major, minor = (int(x) for x in fs.dev.split(":"))
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, f"/sys/fs/ext4/{fs.name}/trigger_fs_error",
                                  str(FLOOD_RATE), "150"])
        try:
            child = subprocess.run([sys.executable, CHILD, str(major << 20 | minor), fs.mount_point,
                                    str(READER_ROUNDS), str(PROBES_ROUNDS), str(SESSION_ROUNDS)],
                                   capture_output=True, text=True, timeout=150)
        finally:
            flood.kill()
            flood.wait()
    assert child.returncode == 0, f"the child died with {child.returncode} (-11: SIGSEGV):\n{child.stderr[-4000:]}"
    got = json.loads(child.stdout.splitlines()[-1])
    for kind, rounds in (("reader", READER_ROUNDS), ("probes_reader", PROBES_ROUNDS // 2),
                         ("probes_bcc", PROBES_ROUNDS // 2), ("session_reader", SESSION_ROUNDS // 2),
                         ("session_bcc", SESSION_ROUNDS // 2)):
        r = got[kind]
        assert r["errors"] == [], (kind, r["errors"])
        assert r["rounds"] == rounds, (kind, r)
        assert r["stuck"] == 0 and r["max_join_s"] < 2.0, (kind, r)  # each consumer left promptly
        assert r["max_close_s"] < 5.0, (kind, r)  # and close() did not wait out more than a poll
        # Rounds that closed at once may have read nothing; the others waited
        # for a record, so the test cannot pass with a ring that never filled.
        assert r["rounds_with_records"] >= rounds * 0.8 and r["records"] > 0, (kind, r)
