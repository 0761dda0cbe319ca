"""Recording real kernel events (root): record/replay against trace, clean stops,
kill -9 in a flood, and bad journal paths. Mounts, loop devices and processes
are cleaned up by the kernel_env fixtures and FsevProc, by PID, even on failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import pytest
from support.journal_data import FsevProc, digest, fs_error, fsev, one_line_error, write_journal

from fsev.journal.store import FORMAT_VERSION, Journal
from fsev.journal.writer import MAX_UNCOMMITTED
from fsev.kernel.records import RECORD_SIZE
from fsev.session.trace import LOSS_CHECK_S
from fsev.testing.kernel_rig import Ext4, ext4, fsev_prog_ids, live_prog_ids, run, tmpfs

pytestmark = pytest.mark.root

RINGBUF_PAGES = 256  # fsev's default
RING_CAPACITY = RINGBUF_PAGES * 4096 // (RECORD_SIZE + 8)  # records the kernel can hold for fsev


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="fsev-journal-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _scenario(corrupt: Ext4, fs: Ext4, t: str) -> subprocess.Popen:
    """One real error in htree_dirblock_to_tree, three through trigger_fs_error, one unmount."""
    reader = subprocess.Popen(["ls", os.path.join(corrupt.mount_point, "d")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reader.wait()
    fs.trigger_errors(3)
    run("umount", t)
    return reader


def _replay_json(path: str) -> list[str]:
    p = fsev("replay", path, "--json")
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def _wait(pred, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)


def test_replay_json_is_byte_for_byte_what_trace_json_printed_while_recording(workdir):
    """Same session: `trace --json --record J` prints lines; `replay --json J` must print the same."""
    j = os.path.join(workdir, "t.fsev")
    with ext4(corrupt_dir=True) as bad, ext4() as fs, tmpfs() as t:
        with FsevProc("trace", "--json", "--record", j, "--mount", bad.mount_point, "--mount", fs.mount_point,
                      "--mount", t) as tr:
            tr.wait_attached()
            reader = _scenario(bad, fs, t)
            _wait(lambda: len(tr.stdout_lines) >= 5)
            time.sleep(0.3)
            assert tr.stop(signal.SIGINT) == 0
    printed = [l.rstrip("\n") for l in tr.stdout_lines]
    evs = [json.loads(l) for l in printed]
    assert [(e["type"], e.get("function")) for e in evs] == [
        ("fs_error", "htree_dirblock_to_tree")] + [("fs_error", "trigger_test_error")] * 3 + [("umount", None)]
    assert evs[0]["pid"] == reader.pid and evs[4]["mount_point"] == t
    assert _replay_json(j) == printed
    with Journal.open(j) as jr:
        (rec,) = jr.recordings()
    assert rec.command == "trace" and rec.clean
    assert rec.options["mounts"] == [bad.mount_point, fs.mount_point, t]
    from fsev.points.registry import ProbePoint

    points = {p.value for p in ProbePoint}
    rungs = {line.split(": ")[1]: line.split(": ")[2].split()[0].rstrip(";") for line in tr.stderr_lines
             if line.count(": ") >= 2 and line.split(": ")[1] in points}
    assert {p["point"]: p["kind"] for p in rec.plan} == rungs


def test_record_and_trace_side_by_side_see_the_same_events(workdir):
    """Two fsev processes watch one scenario: `record` and `trace --json`. Every field of every event
    agrees except ts_ns and wall_time: each process's BPF program stamps its own copy of the event."""
    j = os.path.join(workdir, "r.fsev")
    with ext4(corrupt_dir=True) as bad, ext4() as fs, tmpfs() as t:
        mounts = ["--mount", bad.mount_point, "--mount", fs.mount_point, "--mount", t]
        with FsevProc("record", "-o", j, *mounts) as rec, FsevProc("trace", "--json", *mounts) as tr:
            rec.wait_attached()
            tr.wait_attached()
            _scenario(bad, fs, t)
            _wait(lambda: len(tr.stdout_lines) >= 5)
            time.sleep(0.3)
            assert tr.stop() == 0
            assert rec.stop(signal.SIGINT) == 0
    assert rec.stdout_lines == []  # record shows nothing; the journal has it all
    traced = [json.loads(l) for l in tr.stdout_lines]
    replayed = [json.loads(l) for l in _replay_json(j)]
    # Two processes, two programs: the same events in the same order. Where
    # errno came from (fanotify or the superblock) may differ, and so may
    # whether fanotify merged it (errno_merged), since fanotify merges errors
    # queued for one reader; its value may not.
    strip = lambda e: {k: v for k, v in e.items()  # noqa: E731
                       if k not in ("ts_ns", "wall_time", "errno_merged") and not k.endswith("_source")}
    assert len(traced) == 5
    assert [strip(e) for e in replayed] == [strip(e) for e in traced]
    assert all(e.get("errno") for e in traced if e["type"] == "fs_error")
    assert [e["seq"] for e in replayed] == [e["seq"] for e in traced] == [1, 2, 3, 4, 5]
    assert all(abs(r["wall_time"] - t["wall_time"]) < 0.5 for r, t in zip(replayed, traced))
    assert any("recorded 5 events" in l for l in rec.stderr_lines), rec.stderr_lines


