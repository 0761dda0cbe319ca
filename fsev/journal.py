"""The journal: an fsev recording on disk, crash-safe, readable while written.

Why SQLite (the standard library's sqlite3) in WAL mode rather than a
hand-made append-only log:
- a commit is atomic: after a crash or `kill -9` the file holds whole
  transactions, never part of one, and opens without a repair step;
- WAL lets `replay --follow` and `report` read while `record` writes, and
  neither blocks the recorder;
- a consumer's acknowledgement is one row updated in its own transaction,
  so "done up to record X" is atomic without any protocol of our own.
SQLite pages carry no checksum, so every event row carries a CRC-32 of its
body, checked on every read: a damaged record is reported, never replayed.

Format (docs/journal.md): PRAGMA application_id identifies an fsev journal,
PRAGMA user_version is the format version. A record is one row of `event`;
its id (the rowid) is the record number that consumers acknowledge.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import stat
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

from . import __version__
from .errors import FsevError
from .events import Event, EventType

FORMAT_VERSION = 1
APPLICATION_ID = 0x66736576  # "fsev"
SQLITE_MAGIC = b"SQLite format 3\x00"

# A batch is committed when it holds BATCH_EVENTS events or its oldest event
# has waited BATCH_INTERVAL_S, whichever comes first. At most MAX_UNCOMMITTED
# events are ever held in memory: beyond that, append() waits for the commit,
# so a flood backs up into the kernel ring buffer, whose drops are counted.
# These bound what a crash can lose (docs/journal.md, "Loss window").
BATCH_INTERVAL_S = 0.1
BATCH_EVENTS = 1000
MAX_UNCOMMITTED = 10_000

SCHEMA = """
CREATE TABLE recording (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,          -- record, trace or top
    host TEXT NOT NULL,
    kernel TEXT NOT NULL,           -- uname -r
    kernel_build TEXT NOT NULL,     -- uname -v
    fsev_version TEXT NOT NULL,
    plan TEXT NOT NULL,             -- JSON: the probe plan (rung per probe point, and why)
    options TEXT NOT NULL,          -- JSON: what the recorder was started with
    started_at REAL NOT NULL,
    last_commit_at REAL,            -- the newest moment known to be on disk
    stopped_at REAL,                -- NULL: the recorder never stopped cleanly (killed, crashed)
    stop_reason TEXT,
    events INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE event (
    id INTEGER PRIMARY KEY,         -- the record number consumers acknowledge
    recording INTEGER NOT NULL REFERENCES recording(id),
    seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    wall_time REAL NOT NULL,
    class TEXT NOT NULL,
    type TEXT NOT NULL,
    mount_point TEXT,
    crc INTEGER NOT NULL,           -- CRC-32 of body
    body TEXT NOT NULL              -- the event exactly as `fsev trace --json` prints it
);
CREATE TABLE loss (
    id INTEGER PRIMARY KEY,
    recording INTEGER NOT NULL REFERENCES recording(id),
    event INTEGER NOT NULL REFERENCES event(id),  -- the loss record in the event stream
    source TEXT NOT NULL,           -- where events were dropped (the rung: ringbuf)
    lost INTEGER NOT NULL,
    lost_total INTEGER,
    since_wall_time REAL,
    wall_time REAL NOT NULL
);
CREATE TABLE consumer (
    name TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,         -- the last record this consumer is done with (0: none)
    output TEXT,                    -- its output file, when it writes one (exactly-once mode)
    output_offset INTEGER,          -- that file's size right after record `acked`
    updated_at REAL NOT NULL
);
"""

_INSERT_EVENT = (
    "INSERT INTO event (recording, seq, ts_ns, wall_time, class, type, mount_point, crc, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LOSS = (
    "INSERT INTO loss (recording, event, source, lost, lost_total, since_wall_time, wall_time)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def event_body(ev: Event) -> str:
    """The JSON text of an event, byte for byte what JsonSink prints."""
    return _dumps(ev.to_json_dict())


class JournalError(FsevError):
    pass


# -- opening ---------------------------------------------------------------
def _os_error(path: str, e: OSError) -> JournalError:
    return JournalError(f"{path}: {e.strerror or e}")


def _check_file(path: str, write: bool) -> None:
    """Validate an existing file from its raw header, before SQLite touches it."""
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
    except IsADirectoryError:
        raise JournalError(f"{path}: is a directory, not an fsev journal") from None
    except OSError as e:
        raise _os_error(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(f"{path}: not a regular file, not an fsev journal")
        head = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    if not head:
        raise JournalError(f"{path}: empty file, not an fsev journal")
    if not head.startswith(SQLITE_MAGIC[: min(len(head), len(SQLITE_MAGIC))]):
        raise JournalError(f"{path}: not an fsev journal")
    if len(head) < 100:
        raise JournalError(f"{path}: truncated ({len(head)} bytes): not a readable fsev journal")
    _check_ids(path, int.from_bytes(head[68:72], "big"), int.from_bytes(head[60:64], "big"))


def _check_ids(path: str, app_id: int, version: int) -> None:
    if app_id != APPLICATION_ID:
        raise JournalError(f"{path}: an SQLite database, but not an fsev journal")
    if version > FORMAT_VERSION:
        raise JournalError(
            f"{path}: journal format version {version} is newer than this fsev reads "
            f"({FORMAT_VERSION}): use fsev {__version__} or later"
        )
    if version < 1:
        raise JournalError(f"{path}: an fsev journal without a format version: not readable")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _sqlite_error(path: str, e: sqlite3.Error) -> JournalError:
    msg = _one_line(str(e))
    if "malformed" in msg or "not a database" in msg or "decode" in msg:
        return JournalError(f"{path}: corrupted: not a readable fsev journal ({msg})")
    if "readonly" in msg or "read-only" in msg:
        return JournalError(f"{path}: cannot write to the journal ({msg})")
    if "unable to open" in msg:
        return JournalError(f"{path}: cannot open the journal (check the file and its directory: {msg})")
    if "locked" in msg or "busy" in msg:
        return JournalError(f"{path}: the journal stayed locked by another process ({msg})")
    return JournalError(f"{path}: {msg}")


def _connect(path: str, mode: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + f"?mode={mode.removesuffix('-live')}"
    if mode == "ro" and not os.path.exists(path + "-wal"):
        # Closed cleanly, nobody writing: everything is in the main file. Read it
        # as immutable so a read-only look leaves no -wal/-shm behind.
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10)
    return conn


def _create(path: str) -> None:
    """Make a new, empty journal at path, 0600, atomically: it appears complete or not at all."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise JournalError(f"{path}: directory {directory} does not exist") from None
    except OSError as e:
        raise JournalError(f"{path}: cannot create the journal: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask; SQLite gives -wal and -shm the same mode
        os.close(fd)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        try:
            os.link(tmp, path)  # never replaces an existing file, unlike rename
        except FileExistsError:
            pass  # it appeared meanwhile: the caller validates whatever is there
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except sqlite3.Error as e:
        raise _sqlite_error(path, e) from None
    except OSError as e:
        raise JournalError(f"{path}: cannot create the journal: {e.strerror or e}") from None
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


@dataclass(frozen=True)
class Recording:
    id: int
    command: str
    host: str
    kernel: str
    kernel_build: str
    fsev_version: str
    plan: list[dict[str, Any]]
    options: dict[str, Any]
    started_at: float
    last_commit_at: float | None
    stopped_at: float | None
    stop_reason: str | None
    events: int

    @property
    def clean(self) -> bool:
        return self.stopped_at is not None


@dataclass(frozen=True)
class JournalRecord:
    id: int
    recording: int
    body: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(frozen=True)
class ConsumerState:
    name: str
    acked: int = 0
    output: str | None = None
    output_offset: int | None = None


class Journal:
    """An open journal. Every sqlite3 error leaves as a one-line JournalError."""

    def __init__(self, path: str, conn: sqlite3.Connection, writable: bool) -> None:
        self.path = path
        self.conn = conn
        self.writable = writable

    @classmethod
    def open(cls, path: str, *, write: bool = False, create: bool = False, check: bool = True,
             live: bool = False) -> "Journal":
        """Open an existing journal (create=True: make it first if absent).

        check: run SQLite's quick_check, so damage is reported before any
        output rather than halfway through it. live: read-only, but see what a
        recorder commits later (replay --follow).
        """
        if create and not os.path.lexists(path):
            _create(path)
        elif not os.path.lexists(path):
            raise JournalError(f"{path}: no such journal")
        _check_file(path, write)
        try:
            conn = _connect(path, "rw" if write else "ro-live" if live else "ro")
            try:
                _check_ids(
                    path,
                    conn.execute("PRAGMA application_id").fetchone()[0],
                    conn.execute("PRAGMA user_version").fetchone()[0],
                )
                if check:
                    bad = [r[0] for r in conn.execute("PRAGMA quick_check(1)")]
                    if bad != ["ok"]:
                        why = _one_line(bad[0].replace("*** in database main ***", ""))
                        raise JournalError(f"{path}: corrupted: not a readable fsev journal ({why})")
                if write:
                    # FULL: each commit is fsynced, so it also survives an OS crash.
                    conn.execute("PRAGMA synchronous=FULL")
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            raise _sqlite_error(path, e) from None
        return cls(path, conn, write)

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------
    def recordings(self) -> list[Recording]:
        try:
            rows = self.conn.execute(
                "SELECT id, command, host, kernel, kernel_build, fsev_version, plan, options, started_at,"
                " last_commit_at, stopped_at, stop_reason, events FROM recording ORDER BY id"
            ).fetchall()
            return [
                Recording(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), *r[8:])
                for r in rows
            ]
        except (sqlite3.Error, ValueError) as e:
            raise self._read_error(e) from None

    def records(self, after: int = 0, page: int = 1000) -> Iterator[JournalRecord]:
        """Records with id > after, in order, each checked against its CRC.

        Read a page at a time, each in its own short read transaction, so a
        long replay never holds the recorder's WAL from being checkpointed.
        """
        while True:
            try:
                rows = self.conn.execute(
                    "SELECT id, recording, crc, CAST(body AS BLOB) FROM event WHERE id > ? ORDER BY id LIMIT ?",
                    (after, page),
                ).fetchall()
            except sqlite3.Error as e:
                raise self._read_error(e) from None
            if not rows:
                return
            for rid, rec, crc, raw in rows:
                if raw is None or zlib.crc32(raw) != crc:
                    raise JournalError(f"{self.path}: record {rid} is corrupted (checksum mismatch)")
                try:
                    body = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise JournalError(f"{self.path}: record {rid} is corrupted (not UTF-8)") from None
                yield JournalRecord(rid, rec, body)
            after = rows[-1][0]

    def last_id(self) -> int:
        try:
            return self.conn.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
        except sqlite3.Error as e:
            raise self._read_error(e) from None

    def losses(self) -> list[dict[str, Any]]:
        try:
            rows = self.conn.execute(
                "SELECT recording, event, source, lost, lost_total, since_wall_time, wall_time FROM loss ORDER BY id"
            ).fetchall()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        keys = ("recording", "event", "source", "lost", "lost_total", "since_wall_time", "wall_time")
        return [dict(zip(keys, r)) for r in rows]

    def _read_error(self, e: Exception) -> JournalError:
        if isinstance(e, sqlite3.Error):
            return _sqlite_error(self.path, e)
        return JournalError(f"{self.path}: corrupted: not a readable fsev journal ({e})")

    # -- consumers ---------------------------------------------------------
    def consumer(self, name: str) -> ConsumerState:
        try:
            row = self.conn.execute(
                "SELECT acked, output, output_offset FROM consumer WHERE name = ?", (name,)
            ).fetchone()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        return ConsumerState(name, *row) if row else ConsumerState(name)

    def ack(self, name: str, acked: int, output: str | None = None, output_offset: int | None = None) -> None:
        """Record, in one transaction, that consumer `name` is done with every record up to `acked`."""
        try:
            self.conn.execute(
                "INSERT INTO consumer (name, acked, output, output_offset, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET acked = excluded.acked, output = excluded.output,"
                " output_offset = excluded.output_offset, updated_at = excluded.updated_at",
                (name, acked, output, output_offset, time.time()),
            )
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None

    # -- recording ---------------------------------------------------------
    def begin_recording(self, command: str, plan: list[dict[str, Any]], options: dict[str, Any]) -> int:
        u = os.uname()
        try:
            cur = self.conn.execute(
                "INSERT INTO recording (command, host, kernel, kernel_build, fsev_version, plan, options, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (command, socket.gethostname(), u.release, u.version, __version__,
                 json.dumps(plan), json.dumps(options), time.time()),
            )
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None
        return int(cur.lastrowid)

    def end_recording(self, recording: int, reason: str) -> None:
        try:
            self.conn.execute(
                "UPDATE recording SET stopped_at = ?, stop_reason = ? WHERE id = ?", (time.time(), reason, recording)
            )
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None


