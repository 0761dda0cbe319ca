"""kernel_log against the real kernel: ext4's own log line of a real error
reaches a reader registered for ext4, parsed, with the erroring task."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fsev.events import EventClass
from fsev.linux.kernel_log import LogLine, ext4_fields
from fsev.linux.mountinfo import MountTable
from fsev.points.registry import ProbePoint
from fsev.session.trace import TraceOptions, TraceSession
from fsev.testing.kernel_rig import ext4

pytestmark = pytest.mark.root

TRIGGER = "import sys\nwith open(sys.argv[1], 'w') as f:\n    f.write('fsev kernel_log test')\n"


def test_an_ext4_error_line_reaches_the_ext4_reader_with_the_task_device_and_location():
    with ext4() as fs:
        m = MountTable.read().by_mount_point(fs.mount_point)
        session = TraceSession(TraceOptions(mounts=[m], classes=frozenset({EventClass.ERR})))
        lines: list[LogLine] = []
        try:
            session.start()
            assert session.plan.rung(ProbePoint.KERNEL_LOG).kind.value == "tracepoint"
            session._pipeline.ctx.read_kernel_log("ext4", lambda line: lines.append(line) or [])
            # A real ext4 error through __ext4_error, from a task of our own.
            writer = subprocess.run([sys.executable, "-c", TRIGGER, f"/sys/fs/ext4/{fs.name}/trigger_fs_error"],
                                    check=True)
            assert writer.returncode == 0
            errors = []
            deadline = time.monotonic() + 10
            for ev in session.events(poll_ms=50, until=deadline):
                errors.append(ev)
                if [ln for ln in lines if ln.function == "trigger_test_error"]:
                    session.stop()
        finally:
            session.close()
    ours = [ln for ln in lines if ln.dev == fs.dev and ln.function == "trigger_test_error"]
    assert len(ours) == 1, lines
    line = ours[0]
    assert line.fs == "ext4" and line.level == "error" and line.device == fs.name
    assert line.comm.startswith("python") and line.pid != os.getpid()
    assert ext4_fields(line.body).comm == line.comm  # ext4 prints the comm it saw: the same task
    assert ext4_fields(line.body).message == "fsev kernel_log test"
    assert not line.truncated
    # The line came after the ext4_error record it explains, and is no event itself.
    fs_errors = [e for e in errors if e.type.value == "fs_error" and e.function == "trigger_test_error"]
    assert fs_errors and fs_errors[0].ts_ns <= line.ts_ns
    assert not [e for e in errors if e.type.value == "kernel_log"]
