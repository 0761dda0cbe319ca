"""The journal without root: format, writer batching, reading, consumers, bad files."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.journal_data import PLAN, digest, fs_error, loss, umount, write_journal

from fsev.events import Event, EventClass
from fsev.journal.store import APPLICATION_ID, FORMAT_VERSION, Journal, JournalError, event_body
from fsev.journal.writer import MAX_UNCOMMITTED, JournalWriter
from fsev.session.sinks import JsonSink


@pytest.fixture
def jpath(tmp_path):
    return str(tmp_path / "j.fsev")


# -- format ----------------------------------------------------------------

def test_new_journal_is_0600_wal_with_id_and_version_whatever_the_umask(jpath):
    old = os.umask(0)
    try:
        j = Journal.open(jpath, write=True, create=True)
    finally:
        os.umask(old)
    try:
        rec = j.begin_recording("record", PLAN, {})
        w = JournalWriter(j, rec)
        w.append(fs_error(1))
        w.flush()
        # While open, SQLite's side files exist; they must not be wider than the journal.
        for f in (jpath, jpath + "-wal", jpath + "-shm"):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
        w.close()
    finally:
        j.close()
    raw = sqlite3.connect(jpath)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert raw.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    leftovers = [f for f in os.listdir(os.path.dirname(jpath)) if f.endswith(".tmp")]
    assert leftovers == []


def test_recording_header_holds_host_kernel_version_plan_options(jpath):
    write_journal(jpath, [fs_error(1)], options={"mounts": ["/mnt/a"], "thr": "10,5"})
    with Journal.open(jpath) as j:
        (r,) = j.recordings()
    assert r.host == os.uname().nodename and r.kernel == os.uname().release
    assert r.fsev_version and r.plan == PLAN and r.options["thr"] == "10,5"
    assert r.clean and r.stop_reason == "stopped" and r.events == 1
    assert r.started_at <= r.last_commit_at <= r.stopped_at


def test_events_round_trip_byte_for_byte_as_trace_json_prints_them(jpath, capsys):
    evs = [
        fs_error(1),
        fs_error(2, errno=5, inode=12, block=99, extra={"superblock_gone": True}),
        umount(3, lazy=True, comm="[red]x[/red]\x1b[2J", mount_point="/mnt/with space"),
        loss(4, lost=7, total=7),
    ]
    write_journal(jpath, evs)
    sink = JsonSink()
    for ev in evs:
        sink.emit(ev)
    printed = capsys.readouterr().out.splitlines()
    with Journal.open(jpath) as j:
        recs = list(j.records())
    assert [r.body for r in recs] == printed == [event_body(e) for e in evs]
    assert [Event.from_json_dict(r.json()) for r in recs] == evs
    assert [r.id for r in recs] == [1, 2, 3, 4]


def test_loss_records_also_land_in_the_loss_table_pointing_at_their_row(jpath):
    write_journal(jpath, [fs_error(1), loss(2, 5, 5), fs_error(3), loss(4, 2, 7)])
    with Journal.open(jpath) as j:
        losses = j.losses()
        ids = {r.id: r.json() for r in j.records()}
    assert [(x["event"], x["lost"], x["lost_total"], x["source"]) for x in losses] == [
        (2, 5, 5, "ringbuf"), (4, 2, 7, "ringbuf")]
    assert all(ids[x["event"]]["type"] == "loss" for x in losses)


def test_a_second_recording_appends_and_ids_keep_growing(jpath):
    write_journal(jpath, [fs_error(1), fs_error(2)])
    write_journal(jpath, [fs_error(1), fs_error(2), fs_error(3)], command="trace")
    with Journal.open(jpath) as j:
        recs = j.recordings()
        rows = list(j.records())
    assert [(r.id, r.command, r.events) for r in recs] == [(1, "record", 2), (2, "trace", 3)]
    assert [(r.id, r.recording, r.json()["seq"]) for r in rows] == [
        (1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2), (5, 2, 3)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(list(EventClass)), st.text(max_size=20), st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    st.one_of(st.none(), st.integers(-5, 200)), st.booleans()), min_size=1, max_size=30))
def test_any_event_round_trips(tmp_path_factory, spec):
    path = str(tmp_path_factory.mktemp("h") / "j.fsev")
    evs = [fs_error(i + 1, cls=c, comm=s, mount_point=s or None, inode=ino, errno=err, lazy=lz)
           for i, (c, s, ino, err, lz) in enumerate(spec)]
    write_journal(path, evs)
    with Journal.open(path) as j:
        assert [Event.from_json_dict(r.json()) for r in j.records()] == evs


# -- batching and the loss window -------------------------------------------

def _committed(path: str) -> int:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute("SELECT count(*) FROM event").fetchone()[0]
    finally:
        c.close()


def test_a_lone_event_is_committed_within_the_batch_interval(jpath):
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.1)
    try:
        t0 = time.monotonic()
        w.append(fs_error(1))
        while _committed(jpath) < 1:
            assert time.monotonic() - t0 < 2, "a single event was never committed"
            time.sleep(0.005)
        assert 0.05 <= time.monotonic() - t0 < 1.0  # not at once (batched), yet within the interval
    finally:
        w.close()
        j.close()


def test_a_full_batch_commits_before_the_interval(jpath):
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=60, batch=500)
    try:
        for i in range(500):
            w.append(fs_error(i + 1))
        t0 = time.monotonic()
        while _committed(jpath) < 500:
            assert time.monotonic() - t0 < 5, "a full batch waited for the interval"
            time.sleep(0.005)
        w.append(fs_error(501))
        time.sleep(0.2)
        assert _committed(jpath) == 500  # the next one waits for its batch
    finally:
        w.close()
        j.close()
    assert _committed(jpath) == 501


def test_uncommitted_events_never_exceed_the_cap(jpath, monkeypatch):
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.01, batch=10, max_uncommitted=50)
    slow = w._commit

    def slow_commit(*batch):
        time.sleep(0.02)
        slow(*batch)

    monkeypatch.setattr(w, "_commit", slow_commit)
    peak = 0
    for i in range(400):
        w.append(fs_error(i + 1))
        peak = max(peak, w._uncommitted)
    w.close()
    j.close()
    assert peak <= 50
    assert _committed(jpath) == 400
    assert MAX_UNCOMMITTED == 10_000  # the figure docs/journal.md states


def test_without_a_clean_stop_the_recording_says_so(jpath):
    write_journal(jpath, [fs_error(1)], close=False)
    with Journal.open(jpath) as j:
        (r,) = j.recordings()
    assert not r.clean and r.stopped_at is None and r.last_commit_at is not None


def test_a_write_failure_reaches_the_appending_thread_as_one_line(jpath, monkeypatch):
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.01)

    def broken(*batch):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(w, "_commit", broken)
    w.append(fs_error(1))
    time.sleep(0.2)
    with pytest.raises(JournalError, match="disk is full"):
        w.append(fs_error(2))
    with pytest.raises(JournalError):
        w.close()
    j.close()


# -- consumers ---------------------------------------------------------------

def test_ack_is_stored_and_replaced_atomically(jpath):
    write_journal(jpath, [fs_error(i + 1) for i in range(5)])
    with Journal.open(jpath, write=True) as j:
        assert j.consumer("siem").acked == 0
        j.ack("siem", 3)
        j.ack("siem", 4, "/tmp/out", 120)
        j.ack("other", 1)
    with Journal.open(jpath) as j:
        s = j.consumer("siem")
        assert (s.acked, s.output, s.output_offset) == (4, "/tmp/out", 120)
        assert j.consumer("other").acked == 1
        assert [r.id for r in j.records(after=s.acked)] == [5]


def test_reading_while_the_writer_commits_sees_whole_batches_only(jpath):
    """WAL: a reader sees a prefix of whole commits, never a torn batch."""
    j = Journal.open(jpath, write=True, create=True)
    w = JournalWriter(j, j.begin_recording("record", PLAN, {}), interval=0.005, batch=100)
    seen: list[int] = []
    done = threading.Event()

    def read():
        with Journal.open(jpath, check=False) as r:
            while not done.is_set():
                seen.append(r.last_id())

    t = threading.Thread(target=read)
    t.start()
    for i in range(3000):
        w.append(fs_error(i + 1))
    w.close()
    done.set()
    t.join()
    j.close()
    assert seen == sorted(seen) and seen[-1] <= 3000


# -- bad files: one line, and nothing overwritten ----------------------------

def _refused(path: str, needle: str, write: bool = False) -> None:
    before = digest(path) if os.path.isfile(path) else None
    with pytest.raises(JournalError) as e:
        Journal.open(path, write=write, create=write)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    if before is not None:
        assert digest(path) == before, "a refused file was modified"
        assert not os.path.exists(path + "-wal")


def test_missing_file(jpath):
    _refused(jpath, "no such journal")


def test_empty_file(jpath):
    open(jpath, "w").close()
    _refused(jpath, "empty file")
    _refused(jpath, "empty file", write=True)


def test_text_file_is_not_a_journal(jpath):
    with open(jpath, "w") as f:
        f.write("important notes\n" * 100)
    _refused(jpath, "not an fsev journal")
    _refused(jpath, "not an fsev journal", write=True)


def test_other_sqlite_database_is_not_a_journal(jpath):
    c = sqlite3.connect(jpath)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    _refused(jpath, "an SQLite database, but not an fsev journal", write=True)


def test_newer_format_version_is_refused(jpath):
    write_journal(jpath, [fs_error(1)])
    c = sqlite3.connect(jpath)
    c.execute(f"PRAGMA user_version={FORMAT_VERSION + 1}")
    c.commit()
    c.close()
    _refused(jpath, f"format version {FORMAT_VERSION + 1} is newer")
    _refused(jpath, f"format version {FORMAT_VERSION + 1} is newer", write=True)


@pytest.mark.parametrize("keep", [50, 0.5])
def test_truncated_journal(jpath, keep):
    write_journal(jpath, [fs_error(i + 1) for i in range(3000)])
    size = os.path.getsize(jpath)
    with open(jpath, "r+b") as f:
        f.truncate(keep if isinstance(keep, int) else int(size * keep))
    _refused(jpath, "truncated" if keep == 50 else "corrupted")


def test_damaged_record_body_fails_its_checksum(jpath):
    write_journal(jpath, [fs_error(i + 1) for i in range(100)])
    data = bytearray(open(jpath, "rb").read())
    at = data.find(b"trigger_test_error", len(data) // 2)
    data[at : at + 7] = b"TRIGGER"
    open(jpath, "wb").write(bytes(data))
    with Journal.open(jpath) as j:  # the page structure is intact: quick_check passes
        with pytest.raises(JournalError, match=r"events \d+-\d+ are corrupted \(checksum mismatch\)"):
            list(j.records())


def test_damaged_btree_page_is_reported_before_any_output(jpath):
    write_journal(jpath, [fs_error(i + 1) for i in range(3000)])
    data = bytearray(open(jpath, "rb").read())
    page = 4096
    for p in range(2, len(data) // page, 3):  # scribble over interior page headers
        data[p * page : p * page + 12] = b"\xff" * 12
    open(jpath, "wb").write(bytes(data))
    _refused(jpath, "corrupted")


def test_directory_is_not_a_journal(tmp_path):
    _refused(str(tmp_path), "directory")


def test_create_in_a_missing_directory(tmp_path):
    with pytest.raises(JournalError, match="does not exist"):
        Journal.open(str(tmp_path / "nope" / "j.fsev"), write=True, create=True)


# -- the fast JSON line -------------------------------------------------------

_scalars = st.one_of(st.none(), st.integers(-2**70, 2**70), st.text(max_size=12), st.booleans(),
                     st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None)
@given(seq=st.one_of(st.integers(0, 2**64), st.floats(), st.none()), wall=st.floats(),
       rung=st.text(max_size=8), comm=_scalars, inode=_scalars, errno=st.one_of(st.none(), st.integers(-3, 300)),
       lazy=_scalars, mount=_scalars,
       extra=st.dictionaries(st.text(min_size=1, max_size=5), _scalars, max_size=2))
def test_fast_json_line_is_exactly_what_json_sink_prints(seq, wall, rung, comm, inode, errno, lazy, mount, extra):
    from fsev.events.json_line import _dumps, event_json

    ev = fs_error(1, seq=seq, wall_time=wall, rung=rung, comm=comm, inode=inode, errno=errno, lazy=lazy,
                  mount_point=mount, extra=extra)
    assert event_json(ev) == _dumps(ev.to_json_dict())


def test_sql_sees_one_row_per_event_through_the_event_view(jpath):
    write_journal(jpath, [fs_error(1), umount(2), fs_error(3, mount="/mnt/b")])
    c = sqlite3.connect(jpath)
    rows = c.execute("SELECT id, seq, class, type, mount_point FROM event ORDER BY id").fetchall()
    c.close()
    assert rows == [(1, 1, "err", "fs_error", "/mnt/a"), (2, 2, "info", "umount", "/mnt/t"),
                    (3, 3, "err", "fs_error", "/mnt/b")]


def test_fast_json_line_never_confuses_equal_values_of_other_types():
    """True == 1 == 1.0 as dict keys; in JSON they are true, 1 and 1.0."""
    from fsev.events.json_line import _dumps, event_json

    for v in (True, 1, 1.0, False, 0, 0.0, -0.0, 0.0, True, 1):
        ev = fs_error(1, lazy=v, line=v)
        assert event_json(ev) == _dumps(ev.to_json_dict())
