"""The installed `fsev replay` and `fsev report` with time windows, without FILE (the flight
recorder's journal), and a consumer told of the events retention's hard cap took from it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support.journal_data import fs_error, fsev, one_line_error, umount, write_journal

from fsev.journal.retention import Retention, trim
from fsev.journal.schema import DEFAULT_FLIGHT_JOURNAL
from fsev.journal.store import Journal, event_body

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def jpath(tmp_path):
    return str(tmp_path / "j.fsev")


def hourly(n: int) -> list:
    """Event k (1-based) k ms after T0 + (k-1) hours."""
    return [fs_error(k, wall=T0 + (k - 1) * 3600) for k in range(1, n + 1)]


def write_segments(path: str, events: list, per: int) -> None:
    """Through the real writer, committed in segments of exactly `per` events."""
    from support.journal_data import PLAN

    from fsev.journal.writer import JournalWriter

    j = Journal.open(path, write=True, create=True)
    rec = j.begin_recording("record", PLAN, {})
    w = JournalWriter(j, rec, batch=per, max_uncommitted=per, interval=60)
    for ev in events:
        w.append(ev)
    w.close()
    j.end_recording(rec, "stopped")
    j.close()


def json_lines(p) -> list[dict]:
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


# -- windows -------------------------------------------------------------------------

def test_replay_prints_exactly_the_events_of_the_window(jpath):
    evs = hourly(10)
    write_journal(jpath, evs)
    env = {**os.environ, "TZ": "UTC"}
    got = json_lines(fsev("replay", jpath, "--json", "--since", str(T0 + 2 * 3600), "--until",
                          str(T0 + 5 * 3600), env=env))
    assert [d["seq"] for d in got] == [3, 4, 5]  # since inclusive, until exclusive
    assert fsev("replay", jpath, "--json", "--since", str(T0 + 2 * 3600), env=env).stdout.splitlines() == [
        event_body(e) for e in evs[2:]]
    # Local clock times and ISO forms: event 3 is at 2023-11-15 00:13:20.003 UTC.
    got = json_lines(fsev("replay", jpath, "--json", "--since", "2023-11-15", "--until", "2023-11-15T02:00Z",
                          env=env))
    assert [d["seq"] for d in got] == [3, 4]
    human = fsev("replay", jpath, "--since", "2023-11-15 01:00", "--until", "2023-11-15 02:00", env=env)
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 1 and "01:13:20.004" in human.stdout


def test_an_empty_window_says_so_on_stderr(jpath):
    write_journal(jpath, hourly(3))
    p = fsev("replay", jpath, "--json", "--since", str(T0 + 10**6))
    assert p.returncode == 0 and p.stdout == "" and "no events from" in p.stderr


def test_report_covers_only_the_window(jpath):
    evs = hourly(6) + [umount(7, wall=T0 + 3 * 3600 + 1)]
    write_journal(jpath, evs)
    rep = json.loads(fsev("report", jpath, "--json", "--since", str(T0 + 3600), "--until",
                          str(T0 + 4 * 3600)).stdout)
    (mount_a,) = [m for m in rep["mounts"] if m["mount_point"] == "/mnt/a"]
    assert mount_a["events"] == 3 and mount_a["errors"][0]["count"] == 3
    assert [m["mount_point"] for m in rep["mounts"]] == ["/mnt/a", "/mnt/t"]
    assert rep["window"] == {"since": T0 + 3600, "until": T0 + 4 * 3600}
    assert rep["span"]["start"] >= T0 + 3600 and rep["span"]["end"] <= T0 + 4 * 3600
    full = json.loads(fsev("report", jpath, "--json").stdout)
    assert full["window"] is None and full["mounts"][0]["events"] == 6
    human = fsev("report", jpath, "--since", str(T0 + 3600), "--until", str(T0 + 4 * 3600))
    assert human.returncode == 0 and "window:" in human.stdout


@pytest.mark.parametrize("args, needle", [
    (["--since", "yesterday-ish"], "--since: cannot read 'yesterday-ish' as a time"),
    (["--until", "25:61"], "--until: cannot read '25:61'"),
    (["--since", "-1h", "--until", "-2h"], "is not after --since"),
])
@pytest.mark.parametrize("command", ["replay", "report"])
def test_a_bad_time_is_one_line_and_exit_2(jpath, command, args, needle):
    write_journal(jpath, hourly(2))
    assert needle in one_line_error(fsev(command, jpath, *args))


def test_a_window_does_not_go_with_a_consumer_nor_until_with_follow(jpath):
    write_journal(jpath, hourly(2))
    assert "do not go with --consumer" in one_line_error(fsev("replay", jpath, "--consumer", "x", "--since", "-1h"))
    assert "--until does not go with --follow" in one_line_error(fsev("replay", jpath, "-f", "--until", "-1h"))


# -- without FILE: the flight recorder's journal ------------------------------------------

# The CLI as installed, with the default journal pointed at a test's path.
WITH_DEFAULT = ("import sys, fsev.journal.schema as s; s.DEFAULT_FLIGHT_JOURNAL = sys.argv[1];"
                " from fsev.cli.main import run; sys.argv = ['fsev'] + sys.argv[2:]; run()")


def fsev_default(default: str, *args: str):
    import subprocess

    return subprocess.run([sys.executable, "-c", WITH_DEFAULT, default, *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_without_file_replay_and_report_read_the_flight_journal(tmp_path):
    flight = str(tmp_path / "flight.fsev")
    evs = hourly(3)
    write_journal(flight, evs)
    p = fsev_default(flight, "replay", "--json")
    assert p.returncode == 0 and p.stdout.splitlines() == [event_body(e) for e in evs], p.stderr
    rep = json.loads(fsev_default(flight, "report", "--json").stdout)
    assert rep["journal"] == flight and rep["mounts"][0]["events"] == 3


@pytest.mark.parametrize("command", ["replay", "report"])
def test_without_file_and_no_flight_journal_one_line_says_what_to_do(tmp_path, command):
    missing = str(tmp_path / "flight.fsev")
    line = one_line_error(fsev_default(missing, command))
    assert line == f"fsev: no journal at {missing}: is `fsev serve` running? (or name a FILE)"


@pytest.mark.skipif(os.path.lexists(DEFAULT_FLIGHT_JOURNAL), reason="a flight recorder runs on this machine")
def test_the_default_is_var_lib_fsev_flight_fsev():
    assert DEFAULT_FLIGHT_JOURNAL == "/var/lib/fsev/flight.fsev"
    line = one_line_error(fsev("replay", "--json"))
    assert line == "fsev: no journal at /var/lib/fsev/flight.fsev: is `fsev serve` running? (or name a FILE)"


# -- a consumer told of what the hard cap took ----------------------------------------------

def _force_out(path: str, keep_from: int) -> int:
    """Trim by the hard cap so that events before keep_from go, whoever holds them; returns the count."""
    with Journal.open(path, write=True) as j:
        keep = j.conn.execute("SELECT coalesce(sum(bytes), 0) FROM segment WHERE first >= ?",
                              (keep_from,)).fetchone()[0]
        res = trim(j, Retention(keep, 1e12, keep), T0)
        assert res.forced
        return res.through


@pytest.mark.parametrize("mode", ["stdout", "file"])
def test_a_consumer_gets_one_loss_event_then_the_first_event_left(jpath, tmp_path, mode):
    write_segments(jpath, [fs_error(i + 1, wall=T0 + i) for i in range(100)], per=10)
    out = str(tmp_path / "siem.jsonl")
    extra = ["--output", out] if mode == "file" else []

    def run() -> list[dict]:
        p = fsev("replay", jpath, "--json", "--consumer", "siem", *extra)
        assert p.returncode == 0, p.stderr
        return [json.loads(x) for x in (Path(out).read_text() if mode == "file" else p.stdout).splitlines()]

    first = run()
    assert [d["seq"] for d in first] == list(range(1, 101))
    # As if it had stopped after event 25: it holds 26.. (in file mode, with the file's size then).
    with Journal.open(jpath, write=True) as jw:
        if mode == "file":
            assert jw.consumer("siem").output == os.path.realpath(out)
            cut = sum(len(x) + 1 for x in Path(out).read_text().splitlines()[:25])
            jw.ack("siem", 25, os.path.realpath(out), cut)
        else:
            jw.ack("siem", 25)
    through = _force_out(jpath, keep_from=61)
    assert through == 60
    second = run()
    if mode == "file":
        second = second[25:]  # the file keeps what was acknowledged, then this run's lines
    loss, *rest = second
    assert {k: loss[k] for k in ("class", "type", "rung", "lost", "lost_total", "consumer", "first_event",
                                 "last_event")} == {
        "class": "warn", "type": "loss", "rung": "journal", "lost": 35, "lost_total": 35, "consumer": "siem",
        "first_event": 26, "last_event": 60}
    assert [d["seq"] for d in rest] == list(range(61, 101))
    # Told once: the next run has nothing new.
    again = run()
    assert (again[len(second) + 25:] if mode == "file" else again) == []
    with Journal.open(jpath) as jr:
        assert jr.consumer_losses("siem") == [] and jr.consumer("siem").acked == 100


def test_the_human_form_of_a_journal_loss_names_the_consumer_and_the_events(jpath):
    write_segments(jpath, [fs_error(i + 1, wall=T0 + i) for i in range(30)], per=5)
    with Journal.open(jpath, write=True) as j:
        j.ack("ops", 0)
    through = _force_out(jpath, keep_from=21)
    assert through == 20
    p = fsev("replay", jpath, "--consumer", "ops")
    assert p.returncode == 0, p.stderr
    head, *rest = p.stdout.splitlines()
    assert "loss" in head and f"{through} events lost" in head and "'ops'" in head
    assert f"events 1-{through}" in head and "[journal]" in head and "ring buffer" not in head
    assert len(rest) == 30 - through
    assert f"lost events 1-{through}" in p.stderr


def test_the_event_schema_documents_the_journal_loss():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    loss = doc[doc.index("## `loss`"):]
    loss = loss[: loss.index("\n## ", 1)]
    for key in ("`journal`", "`consumer`", "`first_event`", "`last_event`"):
        assert key in loss, key


def test_a_following_consumer_is_told_of_a_trim_that_ran_while_it_read(jpath):
    import signal
    import subprocess
    import threading
    import time

    from support.journal_data import FSEV, popen

    write_segments(jpath, [fs_error(i + 1, wall=T0 + i) for i in range(100)], per=10)
    with popen([FSEV, "replay", jpath, "--json", "--consumer", "tail", "--follow"], stdout=subprocess.PIPE,
               stderr=subprocess.DEVNULL, text=True) as p:
        assert p.stdout is not None
        lines: list[dict] = []
        reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in p.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while len(lines) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(lines) == 100
        os.kill(p.pid, signal.SIGSTOP)  # it reads nothing while events come and the hard cap trims
        try:
            with Journal.open(jpath, write=True) as j:
                rec = j.begin_recording("record", [], {})
                for s in range(10):
                    j.commit_segment(rec, [event_body(fs_error(101 + s * 10 + i, wall=T0 + 100 + s * 10 + i))
                                           for i in range(10)], [])
            assert _force_out(jpath, keep_from=151) == 150
        finally:
            os.kill(p.pid, signal.SIGCONT)
        while len(lines) < 151 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(30) == 0
        reader.join(10)
    loss, *rest = lines[100:]
    assert (loss["rung"], loss["lost"], loss["first_event"], loss["last_event"]) == ("journal", 50, 101, 150)
    assert [d["seq"] for d in rest] == list(range(151, 201))
