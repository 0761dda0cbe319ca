"""The journal: an fsev recording on disk, crash-safe, readable while written.

Why SQLite (the standard library's sqlite3) in WAL mode rather than a
hand-made append-only log:
- a commit is atomic: after a crash or `kill -9` the file holds whole
  transactions, never part of one, and opens without a repair step;
- WAL lets `replay --follow` and `report` read while `record` writes, and
  neither blocks the recorder;
- a consumer's acknowledgement is one row updated in its own transaction,
  so "done up to record X" is atomic without any protocol of our own.

Layout (docs/journal.md). PRAGMA application_id says "fsev journal", PRAGMA
user_version is the format version. Events are numbered 1, 2, ... across the
whole journal: that number is what consumers acknowledge. Each commit writes
one `segment` row: a JSON array of its events, one per line, each line
exactly as `fsev trace --json` prints it, with a CRC-32 of the text (SQLite
pages carry no checksum: a damaged segment is reported, never replayed).
A row per commit rather than per event is what lets the recorder keep up
with a flood; the `event` view still gives SQL one row per event.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import stat
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from fsev import __version__
from fsev.errors import FsevError
from fsev.events import Event
from fsev.events.json_line import event_json
from fsev.journal import schema
from fsev.journal.schema import APPLICATION_ID as APPLICATION_ID  # re-exported: the format's names
from fsev.journal.schema import DEFAULT_FLIGHT_JOURNAL as DEFAULT_FLIGHT_JOURNAL
from fsev.journal.schema import FORMAT_VERSION as FORMAT_VERSION
from fsev.journal.schema import SQLITE_MAGIC, create_tables, upgrade
from fsev.journal.timewindow import TimeWindow

_INSERT_SEGMENT = (
    "INSERT INTO segment (recording, first, count, crc, events, first_time, last_time, bytes)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LOSS = (
    "INSERT INTO loss (recording, event, source, lost, lost_total, since_wall_time, wall_time)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_NEXT_NUMBER_1 = "SELECT first + count FROM segment ORDER BY first DESC LIMIT 1"
# Retention may have deleted every segment: numbering goes on after what it deleted.
_NEXT_NUMBER = (
    "SELECT max(coalesce((SELECT first + count FROM segment ORDER BY first DESC LIMIT 1), 1),"
    " coalesce((SELECT through + 1 FROM trimmed), 1))"
)
_SEPARATOR = ",\n"  # between events in a segment; json.dumps never puts a raw newline in a line


def pack(lines: list[str]) -> str:
    return "[" + _SEPARATOR.join(lines) + "]"


def unpack(text: str, count: int) -> list[str] | None:
    """The lines of a segment, or None when the text is not `count` lines in a JSON array."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    lines = text[1:-1].split(_SEPARATOR)
    return lines if len(lines) == count else None


event_body = event_json  # an event's line in a segment: exactly what JsonSink prints
_FAR = 1e300  # an open end of a time window, in SQL


def _line_in(line: str, window: TimeWindow | None) -> bool:
    if window is None:
        return True
    try:
        t = json.loads(line).get("wall_time")
    except (ValueError, AttributeError):
        return True  # not for the window to judge: the reader reports what it cannot read
    return isinstance(t, (int, float)) and window.contains(float(t))


WAL_SIZE_LIMIT = 32 * 1024 * 1024


class JournalError(FsevError):
    pass


def journal_path(path: str | None) -> str:
    """FILE as given, or the flight recorder's journal when none is named (replay, report)."""
    if path is not None:
        return path
    default = schema.DEFAULT_FLIGHT_JOURNAL  # read now, not at import: tests point it elsewhere
    if not os.path.lexists(default):
        raise JournalError(f"no journal at {default}: is `fsev serve` running? (or name a FILE)")
    return default


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
            f"(fsev {__version__} reads up to {FORMAT_VERSION}): use a newer fsev"
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
            # Before the first table: afterwards SQLite cannot switch it on without a VACUUM.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN")
            create_tables(conn)
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


