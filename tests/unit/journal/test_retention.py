"""Retention: the policy (size, age, consumers, the hard cap), the writer's trims, format 2's
upgrade of old journals, the file giving space back, and a trim killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from support.journal_data import PLAN, digest, fs_error, loss, write_format1_journal

from fsev.journal.retention import Retention, TrimResult, trim
from fsev.journal.store import FORMAT_VERSION, Journal, JournalError, event_body
from fsev.journal.timewindow import TimeWindow
from fsev.journal.writer import JournalWriter

T0 = 1_700_000_000.0
STEP = 60.0  # seconds between segments
PER = 10  # events per segment


@pytest.fixture
def jpath(tmp_path):
    return str(tmp_path / "j.fsev")


def seg_events(s: int) -> list:
    """Segment s (0-based): events s*PER+1 .. s*PER+PER, about T0 + s*STEP."""
    return [fs_error(s * PER + i + 1, wall=T0 + s * STEP) for i in range(PER)]


def build(path: str, n: int) -> Journal:
    """A journal of n segments committed one by one through the store; left open for writing."""
    j = Journal.open(path, write=True, create=True)
    rec = j.begin_recording("record", PLAN, {})
    for s in range(n):
        j.commit_segment(rec, [event_body(e) for e in seg_events(s)], [])
    return j


def sizes(j: Journal) -> list[int]:
    return [r[0] for r in j.conn.execute("SELECT bytes FROM segment ORDER BY first")]


def ids(j: Journal) -> list[int]:
    return [r.id for r in j.records()]


def stored(j: Journal) -> int:
    return j.conn.execute("SELECT coalesce(sum(bytes), 0) FROM segment").fetchone()[0]


def losses(j: Journal) -> list[tuple]:
    return j.conn.execute("SELECT consumer, first, last, count FROM consumer_loss ORDER BY id").fetchall()


FAR_FUTURE_AGE = 1e12  # an age limit nothing reaches


# -- the policy ---------------------------------------------------------------

def test_over_max_bytes_the_oldest_segments_go_until_under_it(jpath):
    with build(jpath, 10) as j:
        each = sizes(j)
        assert each[0] == len(("[" + ",\n".join(event_body(e) for e in seg_events(0)) + "]").encode())
        limit = sum(each[4:]) + 1  # room for the newest 6 segments
        res = trim(j, Retention(limit, FAR_FUTURE_AGE, limit * 10), T0 + 11 * STEP)
        assert (res.segments, res.events, res.bytes, res.through) == (4, 40, sum(each[:4]), 40)
        assert res.kept_bytes == stored(j) == sum(each[4:]) <= limit
        assert not res.forced and res.consumer_losses == {} and res.held_by == ()
        assert ids(j) == list(range(41, 101))
        assert j.trimmed().through == 40 and j.trimmed().events == 40
        # A second trim under the limit deletes nothing.
        assert trim(j, Retention(limit, FAR_FUTURE_AGE, limit * 10), T0 + 11 * STEP).segments == 0


def test_segments_age_out_by_their_newest_event(jpath):
    with build(jpath, 10) as j:
        now = T0 + 20 * STEP
        # Segment s's newest event is at T0 + s*STEP + (s*PER+PER)/1000: segments 0..4 are older than 15 steps.
        res = trim(j, Retention(10**9, 15 * STEP, 10**10), now)
        assert res.segments == 5 and ids(j)[0] == 51
        newest_of_5 = T0 + 5 * STEP + 60 / 1000
        assert res.oldest_time == pytest.approx(newest_of_5)


def test_a_consumer_position_stops_the_trim_by_size_and_by_age(jpath):
    with build(jpath, 10) as j:
        j.ack("siem", 25)  # done with segments 0 and 1, halfway through 2
        j.ack("audit", 70)
        each = sizes(j)
        r = Retention(sum(each[-3:]), 1.0, sum(each))  # everything is over size and old
        res = trim(j, r, T0 + 100 * STEP)
        assert res.segments == 2 and res.through == 20 and ids(j)[0] == 21
        assert res.held_by == ("siem",) and not res.forced and losses(j) == []
        j.ack("siem", 100)
        res = trim(j, r, T0 + 100 * STEP)
        assert res.through == 70 and res.held_by == ("audit",)


def test_over_the_hard_cap_consumers_lose_and_each_is_told_how_many(jpath):
    with build(jpath, 10) as j:
        each = sizes(j)
        j.ack("siem", 15)  # lost: 16..70
        j.ack("audit", 35)  # lost: 36..70
        j.ack("caught-up", 100)  # loses nothing
        r = Retention(max_bytes=sum(each[-3:]), max_age_s=FAR_FUTURE_AGE, hard_max_bytes=sum(each[1:]) - 1)
        res = trim(j, r, T0)
        # Only the unprotected segment 0 goes by the soft rule; then the hard cap (9 segments
        # left, over it) deletes down to max_bytes: 3 segments left.
        assert res.forced and res.through == 70 and ids(j) == list(range(71, 101))
        assert res.kept_bytes == sum(each[-3:])
        assert res.consumer_losses == {"siem": 55, "audit": 35}
        assert sorted(losses(j)) == [("audit", 36, 70, 35), ("siem", 16, 70, 55)]
        # More events, over the cap again: the next loss starts after what was already lost.
        rec = j.recordings()[0].id
        for s in range(10, 17):
            j.commit_segment(rec, [event_body(e) for e in seg_events(s)], [])
        each = sizes(j)  # segments 7..16
        res = trim(j, Retention(sum(each[-3:]), FAR_FUTURE_AGE, sum(each[1:]) - 1), T0)
        assert res.through == 140 and res.consumer_losses == {"siem": 70, "audit": 70, "caught-up": 40}
        assert losses(j)[-3:] == [("siem", 71, 140, 70), ("audit", 71, 140, 70), ("caught-up", 101, 140, 40)]
        assert [x.total for x in j.consumer_losses("siem")] == [55, 125]


def test_under_the_hard_cap_a_consumer_keeps_everything_it_has_not_acknowledged(jpath):
    with build(jpath, 10) as j:
        each = sizes(j)
        j.ack("slow", 0)
        res = trim(j, Retention(each[0], 1.0, sum(each)), T0 + 10**6)  # exactly at the hard cap: not over it
        assert res.segments == 0 and res.held_by == ("slow",) and ids(j)[0] == 1 and losses(j) == []


def test_numbering_goes_on_when_every_segment_was_deleted(jpath):
    with build(jpath, 3) as j:
        res = trim(j, Retention(1, 1.0, 1), T0 + 10**6)
        assert res.segments == 3 and ids(j) == [] and j.last_id() == 30
        rec = j.begin_recording("record", PLAN, {})
        j.commit_segment(rec, [event_body(fs_error(1, wall=T0 + 10**6))], [])
        assert ids(j) == [31] and j.last_id() == 31


def test_stopped_recordings_and_loss_rows_of_deleted_events_go_with_them(jpath):
    j = Journal.open(jpath, write=True, create=True)
    try:
        old = j.begin_recording("record", PLAN, {})
        j.commit_segment(old, [event_body(fs_error(1, wall=T0)), event_body(loss(2, 5, 5, wall=T0))],
                         [(1, loss(2, 5, 5, wall=T0))])
        j.end_recording(old, "stopped")
        live = j.begin_recording("record", PLAN, {})  # started, nothing committed yet: stays
        killed = j.begin_recording("record", PLAN, {})  # never stopped cleanly: kept, it says so
        j.commit_segment(killed, [event_body(fs_error(1, wall=T0 + 1))], [])
        new = j.begin_recording("record", PLAN, {})
        j.commit_segment(new, [event_body(fs_error(1, wall=T0 + 1000))], [])
        assert len(j.losses()) == 1
        trim(j, Retention(10**9, 100.0, 10**10), T0 + 1050)
        assert [r.id for r in j.recordings()] == [live, killed, new]
        assert j.losses() == [] and ids(j) == [4]
    finally:
        j.close()


def test_retention_refuses_nonsense():
    with pytest.raises(JournalError, match="hard_max_bytes"):
        Retention(100, 1.0, 99)
    with pytest.raises(JournalError, match="max_bytes"):
        Retention(0, 1.0, 10)
    with pytest.raises(JournalError, match="max_age_s"):
        Retention(10, 0.0, 10)
    Retention(10, float("inf"), 10)  # no age limit


# -- the file gives the space back ----------------------------------------------

def test_a_new_journal_shrinks_after_a_trim(jpath):
    j = build(jpath, 2000)
    try:
        j.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert j.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        before = os.path.getsize(jpath)
        res = trim(j, Retention(sum(sizes(j)[-200:]), FAR_FUTURE_AGE, 10**12), T0)
        assert res.segments == 1800
        j.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert j.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
        after = os.path.getsize(jpath)
        assert after < before * 0.2, (before, after)
        assert os.path.getsize(jpath + "-wal") == 0
    finally:
        j.close()


def test_an_upgraded_journal_reuses_the_pages_a_trim_freed(jpath):
    write_format1_journal(jpath, [seg_events(s) for s in range(300)])
    with Journal.open(jpath, write=True) as j:
        assert j.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        j.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        full = os.path.getsize(jpath)
        trim(j, Retention(stored(j) // 2, FAR_FUTURE_AGE, 10**12), T0)
        assert j.conn.execute("PRAGMA freelist_count").fetchone()[0] > 0
        rec = j.begin_recording("record", PLAN, {})
        for s in range(300, 440):  # a little less than was freed
            j.commit_segment(rec, [event_body(e) for e in seg_events(s)], [])
        j.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert os.path.getsize(jpath) <= full


# -- format 1 journals -------------------------------------------------------------

def test_a_format_1_journal_reads_as_it_is_and_upgrades_when_opened_for_writing(jpath):
    segs = [seg_events(s) for s in range(5)]
    write_format1_journal(jpath, segs)
    before = digest(jpath)
    with Journal.open(jpath) as j:  # read-only: left exactly as it is
        assert j.version == 1 and ids(j) == list(range(1, 51)) and j.last_id() == 50
        w = TimeWindow(T0 + 2 * STEP, T0 + 3 * STEP)  # no times stored: filtered event by event
        assert [r.id for r in j.records(window=w)] == list(range(21, 31))
        assert j.consumer_losses("x") == [] and j.trimmed() is None
    assert digest(jpath) == before
    with Journal.open(jpath, write=True) as j:
        assert j.version == FORMAT_VERSION == 2
        rows = j.conn.execute("SELECT first_time, last_time, bytes, length(CAST(events AS BLOB)) FROM segment"
                              " ORDER BY first").fetchall()
        for seg, (t0, t1, size, length) in zip(segs, rows):
            assert (t0, t1, size) == (seg[0].wall_time, seg[-1].wall_time, length)
        j.ack("siem", 20)
        res = trim(j, Retention(10**9, 2.5 * STEP, 10**10), T0 + 5 * STEP)
        assert res.through == 20 and res.held_by == ("siem",)
    raw = sqlite3.connect(jpath)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with Journal.open(jpath) as j:
        assert j.version == 2 and ids(j) == list(range(21, 51))


def test_the_upgrade_leaves_a_damaged_segment_without_times_and_windows_still_report_it(jpath):
    write_format1_journal(jpath, [seg_events(s) for s in range(3)])
    c = sqlite3.connect(jpath)
    c.execute("UPDATE segment SET events = 'not json' WHERE first = 11")  # its CRC no longer matches
    c.commit()
    c.close()
    with Journal.open(jpath, write=True) as j:
        assert j.conn.execute("SELECT first_time, last_time FROM segment WHERE first = 11").fetchone() == (None, None)
        with pytest.raises(JournalError, match="events 11-20 are corrupted"):
            list(j.records(window=TimeWindow(T0 + 100 * STEP, None)))


# -- time windows skip segments in SQL -----------------------------------------------

def test_a_window_never_reads_segments_outside_it(jpath):
    with build(jpath, 10) as j:
        # Break segment 2's checksum: reading it at all raises.
        j.conn.execute("UPDATE segment SET crc = crc + 1 WHERE first = 21")
        with pytest.raises(JournalError, match="events 21-30 are corrupted"):
            list(j.records())
        w = TimeWindow(T0 + 4 * STEP, T0 + 6 * STEP)
        assert [r.id for r in j.records(window=w)] == list(range(41, 61))
        # An edge inside a segment: filtered event by event (event i is at T0 + s*STEP + i/1000).
        w = TimeWindow(T0 + 5 * STEP + 0.0555, T0 + 7 * STEP + 0.073)
        assert [r.id for r in j.records(window=w)] == list(range(56, 73))
        plan = " ".join(str(r) for r in j.conn.execute(
            "EXPLAIN QUERY PLAN SELECT first FROM segment INDEXED BY segment_span WHERE first >= 0"
            " AND (last_time IS NULL OR last_time >= 1) AND (first_time IS NULL OR first_time < 2)"))
        assert "COVERING INDEX segment_span" in plan


# -- the writer trims ------------------------------------------------------------------

def test_the_writer_keeps_the_journal_under_max_bytes(jpath):
    j = Journal.open(jpath, write=True, create=True)
    try:
        # At most 50 events (about 14 kB) per segment, however fast they come.
        w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.005, batch=50, max_uncommitted=50,
                          retention=Retention(200_000, FAR_FUTURE_AGE, 400_000), trim_interval=0.02)
        for i in range(30_000):
            w.append(fs_error(i + 1))
        w.flush()
        deadline = time.monotonic() + 10
        while stored(j) > 200_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        w.close()
        assert w.trims >= 2 and isinstance(w.last_trim, TrimResult)
        assert 150_000 < stored(j) <= 200_000  # cut to the limit, not far below it
        got = ids(j)
        assert got == list(range(got[0], 30_001)) and got[0] > 1
    finally:
        j.close()


def test_the_writer_counts_what_the_hard_cap_took_from_consumers(jpath):
    j = Journal.open(jpath, write=True, create=True)
    try:
        w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.005, batch=50, max_uncommitted=50,
                          retention=Retention(100_000, FAR_FUTURE_AGE, 100_000), trim_interval=0.02)
        w.append(fs_error(1))
        w.flush()
        j.ack("siem", 1)  # reads nothing more: the cap deletes what it has not seen
        j.ack("audit", 1)
        for i in range(1, 20_000):
            w.append(fs_error(i + 1))
        w.flush()
        deadline = time.monotonic() + 10
        while stored(j) > 100_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        w.close()
        lost = [x.total for x in j.consumer_losses("siem")]
        assert lost and w.forced_lost == lost[-1] == [x.total for x in j.consumer_losses("audit")][-1]
    finally:
        j.close()


def test_a_trim_that_fails_reaches_the_appending_thread_like_a_commit(jpath, monkeypatch):
    import fsev.journal.writer as writer_mod

    def broken(*_):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(writer_mod, "trim", broken)
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), retention=Retention(10, 1.0, 10))
    time.sleep(0.2)  # the first trim runs at once
    with pytest.raises(JournalError, match="disk is full"):
        w.append(fs_error(1))
    with pytest.raises(JournalError):
        w.close()
    j.close()


def test_append_does_not_wait_for_a_slow_trim(jpath, monkeypatch):
    import fsev.journal.writer as writer_mod

    real = writer_mod.trim
    started = []

    def slow(*args):
        started.append(time.monotonic())
        time.sleep(1.0)
        return real(*args)

    monkeypatch.setattr(writer_mod, "trim", slow)
    j = Journal.open(jpath, write=True, create=True)
    try:
        w = JournalWriter(j, j.begin_recording("record", PLAN, {}), retention=Retention(10**9, 1e9, 10**9))
        while not started:
            time.sleep(0.01)
        t = time.monotonic()
        for i in range(5000):
            w.append(fs_error(i + 1))
        assert time.monotonic() - t < 0.5  # queued while the trim runs
        w.close()
        assert ids(j) == list(range(1, 5001))
    finally:
        j.close()


# -- kill -9 in the middle of trims -----------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from fsev.events import Event, EventClass, EventType
    from fsev.journal.retention import Retention
    from fsev.journal.store import Journal
    from fsev.journal.writer import JournalWriter

    path, start = sys.argv[1], int(sys.argv[2])
    j = Journal.open(path, write=True, create=True)
    j.ack("slow", j.last_id() // 2)  # held events: the hard cap must force some out, with consumer_loss rows
    w = JournalWriter(j, j.begin_recording("record", [], {}), interval=0.001, batch=300, max_uncommitted=300,
                      retention=Retention(300_000, 1e12, 600_000), trim_interval=0.0)
    i = start
    while True:
        i += 1
        w.append(Event(seq=i, ts_ns=i, wall_time=1.7e9 + i / 1000, cls=EventClass.ERR, type=EventType.FS_ERROR,
                       rung="tracepoint", mount_point="/mnt/a", function="f" * (i % 50), line=i))
        if (i - start) % 6000 == 0:
            print(i, w.trims, flush=True)
""")


def test_sigkill_during_trims_leaves_a_valid_journal(jpath):
    rng = random.Random(13)
    start, trims_seen = 0, 0
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", CHILD, jpath, str(start)], stdout=subprocess.PIPE, text=True,
                             cwd="/")
        try:
            assert p.stdout is not None
            line = p.stdout.readline()  # running and trimming
            assert line, "the child died"
            trims_seen = max(trims_seen, int(line.split()[1]))
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
        with Journal.open(jpath) as j:  # quick_check passes, or this raises
            got = [r.id for r in j.records()]  # every CRC checks out
            t = j.trimmed()
            assert t is not None and got and got[0] == t.through + 1
            assert got == list(range(got[0], got[-1] + 1)) and got[-1] == j.last_id()
            for x in j.conn.execute("SELECT consumer, first, last, count FROM consumer_loss"):
                assert x[0] == "slow" and x[3] == x[2] - x[1] + 1 and x[2] <= t.through
            start = got[-1]
        raw = sqlite3.connect(jpath)
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.close()
    assert trims_seen > 10
    with Journal.open(jpath) as j:
        assert j.conn.execute("SELECT count(*) FROM consumer_loss").fetchone()[0] > 0
