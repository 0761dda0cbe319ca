"""The one place events get their seq: in the order fsev emits them.

Events may wait (for fanotify detail, a storm's count, an inotify drop), so a
number is given when an event leaves fsev, never when it is made.
"""

from __future__ import annotations

from fsev.events.event import Event


class EventNumbers:
    def __init__(self) -> None:
        self.last = 0

    def assign(self, ev: Event) -> Event:
        self.last += 1
        ev.seq = self.last
        return ev
