"""How events leave fsev: one line each, human (rich) or JSON."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Protocol

from fsev.events import Event, EventClass, EventType
from fsev.events.inert import inert
from fsev.events.json_line import event_json

if TYPE_CHECKING:
    # Imported where a human line is made: `fsev trace --json` never needs
    # rich, and its 17 ms of imports came before the session's start.
    from rich.console import Console
    from rich.text import Text

CLASS_STYLE = {
    EventClass.ERR: "bold red",
    EventClass.WARN: "yellow",
    EventClass.THR: "magenta",
    EventClass.INFO: "dim",
}


# Where a loss event's events were dropped (its rung): docs/events.md.
_LOSS_WHERE = {
    "ringbuf": "ring buffer full",
    "listener": "this listener's queue was full",
    "journal": "trimmed from the journal before this consumer acknowledged them",
}


class EventSink(Protocol):
    def emit(self, ev: Event) -> None: ...
    def close(self) -> None: ...


class JsonSink:
    """One JSON object per line (schema: docs/events.md)."""

    def __init__(self, stream: IO[str] | None = None, flush_each: bool = True) -> None:
        """flush_each False: lines wait in the stream's buffer until flush()
        (fsev trace calls it before each wait for more: TraceSession.events' before_wait)."""
        self.stream = stream or sys.stdout
        self.flush_each = flush_each

    def emit(self, ev: Event) -> None:
        # The same text as json.dumps(ev.to_json_dict(), separators=(",", ":")),
        # serialised once however many sinks take the event (fsev/events/json_line.py).
        self.stream.write(event_json(ev) + "\n")
        if self.flush_each:
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def describe(ev: Event) -> str:
    """The event-specific part of a human line."""
    if ev.type is EventType.LOSS:
        return f"{ev.lost} events lost ({_LOSS_WHERE.get(ev.rung, ev.rung)}), {ev.lost_total} since start"
    # Imported here: every probe point's module, which a JSON stream (a
    # service's listener, ready in a fraction of a second) never needs.
    from fsev.points.registry import describe as describe_point

    return describe_point(ev)


def human_line(ev: Event) -> Text:
    from rich.text import Text

    t = Text(no_wrap=True, overflow="ellipsis")
    clock = time.strftime("%H:%M:%S", time.localtime(ev.wall_time)) + f".{int(ev.wall_time * 1000) % 1000:03d}"
    t.append(clock + " ")
    t.append(f"{ev.cls.value:<4} ", style=CLASS_STYLE[ev.cls])
    t.append(f"{ev.type.value:<9} ", style=CLASS_STYLE[ev.cls])
    where = inert(ev.mount_point or ev.path or "?")
    meta = ", ".join(x for x in (inert(ev.fs_type), ev.dev) if x)
    t.append(where, style="bold")
    if meta:
        t.append(f" ({meta})")
    t.append("  " + inert(describe(ev)))
    if ev.pid is not None:
        t.append(f"  pid {ev.pid} {inert(ev.comm)}", style="cyan")
    t.append(f"  [{ev.rung}]", style="dim")
    return t


class HumanSink:
    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(highlight=False, soft_wrap=True)

    def emit(self, ev: Event) -> None:
        self.console.print(human_line(ev))

    def close(self) -> None:
        pass