class JournalWriter:
    """Appends the events of one recording, committing in batches from a thread of its own.

    append() is cheap and never touches the disk: the committer thread
    serializes and commits, so an fsync never stalls the ring-buffer reader.
    """

    def __init__(
        self, journal: Journal, recording: int, *, interval: float = BATCH_INTERVAL_S,
        batch: int = BATCH_EVENTS, max_uncommitted: int = MAX_UNCOMMITTED,
    ) -> None:
        self.journal = journal
        self.recording = recording
        self.interval = interval
        self.batch = batch
        self.max_uncommitted = max_uncommitted
        self.committed = 0
        self.commits = 0
        self._cond = threading.Condition()
        self._pending: list[Event] = []
        self._first_at = 0.0
        self._uncommitted = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fsev-journal", daemon=True)
        self._thread.start()

    def append(self, ev: Event) -> None:
        with self._cond:
            if self._error is not None:
                raise self._failure()
            if not self._pending:
                self._first_at = time.monotonic()
                self._cond.notify()
            self._pending.append(ev)
            self._uncommitted += 1
            if len(self._pending) == self.batch:
                self._cond.notify()
            while self._uncommitted >= self.max_uncommitted and self._error is None:
                self._cond.wait()

    def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        with self._cond:
            self._first_at = 0.0  # due now
            self._cond.notify()
            while self._uncommitted and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._failure()

    def close(self) -> None:
        """Commit what is pending and stop the committer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._failure()

    def _failure(self) -> JournalError:
        e = self._error
        if isinstance(e, JournalError):
            return e
        if isinstance(e, sqlite3.Error):
            return _sqlite_error(self.journal.path, e)
        return JournalError(f"{self.journal.path}: writing the journal failed: {e}")

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    while not self._closing and len(self._pending) < self.batch:
                        left = self._first_at + self.interval - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    batch, self._pending = self._pending, []
                self._commit(batch)
                with self._cond:
                    self._uncommitted -= len(batch)
                    self.committed += len(batch)
                    self.commits += 1
                    self._cond.notify_all()
        except BaseException as e:  # reported to the appending thread
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _commit(self, batch: list[Event]) -> None:
        rec = self.recording
        rows = []
        for ev in batch:
            body = _dumps(ev.to_json_dict())
            rows.append((rec, ev.seq, ev.ts_ns, ev.wall_time, ev.cls.value, ev.type.value, ev.mount_point,
                         zlib.crc32(body.encode()), body))
        conn = self.journal.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            start = 0
            for i, ev in enumerate(batch):
                if ev.type is not EventType.LOSS:
                    continue
                # A loss record also goes to the loss table, pointing at its row.
                conn.executemany(_INSERT_EVENT, rows[start:i])
                cur = conn.execute(_INSERT_EVENT, rows[i])
                conn.execute(_INSERT_LOSS, (rec, cur.lastrowid, ev.rung, ev.lost or 0, ev.lost_total,
                                            ev.since_wall_time, ev.wall_time))
                start = i + 1
            conn.executemany(_INSERT_EVENT, rows[start:])
            conn.execute(
                "UPDATE recording SET last_commit_at = ?, events = events + ? WHERE id = ?",
                (time.time(), len(batch), rec),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
