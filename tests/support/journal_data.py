"""Test material for journals: synthetic events, journals written through the real writer,
and the installed `fsev` run as a subprocess (killed only by its PID)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from fsev.events import Event, EventClass, EventType
from fsev.journal.store import Journal
from fsev.journal.writer import JournalWriter

FSEV = str(Path(sys.executable).parent / "fsev")

PLAN = [{"point": "ext4_error", "kind": "tracepoint", "targets": ["ext4:ext4_error"], "gives": "dev, function, line",
         "misses": "errno", "skipped": ["kprobe: none here"]}]


def fs_error(i: int, mount: str = "/mnt/a", wall: float = 1_700_000_000.0, **kw) -> Event:
    base = dict(
        seq=i, ts_ns=1_000_000_000 + i * 1000, wall_time=wall + i / 1000, cls=EventClass.ERR,
        type=EventType.FS_ERROR, rung="tracepoint", dev="7:0", mount_point=mount, fs_type="ext4",
        source="/dev/loop0", mnt_id=40, pid=100 + i % 7, tgid=100 + i % 7, comm="writer",
        function="trigger_test_error", line=129,
    )
    base.update(kw)
    return Event(**base)


def loss(i: int, lost: int, total: int, wall: float = 1_700_000_000.0) -> Event:
    return Event(seq=i, ts_ns=1_000_000_000 + i * 1000, wall_time=wall + i / 1000, cls=EventClass.WARN,
                 type=EventType.LOSS, rung="ringbuf", lost=lost, lost_total=total, since_wall_time=wall)


def umount(i: int, mount: str = "/mnt/t", wall: float = 1_700_000_000.0, **kw) -> Event:
    base = dict(seq=i, ts_ns=1_000_000_000 + i * 1000, wall_time=wall + i / 1000, cls=EventClass.INFO,
                type=EventType.UMOUNT, rung="tracepoint", dev="0:50", mount_point=mount, fs_type="tmpfs",
                source="tmpfs", pid=9, tgid=9, comm="umount", path=mount, lazy=False)
    base.update(kw)
    return Event(**base)


def write_journal(path: str, events: list[Event], command: str = "record", close: bool = True,
                  options: dict | None = None) -> int:
    """Write one recording of `events` through JournalWriter; returns its id."""
    j = Journal.open(path, write=True, create=True)
    rec = j.begin_recording(command, PLAN, options or {"mounts": ["/mnt/a"]})
    w = JournalWriter(j, rec)
    for ev in events:
        w.append(ev)
    w.close()
    if close:
        j.end_recording(rec, "stopped")
    j.close()
    return rec


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fsev(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([FSEV, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """Assert the fsev convention for bad input: exit 2, one line on stderr, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsev: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


@contextlib.contextmanager
def popen(args: list[str], **kw) -> Iterator[subprocess.Popen]:
    """A subprocess that is killed (by its PID) and reaped whatever happens."""
    p = subprocess.Popen(args, **kw)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(30)


class FsevProc:
    """A running fsev command (record, trace, top), its output collected by reader threads.
    Ended by its PID only; __exit__ kills it if the test did not stop it."""

    def __init__(self, *args: str) -> None:
        import threading

        self.args = list(args)
        self.proc = subprocess.Popen([FSEV, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._threads = [
            threading.Thread(target=lambda: self.stdout_lines.extend(self.proc.stdout), daemon=True),
            threading.Thread(target=lambda: self.stderr_lines.extend(self.proc.stderr), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def wait_attached(self, timeout: float = 60) -> None:
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any("attached in" in line for line in self.stderr_lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"fsev {self.args[0]} did not attach:\n" + "".join(self.stderr_lines))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        rc = self.proc.wait(timeout)
        self.join()
        return rc

    def join(self) -> None:
        for t in self._threads:
            t.join(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def __enter__(self) -> "FsevProc":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.join()


def write_format1_journal(path: str, segments: list[list[Event]]) -> None:
    """A journal exactly as fsev wrote it before format 2 (no times, sizes, trimmed or
    consumer_loss): format 1's schema, one segment per list, as that fsev's writer committed them."""
    import json
    import zlib

    from fsev.journal.schema import APPLICATION_ID, SCHEMA_1, statements
    from fsev.journal.store import event_body, pack

    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("BEGIN")
    for stmt in statements(SCHEMA_1):
        c.execute(stmt)
    c.execute(f"PRAGMA application_id={APPLICATION_ID}")
    c.execute("PRAGMA user_version=1")
    c.execute("INSERT INTO recording (command, host, kernel, kernel_build, fsev_version, plan, options, started_at,"
              " last_commit_at, stopped_at, stop_reason, events) VALUES ('record', 'h', 'k', 'kb', '0.1', ?, '{}',"
              " ?, ?, ?, 'stopped', ?)",
              (json.dumps(PLAN), segments[0][0].wall_time, segments[-1][-1].wall_time, segments[-1][-1].wall_time,
               sum(map(len, segments))))
    first = 1
    for seg in segments:
        text = pack([event_body(e) for e in seg])
        c.execute("INSERT INTO segment (recording, first, count, crc, events) VALUES (1, ?, ?, ?, ?)",
                  (first, len(seg), zlib.crc32(text.encode()), text))
        first += len(seg)
    c.execute("COMMIT")
    c.close()
    os.chmod(path, 0o600)
