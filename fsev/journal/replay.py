"""Replay: a journal's records, printed the way `fsev trace` prints events.

Consumers (`--consumer NAME`). A consumer's position is the number of the
last event it acknowledged, stored in the journal. Two delivery modes:

- Output to a file (`--output FILE`): exactly once. Lines are written, the
  file is fsynced, and only then is (event number, file size) acknowledged in
  one transaction. On restart the file is cut back to the acknowledged size
  and replay resumes after the acknowledged event. Whatever a kill interrupts
  (a line half written, lines written but not acknowledged) is cut away and
  written again, so the file holds every event exactly once, in order.
- Output to stdout (a pipe or terminal cannot take a line back): each line is
  written and flushed, then acknowledged. A kill between the two repeats that
  one line on restart: at least once, with at most one repeated line per kill.
  Acknowledging first would instead lose that line; no order gives exactly
  once on a stream that cannot be rewound.

Events that retention's hard cap deleted before a consumer acknowledged them
(fsev.journal.retention) reach that consumer as a loss event, rung
"journal", ahead of the first event left; telling it is acknowledged like an
event (with the file's size, in file mode), so it is told once.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Callable

from rich.console import Console
from rich.text import Text

from fsev import __version__
from fsev.events import Event, EventClass, EventType
from fsev.events.inert import inert
from fsev.journal.store import ConsumerLoss, Journal, JournalError, JournalRecord, Recording
from fsev.journal.timewindow import TimeWindow
from fsev.journal.writer import BATCH_EVENTS, BATCH_INTERVAL_S
from fsev.session.sinks import CLASS_STYLE, EventSink, HumanSink, JsonSink

FOLLOW_POLL_S = 0.1
SLEEP_SLICE_S = 0.1


@dataclass
class ReplayOptions:
    consumer: str | None = None
    follow: bool = False
    json_out: bool = False
    speed: float | None = None  # None: as fast as possible; X: X times the recorded pace
    output: str | None = None  # exactly-once file (with a consumer)
    window: TimeWindow | None = None  # only events with a wall_time in it


class UntypedSink:
    """Records whose type this fsev does not know (written by a newer one) still replay:
    the JSON form as stored, or a plain human line."""

    def __init__(self, stream: IO[str], json_out: bool) -> None:
        self.stream = stream
        self.json_out = json_out

    def emit(self, rec: JournalRecord) -> None:
        if self.json_out:
            self.stream.write(rec.body + "\n")
        else:
            d = rec.json()
            wall = d.get("wall_time")
            clock = time.strftime("%H:%M:%S", time.localtime(wall)) if isinstance(wall, (int, float)) else "?"
            self.stream.write(
                f"{clock} {inert(str(d.get('class', '?'))):<4} {inert(str(d.get('type', '?'))):<9} "
                f"{inert(str(d.get('mount_point', '?')))}  (event type unknown to fsev {__version__})\n"
            )
        self.stream.flush()


def _display(json_out: bool, stream: IO[str] | None) -> EventSink:
    if json_out:
        return JsonSink(stream)
    if stream is None:
        return HumanSink()
    return HumanSink(Console(file=stream, highlight=False, soft_wrap=True, color_system=None, force_terminal=False))


class _Acker:
    """When and how a consumer acknowledges; see the module docstring."""

    def __init__(self, journal: Journal, name: str | None, out_fd: int | None, out_path: str | None,
                 flush: Callable[[], None]) -> None:
        self.journal = journal
        self.name = name
        self.out_fd = out_fd
        self.out_path = out_path
        self.flush_stream = flush
        self.last_done = 0
        self.last_acked = 0
        self.reported: list[int] = []  # consumer_loss rows told but not yet acknowledged
        self.told: set[int] = set()  # consumer_loss rows told by this run
        self.batch_started = 0.0

    def resume(self, acked: int) -> None:
        self.last_done = self.last_acked = acked

    def loss_told(self, loss: ConsumerLoss) -> None:
        """A consumer_loss row's loss event has been written (and flushed) to the output."""
        self.reported.append(loss.id)
        self.told.add(loss.id)
        self.done(max(self.last_done, loss.last))

    def done(self, rid: int) -> None:
        """Record rid has been written (and flushed) to the output."""
        self.last_done = rid
        if self.name is None:
            return
        if self.out_fd is None:
            self.journal.ack(self.name, rid, reported=self.reported)
            self.last_acked = rid
            self.reported = []
            return
        now = time.monotonic()
        if self.batch_started == 0.0:
            self.batch_started = now
        if rid - self.last_acked >= BATCH_EVENTS or now - self.batch_started >= BATCH_INTERVAL_S:
            self.commit()

    def commit(self) -> None:
        """File mode: make the output durable, then acknowledge it together with its size."""
        if self.name is None or (self.last_done == self.last_acked and not self.reported):
            return
        self.flush_stream()
        if self.out_fd is not None:
            os.fsync(self.out_fd)
            size = os.fstat(self.out_fd).st_size
            self.journal.ack(self.name, self.last_done, self.out_path, size, reported=self.reported)
        else:
            self.journal.ack(self.name, self.last_done, reported=self.reported)
        self.last_acked = self.last_done
        self.reported = []
        self.batch_started = 0.0