@dataclass(frozen=True)
class ConsumerLoss:
    """Events numbered first..last (count of them) that a trim deleted before `consumer` had them."""

    id: int
    consumer: str
    first: int
    last: int
    count: int
    wall_time: float  # when the trim deleted them
    total: int  # this consumer's losses so far, this one included


@dataclass(frozen=True)
class Trimmed:
    through: int  # every event numbered up to this one is gone
    events: int
    bytes: int
    at: float


class Journal:
    """An open journal. Every sqlite3 error leaves as a one-line JournalError."""

    def __init__(self, path: str, conn: sqlite3.Connection, version: int = FORMAT_VERSION) -> None:
        self.path = path
        self.conn = conn
        self.version = version  # a journal opened read-only keeps the format it was written in

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
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                _check_ids(path, conn.execute("PRAGMA application_id").fetchone()[0], version)
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
                    # After a checkpoint the -wal file is cut back to this, so a large
                    # trim does not leave a WAL as large as what it deleted.
                    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                    if version < FORMAT_VERSION:
                        upgrade(conn)
                        version = FORMAT_VERSION
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            raise _sqlite_error(path, e) from None
        return cls(path, conn, version)

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

    def records(self, after: int = 0, page: int = 4, window: TimeWindow | None = None) -> Iterator[JournalRecord]:
        """Events numbered above `after`, in order, each segment checked against its CRC.

        Read a few segments at a time, each query its own short read
        transaction, so a long replay never keeps the recorder's WAL from
        being checkpointed. With a window, only events whose wall_time is in
        it; segments wholly outside it are skipped in SQL by their times
        (the covering index segment_span), so their events are never read.
        """
        bounded = window is not None and window.bounded
        try:
            row = self.conn.execute(
                "SELECT first FROM segment WHERE first <= ? ORDER BY first DESC LIMIT 1", (after + 1,)
            ).fetchone()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        start = row[0] if row else 0
        while True:
            try:
                rows = self.conn.execute(*self._page_query(start, page, window if bounded else None)).fetchall()
            except sqlite3.Error as e:
                raise self._read_error(e) from None
            if not rows:
                return
            for rec, first, count, crc, raw, t0, t1 in rows:
                lines = self._lines(first, count, crc, raw)
                # A segment inside the window yields every line; one across an edge
                # (or of unknown times) is filtered event by event.
                whole = not bounded or (t0 is not None and t1 is not None and window is not None
                                        and window.contains(t0) and window.contains(t1))
                for i, line in enumerate(lines):
                    if first + i > after and (whole or _line_in(line, window)):
                        yield JournalRecord(first + i, rec, line)
                start = first + count

    def _page_query(self, start: int, page: int, window: TimeWindow | None) -> tuple[str, tuple[Any, ...]]:
        cols = "recording, first, count, crc, CAST(events AS BLOB)"
        if self.version < 2:  # no times stored: every segment is read, and its events filtered
            return (f"SELECT {cols}, NULL, NULL FROM segment WHERE first >= ? ORDER BY first LIMIT ?",
                    (start, page))
        if window is None:
            return (f"SELECT {cols}, first_time, last_time FROM segment WHERE first >= ? ORDER BY first LIMIT ?",
                    (start, page))
        since = -_FAR if window.since is None else window.since
        until = _FAR if window.until is None else window.until
        return (
            f"SELECT {cols}, first_time, last_time FROM segment WHERE first IN"
            " (SELECT first FROM segment INDEXED BY segment_span WHERE first >= ?"
            "  AND (last_time IS NULL OR last_time >= ?) AND (first_time IS NULL OR first_time < ?)"
            "  ORDER BY first LIMIT ?) ORDER BY first",
            (start, since, until, page),
        )

    def _lines(self, first: int, count: int, crc: int, raw: bytes | None) -> list[str]:
        where = f"{self.path}: events {first}-{first + count - 1} are corrupted"
        if raw is None or zlib.crc32(raw) != crc:
            raise JournalError(f"{where} (checksum mismatch)")
        try:
            lines = unpack(raw.decode("utf-8"), count)
        except UnicodeDecodeError:
            lines = None
        if lines is None:
            raise JournalError(f"{where} (not {count} JSON lines)")
        return lines

    def last_id(self) -> int:
        """The number of the newest committed event (0: none), deleted by retention or not."""
        try:
            row = self.conn.execute(_NEXT_NUMBER if self.version >= 2 else _NEXT_NUMBER_1).fetchone()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        return row[0] - 1 if row else 0

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

    def consumers(self) -> list[ConsumerState]:
        """Every registered consumer (one that has acknowledged or bound an output)."""
        try:
            rows = self.conn.execute("SELECT name, acked, output, output_offset FROM consumer ORDER BY name").fetchall()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        return [ConsumerState(*r) for r in rows]

    def ack(self, name: str, acked: int, output: str | None = None, output_offset: int | None = None,
            reported: Sequence[int] = ()) -> None:
        """Record, in one transaction, that consumer `name` is done with every record up to `acked`,
        and has been told of the consumer_loss rows `reported` (their ids)."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO consumer (name, acked, output, output_offset, updated_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET acked = excluded.acked, output = excluded.output,"
                    " output_offset = excluded.output_offset, updated_at = excluded.updated_at",
                    (name, acked, output, output_offset, time.time()),
                )
                for loss_id in reported:
                    conn.execute("UPDATE consumer_loss SET reported_at = ? WHERE id = ? AND consumer = ?",
                                 (time.time(), loss_id, name))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None

    def consumer_losses(self, name: str) -> list[ConsumerLoss]:
        """Events retention's hard cap deleted before consumer `name` acknowledged them,
        of which it has not been told yet, oldest first."""
        if self.version < 2:
            return []
        try:
            rows = self.conn.execute(
                "SELECT id, consumer, first, last, count, wall_time,"
                " (SELECT sum(count) FROM consumer_loss AS b WHERE b.consumer = a.consumer AND b.id <= a.id)"
                " FROM consumer_loss AS a WHERE consumer = ? AND reported_at IS NULL ORDER BY id", (name,),
            ).fetchall()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        return [ConsumerLoss(*r) for r in rows]

    def trimmed(self) -> Trimmed | None:
        """What retention has deleted from this journal, if anything."""
        if self.version < 2:
            return None
        try:
            row = self.conn.execute("SELECT through, events, bytes, at FROM trimmed").fetchone()
        except sqlite3.Error as e:
            raise self._read_error(e) from None
        return Trimmed(*row) if row else None

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
        assert cur.lastrowid is not None  # set by every INSERT that succeeded
        return int(cur.lastrowid)

    def end_recording(self, recording: int, reason: str) -> None:
        try:
            self.conn.execute(
                "UPDATE recording SET stopped_at = ?, stop_reason = ? WHERE id = ?", (time.time(), reason, recording)
            )
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None

    def commit_segment(self, recording: int, lines: list[str], losses: list[tuple[int, Event]],
                       span: tuple[float, float] | None = None) -> int:
        """Append events (their JSON lines) as one segment, in one transaction; returns its bytes.

        losses: (index in lines, loss record) pairs, also written to the loss table.
        span: the oldest and newest wall_time among the events (None: read from the lines).
        """
        text = pack(lines)
        raw = text.encode()
        first_time, last_time = span if span is not None else _span_of(lines)
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(_NEXT_NUMBER).fetchone()  # under the write lock: another recorder may append
                first = row[0] if row else 1
                conn.execute(_INSERT_SEGMENT, (recording, first, len(lines), zlib.crc32(raw), text,
                                               first_time, last_time, len(raw)))
                for i, ev in losses:
                    conn.execute(_INSERT_LOSS, (recording, first + i, ev.rung, ev.lost or 0, ev.lost_total,
                                                ev.since_wall_time, ev.wall_time))
                conn.execute("UPDATE recording SET last_commit_at = ?, events = events + ? WHERE id = ?",
                             (time.time(), len(lines), recording))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise _sqlite_error(self.path, e) from None
        return len(raw)


def _span_of(lines: list[str]) -> tuple[float | None, float | None]:
    times = []
    for line in lines:
        try:
            t = json.loads(line).get("wall_time")
        except (ValueError, AttributeError):
            continue
        if isinstance(t, (int, float)):
            times.append(float(t))
    return (min(times), max(times)) if times else (None, None)
