"""The journal's format on disk: the schema, its versions, and the upgrade between them.

Format 1 is what fsev wrote before retention. Format 2 adds what retention
and time windows need, as additions only, so a format-1 journal becomes a
format-2 one in place (upgrade(), in one transaction, when a journal is
opened for writing) and a reader of either can tell which it has:

- segment.first_time, last_time: the oldest and newest wall_time among the
  segment's events (NULL: unknown, a segment an older fsev wrote or whose
  text is not valid JSON). A time window skips segments by these, in SQL,
  without reading their events; retention ages a segment by last_time.
- segment.bytes: the length of its events text in UTF-8 bytes, what
  retention measures (summing it reads an index, not the events).
- segment_span: a covering index of the above, so neither a time window
  nor a trim reads the (large, overflow-paged) events of segments they skip.
- trimmed: one row, how far retention has deleted; event numbers continue
  after it even when every segment has been deleted.
- consumer_loss: events a registered consumer had not acknowledged when the
  hard size cap forced them out, until that consumer has been told.

New journals also use auto_vacuum=INCREMENTAL (it can only be chosen before
the first table exists), so a trim gives its pages back to the filesystem. A
journal upgraded from format 1 keeps auto_vacuum=NONE: its freed pages go on
SQLite's free list and new segments reuse them, so the file stops growing at
its high-water mark instead of shrinking.
"""

from __future__ import annotations

import sqlite3

FORMAT_VERSION = 2
APPLICATION_ID = 0x66736576  # "fsev"
SQLITE_MAGIC = b"SQLite format 3\x00"

# Where `fsev serve` keeps its flight recorder, and what replay and report read without a FILE.
DEFAULT_FLIGHT_JOURNAL = "/var/lib/fsev/flight.fsev"

SCHEMA_1 = """
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
CREATE TABLE segment (
    id INTEGER PRIMARY KEY,
    recording INTEGER NOT NULL REFERENCES recording(id),
    first INTEGER NOT NULL UNIQUE,  -- the number of its first event
    count INTEGER NOT NULL CHECK (count > 0),
    crc INTEGER NOT NULL,           -- CRC-32 of events (UTF-8)
    events TEXT NOT NULL            -- JSON array, one event per line as `fsev trace --json` prints it
);
CREATE TABLE loss (
    id INTEGER PRIMARY KEY,
    recording INTEGER NOT NULL REFERENCES recording(id),
    event INTEGER NOT NULL,         -- the number of the loss record in the event stream
    source TEXT NOT NULL,           -- where events were dropped (ringbuf)
    lost INTEGER NOT NULL,
    lost_total INTEGER,
    since_wall_time REAL,
    wall_time REAL NOT NULL
);
CREATE TABLE consumer (
    name TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,         -- the last event this consumer is done with (0: none)
    output TEXT,                    -- its output file, when it writes one (exactly-once mode)
    output_offset INTEGER,          -- that file's size right after event `acked`
    updated_at REAL NOT NULL
);
CREATE VIEW event AS
    SELECT s.first + j.key AS id, s.recording AS recording,
           json_extract(j.value, '$.seq') AS seq, json_extract(j.value, '$.wall_time') AS wall_time,
           json_extract(j.value, '$.class') AS class, json_extract(j.value, '$.type') AS type,
           json_extract(j.value, '$.mount_point') AS mount_point, j.value AS body
    FROM segment AS s, json_each(s.events) AS j;
"""

# Format 1 -> 2. A new journal is SCHEMA_1 followed by these, so an upgraded
# journal and a new one have the same tables, columns and index.
ADDED_IN_2 = """
-- the oldest and newest wall_time of its events (NULL: unknown), and the length of events in UTF-8 bytes
ALTER TABLE segment ADD COLUMN first_time REAL;
ALTER TABLE segment ADD COLUMN last_time REAL;
ALTER TABLE segment ADD COLUMN bytes INTEGER;
CREATE INDEX segment_span ON segment (first, first_time, last_time, bytes, count);
-- which recordings still have events (a trim deletes the stopped ones that have none left)
CREATE INDEX segment_recording ON segment (recording);
CREATE TABLE trimmed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    through INTEGER NOT NULL,       -- every event numbered up to this one has been deleted by retention
    events INTEGER NOT NULL,        -- events deleted, in all
    bytes INTEGER NOT NULL,         -- their segments' bytes, in all
    at REAL NOT NULL                -- wall time of the latest trim that deleted something
);
CREATE TABLE consumer_loss (
    id INTEGER PRIMARY KEY,
    consumer TEXT NOT NULL,         -- a consumer name, as in table consumer
    first INTEGER NOT NULL,         -- the first and last event it lost
    last INTEGER NOT NULL,
    count INTEGER NOT NULL,
    wall_time REAL NOT NULL,        -- when the trim deleted them
    reported_at REAL                -- NULL: the consumer has not been told yet
);
"""

# Times and sizes of segments an older fsev wrote. A segment whose text is not
# JSON keeps NULL times: windows always read it (and report its damage).
BACKFILL_2 = """
UPDATE segment SET
    bytes = length(CAST(events AS BLOB)),
    first_time = CASE WHEN json_valid(events) THEN
        (SELECT min(json_extract(value, '$.wall_time')) FROM json_each(segment.events)) END,
    last_time = CASE WHEN json_valid(events) THEN
        (SELECT max(json_extract(value, '$.wall_time')) FROM json_each(segment.events)) END
"""


def statements(script: str) -> list[str]:
    """The statements of a script (no `;` inside a comment or a string in these scripts)."""
    out = []
    for part in script.split(";"):
        code = [line for line in part.splitlines() if line.strip() and not line.strip().startswith("--")]
        if code:
            out.append(part.strip())
    return out


def create_tables(conn: sqlite3.Connection) -> None:
    """The whole current schema, in a transaction the caller holds."""
    for stmt in statements(SCHEMA_1) + statements(ADDED_IN_2):
        conn.execute(stmt)


def upgrade(conn: sqlite3.Connection) -> bool:
    """Bring an open journal up to FORMAT_VERSION in one transaction; True if it changed.

    Atomic: a kill halfway leaves the journal as it was (format 1, readable by
    this fsev and by the one that wrote it).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # under the lock: another may have done it
        if version >= FORMAT_VERSION:
            conn.execute("ROLLBACK")
            return False
        for stmt in statements(ADDED_IN_2):
            conn.execute(stmt)
        conn.execute(BACKFILL_2)
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("COMMIT")
        return True
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
