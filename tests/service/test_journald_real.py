"""JournaldSink against a real systemd-journald, in a journal namespace of
its own (tests/support/journald.py)."""

from __future__ import annotations

import os
import signal

import pytest
from support.journal_data import fs_error, loss, umount
from support.journald import journald as journald_fixture

from fsev.events import Event, EventClass, EventType
from fsev.service.systemd import MESSAGE_IDS, JournaldSink
from fsev.session.sinks import human_line

pytestmark = pytest.mark.root

journald = journald_fixture


def text(v) -> str:
    """journalctl -o json prints a value that is not printable UTF-8 as a list of bytes."""
    return bytes(v).decode() if isinstance(v, list) else v


def events() -> list[Event]:
    return [
        fs_error(1, errno=5, inode=12, block=77, comm="two\nlines"),
        umount(2),
        Event(seq=3, ts_ns=3, wall_time=1_700_000_000.003, cls=EventClass.ERR, type=EventType.BLOCK_IO_ERROR,
              rung="tracepoint", dev="7:0", mount_point="/mnt/a", fs_type="ext4", errno=5, block=4096),
        Event(seq=4, ts_ns=4, wall_time=1_700_000_000.004, cls=EventClass.WARN, type=EventType.ENOSPC,
              rung="raw_tracepoint", dev="0:50", mount_point="/mnt/t", fs_type="tmpfs", errno=28, pid=9,
              comm="dd"),
        Event(seq=5, ts_ns=5, wall_time=1_700_000_000.005, cls=EventClass.THR, type=EventType.THRESHOLD,
              rung="polled", mount_point="/mnt/t", avail_blocks=1, level="L1", level_blocks=2, direction="down"),
        loss(6, lost=3, total=3),
    ]


def test_err_and_warn_events_reach_journald_with_priority_id_and_fields(journald):
    sink = JournaldSink(journald.socket)
    assert sink.active
    evs = events()
    for ev in evs:
        sink.emit(ev)
    assert (sink.sent, sink.dropped) == (4, 0)
    every = journald.wait_for(4)
    assert sorted(text(e["FSEV_SEQ"]) for e in every) == ["1", "3", "4", "6"]  # no info, no thr
    errs = journald.entries("-p", "err")
    by_seq = {int(text(e["FSEV_SEQ"])): e for e in errs}
    assert sorted(by_seq) == [1, 3]
    for ev in evs:
        if ev.cls is not EventClass.ERR:
            continue
        e = by_seq[ev.seq]
        assert e["PRIORITY"] == "3"
        assert e["MESSAGE_ID"] == MESSAGE_IDS[ev.type]
        assert text(e["MESSAGE"]) == human_line(ev).plain
        assert e["ERRNO"] == "5" and e["FSEV_ERRNO_NAME"] == "EIO"
        for key, v in ev.to_json_dict().items():
            assert text(e[f"FSEV_{key.upper()}"]) == (str(v) if not isinstance(v, float) else repr(v)), key
        assert e["_TRANSPORT"] == "journal"
    assert text(by_seq[1]["FSEV_COMM"]) == "two\nlines"  # the binary form, through journald
    warns = {int(text(e["FSEV_SEQ"])): e for e in every if e["PRIORITY"] == "4"}
    assert sorted(warns) == [4, 6]
    assert warns[4]["MESSAGE_ID"] == MESSAGE_IDS[EventType.ENOSPC] and warns[4]["FSEV_ERRNO_NAME"] == "ENOSPC"
    assert warns[6]["MESSAGE_ID"] == MESSAGE_IDS[EventType.LOSS]
    ids = journald.entries(f"MESSAGE_ID={MESSAGE_IDS[EventType.FS_ERROR]}")  # what docs/service.md shows admins
    assert [text(e["FSEV_SEQ"]) for e in ids] == ["1"]
    sink.close()


def test_a_sink_started_before_journald_connects_when_it_appears(journald):
    journald.stop()
    assert not os.path.exists(journald.socket)
    now = [0.0]
    sink = JournaldSink(journald.socket, clock=lambda: now[0])
    assert not sink.active
    sink.emit(fs_error(10))
    assert sink.dropped == 1
    journald.start()
    now[0] += 60
    sink.emit(fs_error(11))
    assert sink.active and sink.sent == 1
    got = journald.wait_for(1)
    assert [text(e["FSEV_SEQ"]) for e in got] == ["11"]
    sink.close()


def test_journald_restarting_under_a_connected_sink(journald):
    sink = JournaldSink(journald.socket)
    sink.emit(fs_error(20))
    assert journald.wait_for(1)
    journald.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    journald.proc.wait(timeout=10)  # type: ignore[union-attr]
    journald.start()
    sink.emit(fs_error(21))  # the old socket is gone: one immediate reconnect
    assert (sink.sent, sink.dropped) == (2, 0)
    got = journald.wait_for(2)
    assert sorted(text(e["FSEV_SEQ"]) for e in got) == ["20", "21"]
    sink.close()
