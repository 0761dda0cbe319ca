"""Recording: every event a trace emits also goes to a journal.

A Recorder is an event sink (fsev.session.sinks.EventSink) that tees: it shows each
event through the display sink, if any, and appends it to the journal.
`fsev record` is `fsev trace` with no display sink.
"""

from __future__ import annotations

import sys
from typing import Any

from fsev.events import Event
from fsev.journal.retention import Retention
from fsev.journal.store import Journal, JournalError
from fsev.journal.writer import JournalWriter
from fsev.probes.ladder import Plan
from fsev.session.sinks import EventSink


class NullSink:
    """Shows nothing: `fsev record` only writes the journal."""

    def emit(self, ev: Event) -> None:
        pass

    def close(self) -> None:
        pass


def plan_json(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "point": r.name, "kind": r.kind.value, "targets": list(r.targets),
            "gives": r.gives, "misses": r.misses, "skipped": list(r.skipped),
        }
        for r in plan.rungs
    ]


class Recorder:
    """Opened before anything attaches (so a bad journal path fails early), started with the plan."""

    def __init__(self, path: str, command: str) -> None:
        self.path = path
        self.command = command
        self.journal = Journal.open(path, write=True, create=True)
        self.recording: int | None = None
        self.writer: JournalWriter | None = None
        self.display: EventSink = NullSink()
        self.lost = 0

    def start(self, plan: Plan, options: dict[str, Any], display: EventSink | None,
              retention: Retention | None = None, trim_interval: float = 5.0) -> "Recorder":
        """Store the recording's metadata (committed at once) and begin taking
        events; with retention, the writer trims the journal as it goes (the
        service's flight recorder)."""
        self.recording = self.journal.begin_recording(self.command, plan_json(plan), options)
        self.writer = JournalWriter(self.journal, self.recording, retention=retention, trim_interval=trim_interval)
        self.display = display or NullSink()
        return self

    # -- EventSink ---------------------------------------------------------
    def emit(self, ev: Event) -> None:
        # Journal first: if the display fails (a closed pipe), the event is still recorded.
        assert self.writer is not None, "Recorder.start() was not called"
        self.writer.append(ev)
        if ev.lost:
            self.lost += ev.lost
        self.display.emit(ev)

    def close(self, reason: str | None = None) -> None:
        """Final commit and the clean-stop mark; safe to call once after any failure."""
        try:
            self.display.close()
        finally:
            failure: JournalError | None = None
            if self.writer is not None:
                try:
                    self.writer.close()
                except JournalError as e:
                    failure = e
            if self.recording is not None:
                why = reason or (f"journal write failed: {failure}" if failure else "stopped")
                try:
                    self.journal.end_recording(self.recording, why)
                except JournalError:
                    pass  # the write error above already says what went wrong
            self.journal.close()
            if self.recording is not None and self.writer is not None:
                print(
                    f"fsev: recorded {self.writer.committed} events ({self.lost} lost in the kernel) "
                    f"to {self.path}, recording {self.recording}",
                    file=sys.stderr, flush=True,
                )
            if failure is not None:
                raise failure