def test_top_from_a_journal_shows_what_was_recorded(workdir):
    """`fsev top --from J --once` after a real recording: the screen of the incident."""
    j = os.path.join(workdir, "incident.fsev")
    with ext4(corrupt_dir=True) as bad, ext4() as fs, tmpfs() as t:
        with FsevProc("record", "-o", j, "--mount", bad.mount_point, "--mount", fs.mount_point,
                      "--mount", t) as rec:
            rec.wait_attached()
            _scenario(bad, fs, t)
            _wait(lambda: any("recorded" in l for l in rec.stderr_lines) or len(_replay_json(j)) >= 5)
            assert rec.stop(signal.SIGINT) == 0
        # the mounts are still there; what the screen shows must come from the journal
        p = fsev("top", "--from", j, "--once", env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "events 5" in lines[0] and "review of incident.fsev" in lines[0]
    rows = {l.split()[0]: l for l in lines if l.strip().startswith("/tmp/fsev-ext4-")}
    assert set(rows) == {bad.mount_point, fs.mount_point}  # the unmounted tmpfs has no row
    assert "htree_dirblock_to_tree" in rows[bad.mount_point]
    assert "trigger_test_error" in rows[fs.mount_point]
    feed = [l for l in lines if re.match(r"\s*\d\d:\d\d:\d\d\.\d{3} ", l)]
    assert len(feed) == 5 and "umount" in feed[0] and "htree_dirblock_to_tree" in feed[-1]  # newest first


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_recorder_with_a_final_commit(workdir, sig):
    j = os.path.join(workdir, "s.fsev")
    n = 3000
    with ext4() as fs:
        with FsevProc("record", "-o", j, "--mount", fs.mount_point) as rec:
            rec.wait_attached()
            ids = fsev_prog_ids(rec.proc.pid)
            fs.trigger_errors(n)
            # Stop at once: the last events are still in the committer's batch and must not be lost.
            assert rec.stop(sig) == 0
        assert not (ids & live_prog_ids()), "fsev programs still loaded after the recorder stopped"
    with Journal.open(j) as jr:
        (r,) = jr.recordings()
        evs = [x.json() for x in jr.records()]
    assert r.clean and r.stop_reason == "stopped"
    delivered = sum(1 for e in evs if e["type"] == "fs_error")
    lost = sum(e["lost"] for e in evs if e["type"] == "loss")
    assert delivered + lost == n, (delivered, lost)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert r.events == len(evs)


@pytest.mark.parametrize("kill_after", [0.6, 1.3, 2.1])
def test_kill_9_in_a_flood_leaves_a_whole_journal_missing_only_the_documented_window(workdir, kill_after):
    """kill -9 while ~20 000 ext4 errors/s arrive. Afterwards the journal opens and passes its
    checks, holds a gap-free prefix of the stream (no partial record), keeps everything a reader
    saw committed before the kill, and misses no more than the documented window
    (docs/journal.md): the recorder's uncommitted events (≤ MAX_UNCOMMITTED), what the kernel
    still held for it (≤ one ring buffer, plus one being decoded), and drops not yet reported."""
    j = os.path.join(workdir, "k.fsev")
    rate = 20_000
    with ext4() as fs:
        raised = [0]
        marks: list[tuple[float, int]] = []  # (monotonic, errors raised so far)
        stop = threading.Event()

        def flood() -> None:
            t0 = time.monotonic()
            with open(f"/sys/fs/ext4/{fs.name}/trigger_fs_error", "w") as f:
                while not stop.is_set():
                    for _ in range(100):
                        f.write("flood\n")
                        f.flush()
                    raised[0] += 100
                    marks.append((time.monotonic(), raised[0]))
                    ahead = raised[0] / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

        with FsevProc("record", "-o", j, "--mount", fs.mount_point) as rec:
            rec.wait_attached()
            writer = threading.Thread(target=flood)
            writer.start()
            try:
                time.sleep(kill_after)
                with Journal.open(j, check=False, live=True) as peek:
                    seen_committed = peek.last_id()
                before = raised[0]
                os.kill(rec.proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                after = raised[0]
                assert rec.proc.wait(10) == -signal.SIGKILL
            finally:
                stop.set()
                writer.join()
    with Journal.open(j) as jr:  # opens, quick_check passes
        (r,) = jr.recordings()
        evs = [x.json() for x in jr.records()]  # every CRC checks out
    assert not r.clean and r.stopped_at is None
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "a hole or a partial batch"
    assert len(evs) >= seen_committed > 0, "an event committed before the kill is gone"
    delivered = sum(1 for e in evs if e["type"] == "fs_error")
    lost = sum(e["lost"] for e in evs if e["type"] == "loss")
    missing = after - delivered - lost
    window = MAX_UNCOMMITTED + 2 * RING_CAPACITY + int(rate * LOSS_CHECK_S)
    # The newest surviving event was raised this long before the kill (one writer: in order).
    newest = next((t for t, c in marks if c >= delivered + lost), killed_at)
    print(f"\nflood {before} raised before the kill; journal {delivered} + {lost} reported lost; "
          f"missing {missing} (documented bound {window}); newest survivor {killed_at - newest:.3f}s before the kill")
    assert 0 <= missing <= window
    # In time: one batch interval, one commit, and what the ring buffer held (≤ RING_CAPACITY / rate).
    assert killed_at - newest <= 1.0
    assert delivered > before // 2, "the recorder did not keep up with a modest flood"


# -- bad paths: one line, exit 2, nothing overwritten ---------------------------

def test_record_refuses_an_existing_file_that_is_not_a_journal(workdir):
    with tmpfs() as t:
        notes = os.path.join(workdir, "notes.txt")
        with open(notes, "w") as f:
            f.write("do not lose me\n")
        before = digest(notes)
        assert "not an fsev journal" in one_line_error(fsev("record", "-o", notes, "--mount", t, "-d", "0.2"))
        assert digest(notes) == before


def test_record_refuses_a_newer_journal_and_appends_to_a_current_one(workdir):
    j = os.path.join(workdir, "v.fsev")
    write_journal(j, [fs_error(1)])
    with tmpfs() as t:
        p = fsev("record", "-o", j, "--mount", t, "-d", "0.2")
        assert p.returncode == 0, p.stderr
        with Journal.open(j) as jr:
            assert [r.command for r in jr.recordings()] == ["record", "record"]
        import sqlite3

        c = sqlite3.connect(j)
        c.execute(f"PRAGMA user_version={FORMAT_VERSION + 1}")
        c.commit()
        c.close()
        before = digest(j)
        assert "newer" in one_line_error(fsev("record", "-o", j, "--mount", t, "-d", "0.2"))
        assert digest(j) == before


def test_record_into_a_read_only_mount_or_immutable_directory(workdir):
    with tmpfs() as ro:
        run("mount", "-o", "remount,ro", ro)
        msg = one_line_error(fsev("record", "-o", os.path.join(ro, "j.fsev"), "--mount", ro, "-d", "0.2"))
        assert "Read-only file system" in msg and os.listdir(ro) == []
    locked = os.path.join(workdir, "locked")
    os.mkdir(locked)
    run("chattr", "+i", locked)
    try:
        with tmpfs() as t:
            msg = one_line_error(fsev("record", "-o", os.path.join(locked, "j.fsev"), "--mount", t, "-d", "0.2"))
        assert "Operation not permitted" in msg
    finally:
        run("chattr", "-i", locked)


def test_a_journal_is_private_to_root(workdir):
    """0600: another user can neither replay nor report it; a read-only user cannot consume."""
    j = os.path.join(workdir, "p.fsev")
    write_journal(j, [fs_error(1)])
    os.chmod(workdir, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    from support.journal_data import FSEV

    for args in (["replay", j], ["report", j]):
        p = subprocess.run(nobody + [FSEV, *args], capture_output=True, text=True)
        assert "Permission denied" in one_line_error(p)
    os.chmod(j, 0o644)  # readable, not writable: replay works, a consumer cannot acknowledge
    p = subprocess.run(nobody + [FSEV, "replay", j, "--json"], capture_output=True, text=True)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1
    before = digest(j)
    p = subprocess.run(nobody + [FSEV, "replay", j, "--consumer", "c"], capture_output=True, text=True)
    assert "Permission denied" in one_line_error(p)
    assert digest(j) == before


def test_record_needs_root_and_then_writes_nothing(workdir):
    from support.journal_data import FSEV

    j = os.path.join(workdir, "n.fsev")
    os.chmod(workdir, 0o777)
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", FSEV, "record", "-o", j,
                        "-d", "0.2"], capture_output=True, text=True)
    assert "needs root" in one_line_error(p)
    assert not os.path.exists(j)


def test_record_default_path_is_a_private_file_under_var_lib_fsev():
    from fsev.cli.record_cmd import DEFAULT_DIR

    existed = os.path.isdir(DEFAULT_DIR)
    made = None
    try:
        with tmpfs() as t:
            p = fsev("record", "--mount", t, "-d", "0.3")
        assert p.returncode == 0, p.stderr
        m = re.search(r"recorded 0 events .* to (\S+), recording 1", p.stderr)
        assert m, p.stderr
        made = m.group(1)
        assert os.path.dirname(made) == DEFAULT_DIR
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?\.fsev", os.path.basename(made))
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o600
        if not existed:
            assert stat.S_IMODE(os.stat(DEFAULT_DIR).st_mode) == 0o700
        with Journal.open(made) as jr:
            assert [r.command for r in jr.recordings()] == ["record"]
    finally:
        if made:
            for f in (made, made + "-wal", made + "-shm"):
                if os.path.exists(f):
                    os.unlink(f)
        if not existed and os.path.isdir(DEFAULT_DIR) and not os.listdir(DEFAULT_DIR):
            os.rmdir(DEFAULT_DIR)


def test_top_record(workdir):
    """`fsev top --record J` on a real terminal (a pty): the journal gets the events."""
    import pty

    from fsev.testing.kernel_rig import FSEV, fsev_prog_ids

    j = os.path.join(workdir, "top.fsev")
    with tmpfs() as t:
        master, slave = pty.openpty()
        top = subprocess.Popen([FSEV, "top", "--record", j, "--mount", t], stdin=slave, stdout=slave,
                               stderr=slave, env={**os.environ, "TERM": "xterm", "COLUMNS": "160", "LINES": "40"})
        os.close(slave)
        drain = threading.Thread(target=lambda: _drain_fd(master), daemon=True)
        drain.start()
        try:
            _wait(lambda: bool(fsev_prog_ids(top.pid)))  # loaded; attaching follows at once
            time.sleep(0.5)
            run("umount", t)

            def committed() -> int:
                with Journal.open(j, check=False, live=True) as jr:
                    return jr.last_id()

            _wait(lambda: committed() >= 1)  # the journal, not top's screen, is what this test is about
            top.send_signal(signal.SIGTERM)
            assert top.wait(30) == 0
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
            os.close(master)
    with Journal.open(j) as jr:
        (r,) = jr.recordings()
        (ev,) = [x.json() for x in jr.records()]
    assert r.command == "top" and ev["type"] == "umount" and ev["mount_point"] == t


def _drain_fd(fd: int) -> None:
    """Read a pty's output so the program writing to it never blocks."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
