"""Writing a recording into the journal: batched commits from a thread of their own.

The loss window (docs/journal.md) is set here. A batch is committed when it
holds BATCH_EVENTS events or its oldest event has waited BATCH_INTERVAL_S,
whichever comes first; a commit is atomic and fsynced. At most
MAX_UNCOMMITTED events are ever held in memory: beyond that, append() waits
for the commit, so a flood backs up into the kernel ring buffer, where drops
are counted and reported. A kill or crash loses only uncommitted events.

With a Retention, the same thread trims the journal (fsev.journal.retention):
right after a commit that takes the stored events over max_bytes, and
otherwise at most every TRIM_INTERVAL_S while commits come, or when the
oldest segment ages out, and every TRIM_RECHECK_S regardless (another
process may be appending). append() never waits for a trim: events queue as
during a slow commit. A trim that fails is reported like a commit that fails.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from fsev.events import Event, EventType
from fsev.events.json_line import event_json
from fsev.journal.retention import Retention, TrimResult, trim
from fsev.journal.store import Journal, JournalError, _sqlite_error

BATCH_INTERVAL_S = 0.1
BATCH_EVENTS = 1000
MAX_UNCOMMITTED = 10_000
TRIM_INTERVAL_S = 5.0
TRIM_RECHECK_S = 60.0
_LOSS = EventType.LOSS


class JournalWriter:
    """Appends the events of one recording, committing in batches from a thread of its own.

    append() serializes and queues; it never touches the disk. The committer
    thread inserts and commits, so an fsync never stalls the ring-buffer reader.
    """

    def __init__(
        self, journal: Journal, recording: int, *, interval: float = BATCH_INTERVAL_S,
        batch: int = BATCH_EVENTS, max_uncommitted: int = MAX_UNCOMMITTED,
        retention: Retention | None = None, trim_interval: float = TRIM_INTERVAL_S,
    ) -> None:
        self.journal = journal
        self.recording = recording
        self.interval = interval
        self.batch = batch
        self.max_uncommitted = max_uncommitted
        self.retention = retention
        self.trim_interval = trim_interval
        self.committed = 0
        self.commits = 0
        self.trims = 0  # trims run (whether they deleted anything)
        self.last_trim: TrimResult | None = None
        # Events the hard cap deleted before some consumer acknowledged them (fsev_events_lost_total
        # {stage="journal"}): each consumer loses a prefix of the same range, so the largest is the union.
        self.forced_lost = 0
        self._cond = threading.Condition(threading.Lock())  # a plain lock: cheaper than the default RLock
        self._pending: list[str] = []  # JSON lines
        self._losses: list[tuple[int, Event]] = []  # (index in _pending, loss record)
        self._span: tuple[float, float] | None = None  # oldest and newest wall_time in _pending
        # Trim scheduling, touched by the committer thread only.
        self._stored = 0  # stored bytes as of the last trim, plus what was committed since
        self._last_trim_at = float("-inf")
        self._next_trim = time.monotonic() if retention is not None else float("inf")  # the first: at once
        self._first_at = 0.0
        self._uncommitted = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fsev-journal", daemon=True)
        self._thread.start()

    def append(self, ev: Event) -> None:
        # Serialized here, by the caller: the committer thread then spends its time in
        # SQLite and in fsync, which run without the GIL, in parallel with this thread.
        line = event_json(ev)
        with self._cond:
            if self._error is not None:
                raise self._failure()
            if not self._pending:
                self._first_at = time.monotonic()
                self._cond.notify()
            self._pending.append(line)
            t = ev.wall_time
            span = self._span
            if span is None:
                self._span = (t, t)
            elif t < span[0] or t > span[1]:
                self._span = (min(span[0], t), max(span[1], t))
            if ev.type is _LOSS:
                self._losses.append((len(self._pending) - 1, ev))
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
                        wait = self._next_trim - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(None if wait == float("inf") else wait)
                    if not self._pending and self._closing:
                        return
                    while self._pending and not self._closing and len(self._pending) < self.batch:
                        left = self._first_at + self.interval - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    batch, self._pending = self._pending, []
                    losses, self._losses = self._losses, []
                    span, self._span = self._span, None
                if batch:
                    size = self._commit(batch, losses, span)
                    with self._cond:
                        self._uncommitted -= len(batch)
                        self.committed += len(batch)
                        self.commits += 1
                        self._cond.notify_all()
                    self._committed(size)
                if time.monotonic() >= self._next_trim:
                    self._trim()
        except BaseException as e:  # reported to the appending thread
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _commit(self, batch: list[str], losses: list[tuple[int, Event]], span: tuple[float, float] | None) -> int:
        """Commit one segment; returns its size as retention measures it."""
        return self.journal.commit_segment(self.recording, batch, losses, span)

    # -- retention (the committer thread only) ---------------------------------
    def _committed(self, size: int) -> None:
        r = self.retention
        if r is None:
            return
        before, self._stored = self._stored, self._stored + size
        if before <= r.max_bytes < self._stored:
            self._next_trim = time.monotonic()  # just crossed the limit: at once
        elif self._stored > r.max_bytes:  # still over (a consumer holds the rest): every interval
            self._next_trim = min(self._next_trim, self._last_trim_at + self.trim_interval)

    def _trim(self) -> None:
        r = self.retention
        assert r is not None
        now = time.time()
        result = trim(self.journal, r, now)
        mono = time.monotonic()
        self.trims += 1
        self.last_trim = result
        if result.forced:
            self.forced_lost += max(result.consumer_losses.values(), default=0)
        self._stored = result.kept_bytes
        self._last_trim_at = mono
        # Next: when the oldest segment left ages out, but not sooner than the interval and
        # not later than the recheck (a consumer holding old events: at the recheck, since its
        # acknowledgements do not reach this thread); a commit over max_bytes brings it forward.
        if result.oldest_time is None or result.held_by:
            until_aged = TRIM_RECHECK_S
        else:
            until_aged = result.oldest_time + r.max_age_s - now
        self._next_trim = mono + max(self.trim_interval, min(TRIM_RECHECK_S, until_aged))
