"""Enrichment: the mount an event concerns, named from the mount table."""

from __future__ import annotations

from fsev.events import Event
from fsev.linux.device import Device
from fsev.linux.mountinfo import Mount, MountTable


def with_mount(ev: Event, m: Mount | None) -> Event:
    """Fill the mount fields in place (events are fresh values at this point)."""
    if m is not None:
        ev.mount_point = m.mount_point
        ev.fs_type = m.fs_type
        ev.source = m.source
        ev.dev = ev.dev or m.dev
        if ev.mnt_id is None:
            ev.mnt_id = m.mnt_id
    return ev


class Enricher:
    """Names the mount an event concerns, preferring the mounts the user watches."""

    def __init__(self, table: MountTable, watched_mount_points: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.watched = watched_mount_points
        # A flood of errors names the same mount again and again: remember the
        # answer until the mount table changes.
        self._cache: dict[tuple[str | None, int | None, str | None], Mount | None] = {}
        self._generation = table.generation

    def _pick(self, mounts: list[Mount]) -> Mount | None:
        if not mounts:
            return None
        for m in mounts:
            if m.mount_point in self.watched:
                return m
        return mounts[0]

    def mount_for(self, ev: Event) -> Mount | None:
        if ev.mnt_id is not None:
            m = self.table.by_id(ev.mnt_id)
            if m is not None:
                return m
        if ev.path is not None:
            m = self.table.by_mount_point(ev.path) or self.table.departed_by_mount_point(ev.path)
            if m is not None:
                return m
        if ev.dev is not None:
            d = Device.parse(ev.dev)
            return self._pick(self.table.by_dev(d.major, d.minor)) or self._pick(
                self.table.departed_by_dev(d.major, d.minor))
        return None

    def enrich(self, ev: Event) -> Event:
        if self._generation != self.table.generation:
            self._cache.clear()
            self._generation = self.table.generation
        key = (ev.dev, ev.mnt_id, ev.path)
        try:
            m = self._cache[key]
        except KeyError:
            m = self._cache[key] = self.mount_for(ev)
        return with_mount(ev, m)
