"""`fsev top --from FILE`: the screen driven by a journal (fsev.top.review)."""

from __future__ import annotations

import os
import time

import pytest
from support.journal_data import fs_error, fsev, loss, one_line_error, umount, write_journal

from fsev.top.review import JournalSession

WALL = 1_700_000_000.0


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "incident.fsev")
    evs = [fs_error(i) for i in range(1, 4)] + [loss(4, 10, 10), umount(5), fs_error(6, mount="/mnt/b", dev="7:1")]
    write_journal(path, evs)
    return path


def _drain(s: JournalSession) -> list:
    out = []
    while not s.done:
        out += list(s.events(poll_ms=0, until=time.monotonic()))
    return out


def test_session_gives_every_event_and_keeps_the_journal_clock(journal):
    s = JournalSession(journal)
    evs = _drain(s)
    s.close()
    assert [e.seq for e in evs] == [1, 2, 3, 4, 5, 6]
    assert s.lost_total == 10
    # the journal's clock: at the end, when the recording stopped
    assert s.now() == s.recordings[-1].stopped_at
    assert {m.mount_point for m in s.table} == {"/mnt/a", "/mnt/b"}  # rows come from the events


def test_an_unmount_in_the_journal_takes_its_row_away(journal):
    s = JournalSession(journal)
    seen = {}
    for ev in iter(lambda: s._next(), None):
        s.table.see(ev)
        seen[ev.seq] = {m.mount_point for m in s.table}
    s.close()
    assert seen[1] == {"/mnt/a"}


def test_paced_replay_holds_events_until_due(tmp_path):
    path = str(tmp_path / "paced.fsev")
    write_journal(path, [fs_error(1, wall=WALL), fs_error(2, wall=WALL + 1.0)])  # one second apart
    s = JournalSession(path, speed=2.0)  # due half a second apart
    t0 = time.monotonic()
    first = list(s.events(poll_ms=0, until=t0 + 0.2))
    assert [e.seq for e in first] == [1]
    assert s.now() == pytest.approx(WALL + 0.001 + 0.2 * 2, abs=0.1)  # the clock runs at the pace
    got = [(e.seq, time.monotonic() - t0) for e in s.events(poll_ms=0, until=t0 + 2.0)]
    s.close()
    assert [n for n, _ in got] == [2] and 0.45 <= got[0][1] < 1.0


def test_once_shows_the_recorded_mounts_errors_and_drops(journal):
    p = fsev("top", "--from", journal, "--once", env={**os.environ, "COLUMNS": "160"})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "review of incident.fsev" in out
    assert "/mnt/b" in out and "trigger_test_error" in out
    head = out.splitlines()[0]
    assert "events 5" in head.replace("  ", " ") and "drops 10" in head.replace("  ", " ")
    assert "ext4_error tracepoint" in out  # the recording's probe plan
    assert time.strftime("%H:%M:%S", time.localtime(WALL + 0.006)) in out  # events at their recorded time


@pytest.mark.parametrize("args, says", [
    (["--speed", "2"], "--speed needs --from"),
    (["--from", "{j}", "--mount", "/"], "--mount does not go with --from"),
    (["--from", "{j}", "--speed", "0", "--once"], "--speed must be a positive factor"),
    (["--from", "{j}"], "top needs a terminal"),
    (["--from", "{missing}", "--once"], "missing.fsev"),
])
def test_bad_review_requests_are_one_line_errors(journal, tmp_path, args, says):
    args = [a.format(j=journal, missing=str(tmp_path / "missing.fsev")) for a in args]
    line = one_line_error(fsev("top", *args))
    assert says in line


def test_a_recorded_read_only_transition_sets_the_rows_ro_column(tmp_path):
    from fsev.events import Event, EventClass, EventType
    from fsev.top.review import ReviewTable

    t = ReviewTable()
    t.see(fs_error(1))
    ro = Event(2, 0, WALL, EventClass.ERR, EventType.READ_ONLY, "raw_tracepoint", dev="7:0", mount_point="/mnt/a",
               extra={"read_only": True, "cause": "error", "flag": "emergency_ro"})
    t.see(ro)
    (m,) = list(t)
    assert m.read_only and "emergency_ro" in m.super_options
    back = Event(3, 0, WALL, EventClass.INFO, EventType.READ_ONLY, "raw_tracepoint", dev="7:0", mount_point="/mnt/a",
                 extra={"read_only": False, "cause": "remount"})
    t.see(back)
    (m,) = list(t)
    assert not m.read_only and t.generation == 3
