"""Probe point mount_drop: a mount was dropped (bpf/mount_drop.bpf.c).

Ladder: a kprobe on cleanup_mnt (every drop, when the mount's last reference
goes), else the umount(2) syscall tracepoints joined with inotify.

Without kprobes, fsev sees a mount drop two ways: the umount(2) syscall
tracepoints (who, which path, lazy or not) and inotify's IN_UNMOUNT on the
mount's root (the superblock was really torn down). UnmountTracker, this
point's user-space half, joins them:

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
from fsev.events.device import Device
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType
from fsev.linux.inotify import UnmountWatcher
from fsev.linux.mountinfo import Mount, MountTable
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

NAME = "mount_drop"
# Every drop of a mount, including lazy unmounts and namespace teardown, ends in
# cleanup_mnt(struct mount *) (since 4.x; fs/namespace.c).
MOUNT_DROP_FUNCTION = "cleanup_mnt"
UMOUNT_TRACEPOINTS = ("syscalls:sys_enter_umount", "syscalls:sys_exit_umount")
KPROBE_OFFSETS = ("super_block.s_dev", "mount.mnt.mnt_sb", "mount.mnt_id")


def plan_mount_drop(facts: KernelFacts) -> Rung:
    why = kprobe_skip_reason(facts, (MOUNT_DROP_FUNCTION,))
    if why is None:
        return Rung(
            NAME,
            RungKind.KPROBE,
            (MOUNT_DROP_FUNCTION,),
            gives="every drop of a mount when its last reference goes: umount, lazy umount, namespace teardown",
        )
    skipped = (why,)
    if all(facts.has_tracepoint(t) for t in UMOUNT_TRACEPOINTS):
        return Rung(
            NAME,
            RungKind.TRACEPOINT,
            UMOUNT_TRACEPOINTS,
            gives="successful umount(2) calls (path, flags, caller); superblock teardown "
            "through inotify IN_UNMOUNT (a lazy unmount when its last user lets go)",
            misses="lazy unmounts of a bind mount whose superblock lives on are reported at "
            "detach time; drops in other mount namespaces that fsev never saw; the kernel "
            "filter matches the umount path as the caller spelled it",
            skipped=skipped,
        )
    return Rung(NAME, RungKind.NONE, skipped=skipped + ("tracepoint: syscalls:sys_*_umount not present",))


def describe_umount(ev: Event) -> str:
    bits = ["unmounted"]
    if ev.lazy:
        bits.append("(lazy)")
    if ev.extra.get("superblock_gone"):
        bits.append("superblock torn down")
    if ev.extra.get("cause") == "namespace_teardown":
        bits.append("with its mount namespace")
    return " ".join(bits)


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

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def _still_mounted(self, dev: str) -> bool:
        d = Device.parse(dev)
        return bool(self.table.by_dev(d.major, d.minor))

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None


class UnmountMonitor(PointMonitor):
    """The tracepoint rung's half: umount(2) records joined with IN_UNMOUNT."""

    handles = frozenset({EventType.UMOUNT})

    def __init__(self, ctx: SessionContext, tracker: UnmountTracker) -> None:
        self.ctx = ctx
        self.tracker = tracker
        self._watch_roots()

    def process(self, ev: Event) -> list[Event]:
        got = self.tracker.on_syscall_umount(ev)
        return [got] if got is not None else []  # None: held until the superblock is torn down

    def wake_fds(self) -> list[int]:
        w = self.tracker.watcher
        return [w.fd] if w is not None and w.fd >= 0 else []

    def timeout_ms(self, default: int) -> int:
        # An IN_UNMOUNT waits out its grace before it is an event of its own.
        return min(default, int(INOTIFY_GRACE_S * 1000) + 1) if self.tracker.pending else default

    def _watch_roots(self) -> None:
        """Watch each watched root (every real mount with no --mount)."""
        ctx = self.ctx
        self.tracker.watch([m.mount_point for m in ctx.watched] if not ctx.watch_all else [
            m.mount_point for m in ctx.table if not m.pseudo])

    def mounts_changed(self) -> None:
        # New mounts are watched too; --mount ones were watched at start, and
        # fsev serve's set changes. A root no longer watched keeps its inotify
        # watch: its unmount is then filtered out, like any unwatched event.
        if self.ctx.watch_all or self.ctx.dynamic:
            self._watch_roots()

    def poll(self) -> list[Event]:
        return self.tracker.poll(self.ctx.make_event)

    def close(self) -> None:
        self.tracker.close()


class MountDrop(Point):
    name = NAME
    record_type = RecordType.UMOUNT
    event_type = EventType.UMOUNT
    classes = frozenset({RecordClass.INFO})
    tracepoints = frozenset(UMOUNT_TRACEPOINTS)
    kprobe_functions = frozenset({MOUNT_DROP_FUNCTION})

    switches = {RungKind.KPROBE: "FSEV_MOUNT_DROP_KPROBE", RungKind.TRACEPOINT: "FSEV_MOUNT_DROP_TRACEPOINT"}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_mount_drop(facts)

    def offsets(self, rung: Rung, config: ProgramConfig | None) -> tuple[str, ...]:
        # As ext4_error's: resolved for the kprobe rung whatever the classes.
        return KPROBE_OFFSETS if rung.kind is RungKind.KPROBE else ()

    def describe(self, ev: Event) -> str:
        return describe_umount(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        if EventClass.INFO in ctx.classes and ctx.plan.kind(NAME) is RungKind.TRACEPOINT:
            return UnmountMonitor(ctx, UnmountTracker(ctx.table, UnmountWatcher()))
        return None


POINT = MountDrop()