def _open_output(path: str, journal: Journal, consumer: str | None) -> tuple[int, IO[str], str]:
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise JournalError(f"--output {path}: {e.strerror or e}") from None
    try:
        size = os.fstat(fd).st_size
        if consumer is not None:
            state = journal.consumer(consumer)
            if state.output == real and state.output_offset is not None:
                if size < state.output_offset:
                    raise JournalError(
                        f"--output {path} holds {size} bytes, less than the {state.output_offset} that consumer "
                        f"{consumer!r} acknowledged: it was cut or replaced; use a new output file or consumer"
                    )
                if size > state.output_offset:
                    # Written after the last acknowledgement by a run that was killed: written again below.
                    os.ftruncate(fd, state.output_offset)
                    os.fsync(fd)
            else:
                # A new output for this consumer: bind it at its current size before writing a
                # byte, so that even a run killed before its first acknowledgement is cut back.
                journal.ack(consumer, state.acked, real, size)
    except BaseException:
        os.close(fd)
        raise
    stream = open(fd, "w", encoding="utf-8", newline="\n", closefd=True)
    return fd, stream, real


def _say(msg: str) -> None:
    print(f"fsev: {msg}", file=sys.stderr, flush=True)


def _when(t: float | None) -> str:
    if t is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def describe_recording(r: Recording) -> str:
    end = (f"stopped {_when(r.stopped_at)}" if r.clean
           else f"ended without a clean stop (last commit {_when(r.last_commit_at)})")
    rungs = ", ".join(f"{p['point']}: {p['kind']}" for p in r.plan)
    return (f"recording {r.id} ({r.command}) on {inert(r.host)}, kernel {inert(r.kernel)}, "
            f"fsev {inert(r.fsev_version)}: started {_when(r.started_at)}, {end}; {rungs}")


def replay(path: str, opts: ReplayOptions, stopping: Callable[[], bool]) -> int:
    """Print the journal's records; returns how many were printed."""
    if opts.speed is not None and not opts.speed > 0:
        raise JournalError(f"--speed must be a positive factor, not {opts.speed}")
    if opts.consumer is not None and not opts.consumer.strip():
        raise JournalError("--consumer needs a name")
    window = opts.window if opts.window is not None and opts.window.bounded else None
    if window is not None and opts.consumer is not None:
        raise JournalError("--since/--until do not go with --consumer: a consumer takes every event, in order")
    if window is not None and window.until is not None and opts.follow:
        raise JournalError("--until does not go with --follow: --follow never ends, --until does")
    journal = Journal.open(path, write=opts.consumer is not None, live=opts.follow)
    out_fd: int | None = None
    stream: IO[str] | None = None
    out_real: str | None = None
    try:
        if opts.output is not None:
            out_fd, stream, out_real = _open_output(opts.output, journal, opts.consumer)
        sink = _display(opts.json_out, stream)
        untyped = UntypedSink(stream or sys.stdout, opts.json_out)
        flush = (stream or sys.stdout).flush
        acker = _Acker(journal, opts.consumer, out_fd, out_real, flush)
        if opts.consumer is not None and out_fd is None:
            # One commit per line; NORMAL survives a kill of this process (an OS crash
            # may forget the newest acknowledgements: those lines repeat, as documented).
            journal.conn.execute("PRAGMA synchronous=NORMAL")
        after = journal.consumer(opts.consumer).acked if opts.consumer else 0
        printed = 0
        if opts.consumer:
            _say(f"consumer {opts.consumer!r} resumes after event {after}")
            acker.resume(after)
            told, after = _tell_losses(journal, opts.consumer, sink, acker, flush, after)
            printed += told
        recordings = {r.id: r for r in journal.recordings()}
        shown_recording: int | None = None
        pace: tuple[float, float] | None = None  # (monotonic, wall_time) of the first record paced
        while not stopping():
            progressed = False
            for rec in journal.records(after, window=window):
                if stopping():
                    break
                if opts.consumer and rec.id > after + 1:
                    # Numbering has no gaps: a jump is a trim that ran while we read (--follow).
                    told, after = _tell_losses(journal, opts.consumer, sink, acker, flush, after)
                    printed += told
                if rec.recording != shown_recording:
                    if rec.recording not in recordings:
                        recordings = {r.id: r for r in journal.recordings()}
                    if rec.recording in recordings:
                        _say(describe_recording(recordings[rec.recording]))
                    shown_recording = rec.recording
                ev = record_event(rec)
                if opts.speed is not None and ev is not None:
                    pace = _wait_for(ev.wall_time, pace, opts.speed, stopping, acker)
                    if stopping():
                        break
                if ev is not None:
                    sink.emit(ev)
                else:
                    untyped.emit(rec)
                flush()
                acker.done(rec.id)
                after = rec.id
                printed += 1
                progressed = True
            acker.commit()  # caught up (or stopping): acknowledge what is written
            if not opts.follow:
                break
            if not progressed:
                _sleep(FOLLOW_POLL_S, stopping)
        acker.commit()
        sink.close()
        if window is not None and not printed:
            since = "the start" if window.since is None else _when(window.since)
            until = "the end" if window.until is None else _when(window.until)
            _say(f"no events from {since} to {until} in {path}")
        return printed
    finally:
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
        journal.close()


