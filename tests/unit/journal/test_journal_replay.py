"""`fsev replay` and `fsev report` as a user runs them (the installed fsev, no root needed):
output forms, pacing, follow, consumers killed at random points, bad input."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import zlib

import pytest
from rich.console import Console
from support.journal_data import FSEV, PLAN, digest, fs_error, fsev, loss, one_line_error, popen, umount, write_journal

from fsev.journal.store import FORMAT_VERSION, Journal, event_body
from fsev.journal.writer import JournalWriter
from fsev.session.sinks import human_line


@pytest.fixture
def jpath(tmp_path):
    return str(tmp_path / "j.fsev")


def _events(n: int) -> list:
    return [fs_error(i + 1, mount="/mnt/a" if i % 3 else "/mnt/b") for i in range(n)]


# -- output forms ------------------------------------------------------------

def test_replay_json_is_exactly_what_trace_json_printed(jpath):
    evs = [fs_error(1), umount(2, lazy=True, extra={"superblock_gone": True}), loss(3, 4, 4), fs_error(4, errno=28)]
    write_journal(jpath, evs)
    p = fsev("replay", jpath, "--json")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [event_body(e) for e in evs]
    assert "recording 1 (record)" in p.stderr  # provenance goes to stderr, never into the JSON stream


def test_replay_human_lines_are_trace_human_lines(jpath):
    evs = [fs_error(1), umount(2, comm="[bold]x[/bold]\x1b[2J"), loss(3, 4, 4)]
    write_journal(jpath, evs)
    p = fsev("replay", jpath)
    assert p.returncode == 0, p.stderr
    buf = io.StringIO()
    con = Console(file=buf, highlight=False, soft_wrap=True, color_system=None, force_terminal=False)
    for ev in evs:
        con.print(human_line(ev))
    assert p.stdout == buf.getvalue()
    assert "\x1b" not in p.stdout and "[bold]x[/bold]" in p.stdout


def test_an_event_type_newer_than_this_fsev_still_replays(jpath):
    write_journal(jpath, [fs_error(1)])
    body = json.dumps({"seq": 2, "ts_ns": 5, "wall_time": 1.7e9, "class": "err", "type": "read_only",
                       "rung": "tracepoint", "mount_point": "/mnt/a"}, separators=(",", ":"))
    c = sqlite3.connect(jpath)
    text = "[" + body + "]"
    c.execute("INSERT INTO segment (recording, first, count, crc, events) VALUES (1, 2, 1, ?, ?)",
              (zlib.crc32(text.encode()), text))
    c.commit()
    c.close()
    p = fsev("replay", jpath, "--json")
    assert p.returncode == 0 and p.stdout.splitlines()[1] == body
    p = fsev("replay", jpath)
    assert p.returncode == 0 and "read_only" in p.stdout.splitlines()[1]
    rep = json.loads(fsev("report", jpath, "--json").stdout)
    assert rep["mounts"][0]["read_only"][0]["class"] == "err"


def _arrivals(args: list[str]) -> list[float]:
    t0 = time.monotonic()
    with popen([FSEV, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as p:
        times = [time.monotonic() - t0 for _ in p.stdout]
        assert p.wait(30) == 0
    return times


def test_speed_replays_at_a_multiple_of_the_recorded_pace(jpath):
    evs = [fs_error(i + 1, wall=1_700_000_000.0 + i * 0.6 - (i + 1) / 1000) for i in range(4)]  # 0.6 s apart
    write_journal(jpath, evs)
    at2 = _arrivals(["replay", jpath, "--json", "--speed", "2"])
    gaps = [b - a for a, b in zip(at2, at2[1:])]
    assert all(0.2 <= g <= 0.5 for g in gaps), gaps  # 0.3 s each
    fast = _arrivals(["replay", jpath, "--json"])
    assert fast[-1] - fast[0] < 0.2


@pytest.mark.parametrize("speed", ["0", "-1"])
def test_speed_must_be_positive(jpath, speed):
    write_journal(jpath, [fs_error(1)])
    assert "--speed" in one_line_error(fsev("replay", jpath, "--speed", speed))


# -- consumers -----------------------------------------------------------------

def test_consumer_resumes_after_what_it_acknowledged(jpath):
    write_journal(jpath, _events(10))
    first = fsev("replay", jpath, "--json", "--consumer", "siem")
    assert len(first.stdout.splitlines()) == 10
    assert fsev("replay", jpath, "--json", "--consumer", "siem").stdout == ""
    write_journal(jpath, _events(3))  # a second recording appended
    third = fsev("replay", jpath, "--json", "--consumer", "siem")
    assert [json.loads(l)["seq"] for l in third.stdout.splitlines()] == [1, 2, 3]
    assert len(fsev("replay", jpath, "--json", "--consumer", "other").stdout.splitlines()) == 13
    with Journal.open(jpath) as j:
        assert j.consumer("siem").acked == 13


def _run_and_kill(args: list[str], out_path: str | None, total_bytes: int, rng: random.Random,
                  ) -> tuple[int, str, bool]:
    """Start a consumer, kill -9 it at a random moment once it has begun writing.
    Returns (exit code, its stdout, whether the kill landed mid-stream)."""
    with popen([FSEV, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        out: list[str] = []
        err: list[str] = []
        readers = [threading.Thread(target=lambda: out.extend(p.stdout), daemon=True),
                   threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)]
        for r in readers:
            r.start()
        end = time.monotonic() + 30
        # Past start-up: replay says which recording it prints right before its first record.
        while p.poll() is None and time.monotonic() < end and not any("recording" in l for l in err):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.25))
        killed = p.poll() is None
        if killed:
            os.kill(p.pid, signal.SIGKILL)
        rc = p.wait(30)
        for r in readers:
            r.join(10)
        assert "Traceback" not in "".join(err), err
    if out_path is not None:
        mid = killed and 0 < os.path.getsize(out_path) < total_bytes
    else:
        mid = killed and bool(out)
    return rc, "".join(out), mid


def test_consumer_with_an_output_file_killed_anywhere_writes_every_record_exactly_once(jpath, tmp_path):
    """Exactly once, as the file holds it: lines written after the last acknowledgement by a
    killed run are cut away on restart and written again."""
    n = 3000
    write_journal(jpath, _events(n))
    expected = fsev("replay", jpath, "--json").stdout
    out = str(tmp_path / "out.jsonl")
    rng = random.Random(20240601)
    kills_mid, runs, unacked_tails = 0, 0, 0
    for speed in (["--speed", "1"], []):  # paced (kills land anywhere in 3 s), then flat out
        name = "c" + str(len(speed))
        while True:
            runs += 1
            assert runs < 200, "the consumer never finished"
            rc, _, mid = _run_and_kill(["replay", jpath, "--json", "--consumer", name,
                                        "--output", out, *speed], out, len(expected), rng)
            kills_mid += mid
            if rc == 0:
                break
            assert rc == -signal.SIGKILL
            with Journal.open(jpath) as j:
                # Output written but not yet acknowledged when the kill came: the case to get right.
                unacked_tails += os.path.getsize(out) > (j.consumer(name).output_offset or 0)
        with open(out) as f:
            got = f.read()
        assert got == expected, f"{len(got.splitlines())} lines, expected {n}"
        os.unlink(out)
    print(f"runs {runs}, kills mid-stream {kills_mid}, unacknowledged tails cut {unacked_tails}")
    assert kills_mid >= 5, f"only {kills_mid} kills landed mid-stream"
    assert unacked_tails >= 3, f"only {unacked_tails} kills left unacknowledged output behind"


def test_consumer_on_stdout_repeats_at_most_the_line_in_flight_per_kill(jpath):
    """A stream cannot take a line back: at least once, and a repeat is only ever the
    last line of a killed run printed again as the first line of the next."""
    n = 3000
    write_journal(jpath, _events(n))
    bodies = fsev("replay", jpath, "--json").stdout.splitlines()
    rng = random.Random(7)
    runs: list[list[str]] = []
    while True:
        assert len(runs) < 300
        rc, text, _ = _run_and_kill(["replay", jpath, "--json", "--consumer", "s", "--speed", "2"],
                                    None, 0, rng)
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a torn last line never reached the reader as a line
        runs.append([l.rstrip("\n") for l in lines])
        if rc == 0:
            break
    seen: list[str] = []
    repeats = 0
    for _prev, run in zip([None] + runs, runs):
        if run and seen and run[0] == seen[-1]:
            repeats += 1
            run = run[1:]
        seen.extend(run)
    assert seen == bodies  # every record, in order, nothing skipped
    assert repeats <= len(runs) - 1
    assert len(runs) >= 4, "too few kills to mean anything"


def test_output_file_shorter_than_acknowledged_is_refused(jpath, tmp_path):
    write_journal(jpath, _events(20))
    out = str(tmp_path / "out.jsonl")
    assert fsev("replay", jpath, "--json", "--consumer", "c", "-o", out).returncode == 0
    write_journal(jpath, _events(5))
    with open(out, "r+") as f:
        f.truncate(10)
    msg = one_line_error(fsev("replay", jpath, "--json", "--consumer", "c", "-o", out))
    assert "less than" in msg and os.path.getsize(out) == 10


def test_follow_prints_what_the_recorder_commits_later_and_stops_on_sigterm(jpath):
    write_journal(jpath, _events(5))
    j = Journal.open(jpath, write=True)
    rec = j.begin_recording("record", PLAN, {})
    w = JournalWriter(j, rec, interval=0.02)
    with popen([FSEV, "replay", jpath, "--json", "--follow"], stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, text=True) as p:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
        reader.start()
        for i in range(200):
            w.append(fs_error(i + 1, mount="/mnt/live"))
            if i % 50 == 0:
                time.sleep(0.1)
        w.close()
        j.end_recording(rec, "stopped")
        end = time.monotonic() + 10
        while len(lines) < 205 and time.monotonic() < end:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        reader.join(5)
    j.close()
    assert len(lines) == 205
    assert [json.loads(l)["mount_point"] for l in lines[5:]] == ["/mnt/live"] * 200


def test_follow_with_consumer_killed_and_restarted_misses_nothing(jpath, tmp_path):
    write_journal(jpath, [])
    out = str(tmp_path / "out.jsonl")
    j = Journal.open(jpath, write=True)
    rec = j.begin_recording("record", PLAN, {})
    w = JournalWriter(j, rec, interval=0.02)
    args = [FSEV, "replay", jpath, "--json", "--follow", "--consumer", "f", "-o", out]
    written = 0
    for round_ in range(4):
        with popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
            for _ in range(300):
                written += 1
                w.append(fs_error(written))
                if written % 25 == 0:
                    time.sleep(0.01)
            time.sleep(random.uniform(0.1, 0.4))
            if round_ < 3:
                os.kill(p.pid, signal.SIGKILL)
            else:
                w.flush()
                end = time.monotonic() + 10
                while time.monotonic() < end and (not os.path.exists(out) or
                                                  sum(1 for _ in open(out)) < written):
                    time.sleep(0.05)
                p.send_signal(signal.SIGTERM)
                assert p.wait(10) == 0
    w.close()
    j.close()
    seqs = [json.loads(l)["seq"] for l in open(out)]
    assert seqs == list(range(1, written + 1))


# -- report ------------------------------------------------------------------

def test_report_json_and_human(jpath):
    evs = [fs_error(1), fs_error(2), fs_error(3, line=7, function="ext4_find_entry"), loss(4, 9, 9),
           umount(5, mount="/mnt/a"), fs_error(6, errno=28)]
    write_journal(jpath, evs)
    p = fsev("report", jpath, "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["drops"]["lost_total"] == 9
    (m,) = rep["mounts"]
    assert [(g["function"], g["line"], g["errno"], g["count"]) for g in m["errors"]] == [
        ("trigger_test_error", 129, None, 2), ("ext4_find_entry", 7, None, 1), ("trigger_test_error", 129, 28, 1)]
    assert m["enospc"]["count"] == 1 and len(m["unmounts"]) == 1
    h = fsev("report", jpath)
    assert h.returncode == 0
    for needle in ("trigger_test_error:129", "ext4_find_entry:7", "ENOSPC: 1", "9 events lost", "unmounts",
                   "recording 1 (record)", "ext4_error: tracepoint"):
        assert needle in h.stdout, needle


def test_report_btrfs_errors_aborts_checksums_and_device_counters(jpath):
    from fsev.events import Event, EventClass, EventType

    def btrfs(i, type_, **kw):
        extra = kw.pop("extra", {})
        ev = Event(seq=i, ts_ns=i, wall_time=1_700_000_000.0 + i, cls=EventClass.ERR, type=type_, rung="kernel_log",
                   dev="0:55", mount_point="/mnt/b", fs_type="btrfs", source="/dev/loop3", **kw)
        ev.extra.update(extra)
        return ev

    evs = [btrfs(1, EventType.FS_ERROR, inode=257, comm="kworker/u8:1", extra={"message": "csum failed", "root": 5}),
           btrfs(2, EventType.FS_ERROR, inode=258, extra={"message": "csum failed", "root": 5}),
           btrfs(3, EventType.FS_ERROR, function="__btrfs_run_delayed_items", line=1181, errno=5,
                 extra={"transaction_abort": True, "message": "IO failure"}),
           btrfs(4, EventType.DEVICE_ERRORS, extra={"counters": {"corruption_errs": 2}, "totals": {
               "corruption_errs": 7, "write_io_errs": 0}, "devid": 1, "device": "/dev/loop3"}),
           btrfs(5, EventType.DEVICE_ERRORS, extra={"counters": {"write_io_errs": 1, "corruption_errs": 1}, "totals": {
               "corruption_errs": 8, "write_io_errs": 1}, "devid": 1, "device": "/dev/loop3"})]
    write_journal(jpath, evs)
    rep = json.loads(fsev("report", jpath, "--json").stdout)
    (m,) = rep["mounts"]
    assert [(g["function"], g["message"], g["count"], g["transaction_aborts"]) for g in m["errors"]] == [
        (None, "csum failed", 2, 0), ("__btrfs_run_delayed_items", None, 1, 1)]
    (d,) = m["device_errors"].values()
    assert d["increases"] == {"corruption_errs": 3, "write_io_errs": 1} and d["totals"]["corruption_errs"] == 8
    assert not m["other"]  # nothing left uncounted
    h = fsev("report", jpath).stdout
    for needle in ("csum failed", "__btrfs_run_delayed_items:1181", "transaction abort", "device error counters",
                   "corruption_errs +3", "corruption_errs 8"):
        assert needle in h, needle


def test_report_threshold_timeline_unclean_stop_and_inert_strings(jpath):
    from fsev.events import Event, EventClass, EventType

    def thr(i, level, direction, avail):
        return Event(seq=i, ts_ns=i, wall_time=1_700_000_000.0 + i, cls=EventClass.THR, type=EventType.THRESHOLD,
                     rung="tracepoint", dev="0:50", mount_point="/mnt/t", fs_type="tmpfs", pid=77, tgid=77,
                     comm="dd", avail_blocks=avail, level=level, level_blocks=1000 if level == "L1" else 500,
                     direction=direction)

    evs = [thr(1, "L1", "down", 990), thr(2, "L2", "down", 480), thr(3, "L2", "up", 600), thr(4, "L1", "up", 1200),
           fs_error(5, mount="/mnt/[red]x[/red]\x1b[2J", comm="[blink]c")]
    write_journal(jpath, evs, close=False)
    rep = json.loads(fsev("report", jpath, "--json").stdout)
    (t,) = [m for m in rep["mounts"] if m["mount_point"] == "/mnt/t"]
    assert [(x["level"], x["direction"], x["avail_blocks"], x["comm"]) for x in t["thresholds"]] == [
        ("L1", "down", 990, "dd"), ("L2", "down", 480, "dd"), ("L2", "up", 600, "dd"), ("L1", "up", 1200, "dd")]
    assert rep["drops"]["unclean_stops"] == [1] and rep["recordings"][0]["clean_stop"] is False
    h = fsev("report", jpath).stdout
    assert "threshold crossings" in h and "ended without a clean stop" in h
    assert "\x1b" not in h and "[red]x[/red]\\x1b[2J" in h and "[blink]c" in h  # shown, not interpreted


# -- bad input: one line, exit 2, nothing overwritten ---------------------------

def _bad(path: str, needle: str, *extra: str) -> None:
    before = digest(path) if os.path.isfile(path) else None
    for args in (["replay", path, *extra], ["replay", path, "--consumer", "c"], ["report", path]):
        assert needle in one_line_error(fsev(*args)), args
    if before is not None:
        assert digest(path) == before
        assert not os.path.exists(path + "-wal") and not os.path.exists(path + "-shm")


def test_cli_bad_files(jpath, tmp_path):
    _bad(str(tmp_path / "missing.fsev"), "no such journal")
    open(jpath, "w").write("not a journal\n" * 50)
    _bad(jpath, "not an fsev journal")
    open(jpath, "w").close()
    _bad(jpath, "empty file")


def test_cli_newer_version(jpath):
    write_journal(jpath, _events(3))
    c = sqlite3.connect(jpath)
    c.execute(f"PRAGMA user_version={FORMAT_VERSION + 5}")
    c.commit()
    c.close()
    _bad(jpath, "is newer than this fsev reads")


def test_cli_truncated_and_corrupted(jpath):
    write_journal(jpath, _events(3000))
    with open(jpath, "r+b") as f:
        f.truncate(os.path.getsize(jpath) // 2)
    _bad(jpath, "corrupted")
    with open(jpath, "r+b") as f:
        f.truncate(60)
    _bad(jpath, "truncated")
