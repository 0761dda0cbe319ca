"""Writing a recording into the journal: batched commits from a thread of their own.

The loss window (docs/journal.md) is set here. A batch is committed when it
holds BATCH_EVENTS events or its oldest event has waited BATCH_INTERVAL_S,
whichever comes first; a commit is atomic and fsynced. At most
MAX_UNCOMMITTED events are ever held in memory: beyond that, append() waits
for the commit, so a flood backs up into the kernel ring buffer, where drops
are counted and reported. A kill or crash loses only uncommitted events.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from fsev.events import Event, EventType
from fsev.events.json_line import event_json
from fsev.journal.store import Journal, JournalError, _sqlite_error

BATCH_INTERVAL_S = 0.1
BATCH_EVENTS = 1000
MAX_UNCOMMITTED = 10_000
_LOSS = EventType.LOSS


class JournalWriter:
    """Appends the events of one recording, committing in batches from a thread of its own.

    append() serializes and queues; it never touches the disk. The committer
    thread inserts and commits, so an fsync never stalls the ring-buffer reader.
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
        self._cond = threading.Condition(threading.Lock())  # a plain lock: cheaper than the default RLock
        self._pending: list[str] = []  # JSON lines
        self._losses: list[tuple[int, Event]] = []  # (index in _pending, loss record)
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
                        self._cond.wait()
                    if not self._pending:
                        return
                    while not self._closing and len(self._pending) < self.batch:
                        left = self._first_at + self.interval - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    batch, self._pending = self._pending, []
                    losses, self._losses = self._losses, []
                self._commit(batch, losses)
                with self._cond:
                    self._uncommitted -= len(batch)
                    self.committed += len(batch)
                    self.commits += 1
                    self._cond.notify_all()
        except BaseException as e:  # reported to the appending thread
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _commit(self, batch: list[str], losses: list[tuple[int, Event]]) -> None:
        self.journal.commit_segment(self.recording, batch, losses)
