"""Retention: how much of a journal to keep, and trim(), which applies it.

What is measured is the stored events: the sum of segment.bytes, the UTF-8
length of each segment's JSON text. The file is larger than that by SQLite's
page overhead, the indexes, the recordings and the -wal file (at most
WAL_SIZE_LIMIT after a checkpoint); docs/journal.md gives the measured ratio.

The policy, oldest segment first, deleting only ever a prefix of the journal
(so what is left is still a gap-free run of events, and numbering goes on):

- a segment goes while the events are over max_bytes, or when its newest event
  is older than max_age_s (a segment of unknown time ages never: only size
  removes it);
- but not a segment holding an event some registered consumer (table
  consumer) has not acknowledged. There the trim stops;
- unless the events are over hard_max_bytes: then segments go regardless,
  down to max_bytes, and each consumer that lost events it had not
  acknowledged gets a consumer_loss row with their numbers and count, which
  its next `fsev replay --consumer` reports as a loss event.

A trim is one transaction: a kill at any point leaves the journal as before
the trim or as after it. Stopped recordings left without events go with their
last segment; so do loss rows of deleted events. Afterwards
`PRAGMA incremental_vacuum` gives the freed pages back to the filesystem
(journals created with auto_vacuum=INCREMENTAL, see schema.py); a kill
before it leaves them on SQLite's free list, for the next trim or for reuse.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field

from fsev.journal.store import Journal, JournalError, _sqlite_error

MiB = 1024 * 1024


@dataclass(frozen=True)
class Retention:
    max_bytes: int  # stored events beyond this are trimmed, oldest first, unless a consumer holds them
    max_age_s: float  # a segment whose newest event is older is trimmed, likewise (math.inf: no age limit)
    hard_max_bytes: int  # beyond this, trimmed even when a consumer holds them, down to max_bytes

    def __post_init__(self) -> None:
        if not self.max_bytes > 0:
            raise JournalError(f"retention: max_bytes must be positive, not {self.max_bytes}")
        if not self.hard_max_bytes >= self.max_bytes:
            raise JournalError(f"retention: hard_max_bytes ({self.hard_max_bytes}) is below max_bytes "
                               f"({self.max_bytes})")
        if math.isnan(self.max_age_s) or not self.max_age_s > 0:
            raise JournalError(f"retention: max_age_s must be positive, not {self.max_age_s}")


# A suggestion for a flight recorder: a week, 256 MiB, never more than 1 GiB.
DEFAULT_RETENTION = Retention(max_bytes=256 * MiB, max_age_s=7 * 86400.0, hard_max_bytes=1024 * MiB)


@dataclass(frozen=True)
class TrimResult:
    segments: int = 0  # deleted by this trim
    events: int = 0
    bytes: int = 0
    kept_bytes: int = 0  # stored events left
    through: int = 0  # every event numbered up to this one is gone (by this trim or earlier ones)
    forced: bool = False  # the hard cap deleted events a consumer had not acknowledged
    consumer_losses: dict[str, int] = field(default_factory=dict)  # consumer -> events it lost now
    held_by: tuple[str, ...] = ()  # consumers whose position stopped the trim short of the policy
    oldest_time: float | None = None  # last_time of the oldest segment left (None: none, or unknown)


def trim(journal: Journal, retention: Retention, now: float) -> TrimResult:
    """Apply `retention` to a journal open for writing, at wall time `now`, in one transaction."""
    if journal.version < 2:
        raise JournalError(f"{journal.path}: format {journal.version} has no retention: open it for writing first")
    conn = journal.conn
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = _trim(conn, retention, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if result.segments:
            # executescript steps it to the end; execute() would step once, freeing one page.
            conn.executescript("PRAGMA incremental_vacuum;")
    except sqlite3.Error as e:
        raise _sqlite_error(journal.path, e) from None
    return result


def _trim(conn: sqlite3.Connection, r: Retention, now: float) -> TrimResult:
    # Segments written without a size (by hand, or by an older fsev still appending) get one now.
    for (first,) in conn.execute("SELECT first FROM segment INDEXED BY segment_span WHERE bytes IS NULL").fetchall():
        conn.execute("UPDATE segment SET bytes = length(CAST(events AS BLOB)) WHERE first = ?", (first,))
    total = conn.execute("SELECT coalesce(sum(bytes), 0) FROM segment INDEXED BY segment_span").fetchone()[0]
    consumers = conn.execute("SELECT name, acked FROM consumer").fetchall()
    held_to = min((acked for _, acked in consumers), default=None)  # events above it are someone's
    row = conn.execute("SELECT through FROM trimmed").fetchone()
    before = row[0] if row else 0
    cutoff = now - r.max_age_s

    through, segments, events, freed = before, 0, 0, 0
    forced = False
    held_by: tuple[str, ...] = ()
    oldest_time: float | None = None
    walk = conn.execute("SELECT first, count, last_time, bytes FROM segment INDEXED BY segment_span ORDER BY first")
    for first, count, last_time, size in walk:
        last = first + count - 1
        over = total > r.max_bytes
        aged = last_time is not None and last_time < cutoff
        if held_to is not None and last > held_to and (over or aged):
            forced = forced or total > r.hard_max_bytes
            if not (forced and over):
                held_by = tuple(sorted(name for name, acked in consumers if acked < last))
                oldest_time = last_time
                break
        elif not (over or aged):
            oldest_time = last_time
            break
        through, segments, events, freed = last, segments + 1, events + count, freed + size
        total -= size
    walk.close()
    if not segments:
        return TrimResult(kept_bytes=total, through=before, held_by=held_by, oldest_time=oldest_time)

    gone = conn.execute(
        "SELECT DISTINCT recording FROM segment WHERE first <= ?", (through,)
    ).fetchall()
    conn.execute("DELETE FROM segment WHERE first <= ?", (through,))
    conn.execute("DELETE FROM loss WHERE event <= ?", (through,))
    for (rec,) in gone:
        conn.execute(
            "DELETE FROM recording WHERE id = ? AND stopped_at IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM segment WHERE recording = ?)", (rec, rec),
        )
    losses: dict[str, int] = {}
    for name, acked in consumers:
        lo, hi = max(acked, before) + 1, through
        if hi >= lo:
            conn.execute(
                "INSERT INTO consumer_loss (consumer, first, last, count, wall_time) VALUES (?, ?, ?, ?, ?)",
                (name, lo, hi, hi - lo + 1, now),
            )
            losses[name] = hi - lo + 1
    conn.execute(
        "INSERT INTO trimmed (id, through, events, bytes, at) VALUES (1, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
        " through = excluded.through, events = events + excluded.events, bytes = bytes + excluded.bytes,"
        " at = excluded.at",
        (through, events, freed, now),
    )
    return TrimResult(segments=segments, events=events, bytes=freed, kept_bytes=total, through=through,
                      forced=bool(losses) or forced, consumer_losses=losses, held_by=held_by,
                      oldest_time=oldest_time)
