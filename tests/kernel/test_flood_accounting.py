"""A flood above what the consumer takes: after the drain, every error raised
is either delivered or counted lost, exactly.

The session reads the ring in runs and decodes them a batch at once
(RingReader.read_runs, RecordDecoder.decode_runs); a record skipped or read
twice at a run's edge, or a drain that stops early, breaks the sum. raised
comes from an independent BPF counter on the same tracepoint, never from
fsev (and not from errors_count, which is not exact under a flood).
"""

from __future__ import annotations

import threading

import pytest

from fsev.events import EventClass, EventType
from fsev.linux.mountinfo import MountTable
from fsev.points.registry import plan_probes
from fsev.session.selection import resolve_mounts
from fsev.session.trace import TraceOptions, TraceSession
from fsev.testing.flood import fs_error_points, raised_counter, start_writer
from fsev.testing.kernel_rig import ext4

pytestmark = pytest.mark.root

SECONDS = 1.5
RING_PAGES = 16  # 64 KiB, about 300 records: a writer at full speed overruns it for certain


def test_flood_above_the_consumer_is_accounted_exactly_after_the_drain():
    from bcc import BPF

    with ext4() as fs:
        major, minor = (int(x) for x in fs.dev.split(":"))
        counter = BPF(text=raised_counter(major << 20 | minor).encode())
        try:
            mounts = resolve_mounts([fs.mount_point], MountTable.read())
            s = TraceSession(TraceOptions(mounts=mounts, classes=frozenset({EventClass.ERR}),
                                          ringbuf_pages=RING_PAGES))
            s.plan = plan_probes(s.facts, fs_error_points())  # kernel_log's lines share the drop counter
            try:
                s.start()
                writers = [start_writer(fs.name, 0, SECONDS) for _ in range(2)]

                def stop_when_written() -> None:
                    for w in writers:
                        w.wait()
                    s.stop()  # events() drains the ring, then ends

                threading.Thread(target=stop_when_written, daemon=True).start()
                errors, losses = [], []
                for ev in s.events(poll_ms=10):
                    if ev.type is EventType.FS_ERROR:
                        errors.append(ev)
                    elif ev.type is EventType.LOSS:
                        losses.append(ev)
                written = sum(int(w.communicate()[0]) for w in writers)
                lost_total = s.lost_total
            finally:
                s.close()
            raised = counter[b"raised"][0].value
        finally:
            counter.cleanup()
    delivered = len(errors)
    lost = sum(e.lost or 0 for e in losses)
    assert raised == written, (raised, written)  # every write raised one error
    assert lost > 0, "the flood did not overrun the ring: the test proves nothing"
    assert delivered > 0
    assert delivered + lost == raised, (delivered, lost, raised)
    assert losses[-1].lost_total == lost == lost_total
    assert all(e.dev == fs.dev and e.function == "trigger_test_error" for e in errors)
    seqs = [e.seq for e in errors]
    assert seqs == sorted(seqs) and len(set(seqs)) == delivered  # numbered once each, in order