def _tell_losses(journal: Journal, consumer: str, sink: EventSink, acker: _Acker, flush: Callable[[], None],
                 after: int) -> tuple[int, int]:
    """Emit (and acknowledge) a loss event for each trim that took events from this consumer
    and that this run has not told yet; returns how many, and the position after them."""
    told = 0
    for loss in journal.consumer_losses(consumer):
        if loss.id in acker.told:
            continue  # told, its acknowledgement not committed yet (file mode batches them)
        _say(f"consumer {consumer!r} lost events {loss.first}-{loss.last} ({loss.count}): "
             "deleted by the journal's hard size cap before it acknowledged them")
        _emit(sink, consumer_loss_event(loss))
        flush()
        acker.loss_told(loss)
        after = max(after, loss.last)
        told += 1
    return told, after


def consumer_loss_event(loss: ConsumerLoss) -> Event:
    """The loss event a consumer gets for events trimmed before it acknowledged them.

    seq and ts_ns are 0: the journal made it, no session numbered or timed it;
    wall_time is when the trim deleted them.
    """
    return Event(seq=0, ts_ns=0, wall_time=loss.wall_time, cls=EventClass.WARN, type=EventType.LOSS,
                 rung="journal", lost=loss.count, lost_total=loss.total,
                 extra={"consumer": loss.consumer, "first_event": loss.first, "last_event": loss.last})


def journal_loss_line(ev: Event) -> Text:
    """A human line for a consumer's journal loss, in the layout of trace's lines."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(time.strftime("%H:%M:%S", time.localtime(ev.wall_time)) + f".{int(ev.wall_time * 1000) % 1000:03d} ")
    t.append(f"{ev.cls.value:<4} {ev.type.value:<9} ", style=CLASS_STYLE[ev.cls])
    t.append("journal", style="bold")
    t.append(f"  {ev.lost} events lost: trimmed (hard size cap) before consumer "
             f"{inert(str(ev.extra.get('consumer')))!r} acknowledged them, events "
             f"{ev.extra.get('first_event')}-{ev.extra.get('last_event')}; {ev.lost_total} lost in all")
    t.append(f"  [{ev.rung}]", style="dim")
    return t


def _emit(sink: EventSink, ev: Event) -> None:
    if ev.rung == "journal" and isinstance(sink, HumanSink):
        sink.console.print(journal_loss_line(ev))
    else:
        sink.emit(ev)


def record_event(rec: JournalRecord) -> Event | None:
    try:
        d = rec.json()
    except ValueError:
        raise JournalError(f"record {rec.id} is not valid JSON") from None
    try:
        return Event.from_json_dict(d)
    except (ValueError, KeyError, TypeError):
        return None


def _sleep(seconds: float, stopping: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not stopping():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, SLEEP_SLICE_S))


def _wait_for(wall: float, pace: tuple[float, float] | None, speed: float, stopping: Callable[[], bool],
              acker: _Acker) -> tuple[float, float]:
    """Hold until the record is due at `speed` times the recorded pace."""
    if pace is None:
        return (time.monotonic(), wall)
    due = pace[0] + (wall - pace[1]) / speed
    if due - time.monotonic() > BATCH_INTERVAL_S:
        acker.commit()  # about to idle: acknowledge first, so a kill now repeats nothing
    _sleep(due - time.monotonic(), stopping)
    return pace
