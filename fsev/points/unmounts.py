"""Mount drops on the tracepoint rung: umount(2) records joined with inotify.

Without kprobes, fsev sees a mount drop two ways: the umount(2) syscall
tracepoints (who, which path, lazy or not) and inotify's IN_UNMOUNT on the
mount's root (the superblock was really torn down). This joins them:

- a plain umount: reported at once from the syscall record; the IN_UNMOUNT
  that follows for the same device is absorbed;
- a lazy umount whose superblock has no other mount: held until IN_UNMOUNT,
  i.e. until the last user lets go (what cleanup_mnt would show);
- a lazy umount of a bind mount whose superblock lives on: reported at once
  (no IN_UNMOUNT will come);
- an IN_UNMOUNT no syscall record claims: reported on its own (rung inotify).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.linux.inotify import UnmountWatcher
from fsev.linux.mountinfo import Mount, MountTable

# IN_UNMOUNT arrives during umount(2), before the syscall's exit record: hold
# it this long so the record can claim it.
INOTIFY_GRACE_S = 0.05
CLAIM_WINDOW_S = 1.0


@dataclass
class _Pending:
    seen: float
    root: str
    mount: Mount | None


class UnmountTracker:
    def __init__(self, table: MountTable, watcher: UnmountWatcher | None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.watcher = watcher
        self.now = now
        self._pending: list[_Pending] = []
        self._claimed: dict[str, float] = {}  # dev -> when a syscall record reported it
        self._held_lazy: dict[str, Event] = {}

    def watch(self, mount_points: list[str]) -> None:
        if self.watcher is None:
            return
        have = self.watcher.watching()
        for mp in mount_points:
            if mp not in have:
                self.watcher.watch(mp)

    def on_syscall_umount(self, ev: Event) -> Event | None:
        """A decoded, enriched umount(2) record: the event to emit now, or None if held."""
        if ev.dev is None:
            return ev
        if ev.lazy and self.watcher is not None and not self._still_mounted(ev.dev):
            self._held_lazy[ev.dev] = ev
            return None
        self._claimed[ev.dev] = self.now()
        return ev

    def on_root_gone(self, root: str) -> None:
        """Feed one IN_UNMOUNT (read() does this from the watcher)."""
        m = self.table.by_mount_point(root) or self.table.departed_by_mount_point(root)
        self._pending.append(_Pending(self.now(), root, m))

    def poll(self, make_event: Callable[..., Event]) -> list[Event]:
        """Events due now. make_event(**fields) builds a user-space event."""
        if self.watcher is not None:
            for root in self.watcher.read():
                self.on_root_gone(root)
        now = self.now()
        out: list[Event] = []
        keep: list[_Pending] = []
        for p in self._pending:
            if now - p.seen < INOTIFY_GRACE_S:
                keep.append(p)
                continue
            dev = p.mount.dev if p.mount else None
            held = self._held_lazy.pop(dev, None) if dev else None
            if held is not None:
                held.extra["superblock_gone"] = True
                out.append(held)
            elif dev is None or self._claimed.get(dev, -1e18) < p.seen - CLAIM_WINDOW_S:
                m = p.mount
                out.append(make_event(
                    cls=EventClass.INFO, type=EventType.UMOUNT, rung="inotify", mount_point=p.root, dev=dev,
                    fs_type=m.fs_type if m else None, source=m.source if m else None,
                    mnt_id=m.mnt_id if m else None, extra={"superblock_gone": True},
                ))
        self._pending = keep
        for dev, t in list(self._claimed.items()):
            if now - t > 10 * CLAIM_WINDOW_S:
                del self._claimed[dev]
        return out

    def _still_mounted(self, dev: str) -> bool:
        major, _, minor = dev.partition(":")
        return bool(self.table.by_dev(int(major), int(minor)))

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
