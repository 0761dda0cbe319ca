"""The event feed of `fsev top`: what it keeps, and the `/` filter over it."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterator

from fsev.events import Event, EventClass

FEED_MAX = 1000
FEED_PER_DEV = 200
FEED_DEVS = 64
_CLASS_NAMES = {c.value: c for c in EventClass}


@dataclass
class Filter:
    """`/` filter: words naming a class (err, warn, info, thr) or a part of a mount point."""

    text: str = ""

    @property
    def classes(self) -> frozenset[EventClass]:
        return frozenset(_CLASS_NAMES[w] for w in self.text.split() if w in _CLASS_NAMES)

    @property
    def mount_parts(self) -> tuple[str, ...]:
        return tuple(w for w in self.text.split() if w not in _CLASS_NAMES)

    def mount_ok(self, mount_point: str | None) -> bool:
        parts = self.mount_parts
        return not parts or any(p in (mount_point or "") for p in parts)

    def event_ok(self, ev: Event) -> bool:
        cls = self.classes
        return (not cls or ev.cls in cls) and self.mount_ok(ev.mount_point or ev.path)


class Feed:
    """The latest events, and the latest of each superblock apart.

    A mount flooding errors pushes everything else out of one shared ring in
    a fraction of a second; filtering the screen to a quiet mount must still
    show that mount's events, so each device keeps its own short ring too.
    """

    def __init__(self, size: int = FEED_MAX, per_dev: int = FEED_PER_DEV) -> None:
        self.size, self.per_dev = size, per_dev
        self.all: collections.deque[tuple[int, Event]] = collections.deque(maxlen=size)
        self.by_dev: collections.OrderedDict[str, collections.deque[tuple[int, Event]]] = collections.OrderedDict()
        self.n = 0  # arrival order: historical entries carry old times, so time cannot order the feed

    def add(self, ev: Event) -> None:
        self.n += 1
        item = (self.n, ev)
        self.all.append(item)
        if ev.dev:
            ring = self.by_dev.get(ev.dev)
            if ring is None:
                ring = self.by_dev[ev.dev] = collections.deque(maxlen=self.per_dev)
                if len(self.by_dev) > FEED_DEVS:
                    self.by_dev.popitem(last=False)
            else:
                self.by_dev.move_to_end(ev.dev)
            ring.append(item)

    def __len__(self) -> int:
        return len(self.all)

    def __iter__(self) -> Iterator[Event]:
        return (ev for _, ev in self.all)

    def copy(self) -> "Feed":
        f = Feed(self.size, self.per_dev)
        f.all = collections.deque(self.all, maxlen=self.size)
        f.by_dev = collections.OrderedDict(
            (d, collections.deque(r, maxlen=self.per_dev)) for d, r in self.by_dev.items())
        f.n = self.n
        return f

    def newest(self, limit: int, flt: "Filter") -> list[Event]:
        """Newest first, at most `limit`, through the filter."""
        rings: list[collections.deque[tuple[int, Event]]] = [self.all]
        if flt.text:
            rings += self.by_dev.values()
        seen: set[int] = set()
        picked: list[tuple[int, Event]] = []
        for ring in rings:
            k = 0
            for item in reversed(ring):
                if k >= limit:
                    break
                if flt.event_ok(item[1]):
                    k += 1
                    if item[0] not in seen:
                        seen.add(item[0])
                        picked.append(item)
        picked.sort(key=lambda it: it[0], reverse=True)
        return [ev for _, ev in picked[:limit]]
