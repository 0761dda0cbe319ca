"""UnmountTracker: joining umount(2) records with inotify IN_UNMOUNT (no root)."""

from __future__ import annotations

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import MountTable, parse_mountinfo
from fsev.points.mount_drop import INOTIFY_GRACE_S, UnmountTracker

ROOT = "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
TMPFS = "45 22 0:39 / /mnt/t rw - tmpfs tmpfs rw\n"
BIND = "46 22 0:39 / /mnt/b rw - tmpfs tmpfs rw\n"


class FakeWatcher:
    def __init__(self) -> None:
        self.gone: list[str] = []
        self.watched: set[str] = set()

    def watch(self, mp: str) -> bool:
        self.watched.add(mp)
        return True

    def watching(self) -> set[str]:
        return set(self.watched)

    def read(self) -> list[str]:
        out, self.gone = self.gone, []
        return out

    def close(self) -> None:
        pass


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def setup(mounts: str):
    table = MountTable(parse_mountinfo(ROOT + mounts))
    w, clock = FakeWatcher(), Clock()
    return table, w, clock, UnmountTracker(table, w, now=clock)  # type: ignore[arg-type]


def syscall_event(lazy: bool) -> Event:
    return Event(0, 1, 1.0, EventClass.INFO, EventType.UMOUNT, "tracepoint", dev="0:39", mount_point="/mnt/t",
                 path="/mnt/t", lazy=lazy, pid=7, comm="umount")


def make(**kw) -> Event:
    return Event(seq=1, ts_ns=2, wall_time=3.0, **kw)


def test_plain_umount_is_reported_at_once_and_absorbs_in_unmount():
    table, w, clock, tr = setup(TMPFS)
    table._index(parse_mountinfo(ROOT))  # the mount is gone
    assert tr.on_syscall_umount(syscall_event(lazy=False)) is not None
    w.gone.append("/mnt/t")
    assert tr.poll(make) == []
    clock.t += INOTIFY_GRACE_S * 2
    assert tr.poll(make) == []


def test_lazy_umount_is_held_until_the_superblock_goes():
    table, w, clock, tr = setup(TMPFS)
    table._index(parse_mountinfo(ROOT))
    assert tr.on_syscall_umount(syscall_event(lazy=True)) is None
    clock.t += 5
    assert tr.poll(make) == []  # the last user still holds it
    w.gone.append("/mnt/t")
    assert tr.poll(make) == []  # within the grace period
    clock.t += INOTIFY_GRACE_S * 2
    out = tr.poll(make)
    assert len(out) == 1 and out[0].comm == "umount" and out[0].lazy and out[0].extra["superblock_gone"]


def test_lazy_umount_of_a_bind_mount_is_reported_at_detach():
    table, w, clock, tr = setup(TMPFS + BIND)
    table._index(parse_mountinfo(ROOT + BIND))  # /mnt/t gone, /mnt/b keeps the superblock
    assert tr.on_syscall_umount(syscall_event(lazy=True)) is not None


def test_in_unmount_without_a_syscall_is_reported_on_its_own():
    table, w, clock, tr = setup(TMPFS)
    table._index(parse_mountinfo(ROOT))
    w.gone.append("/mnt/t")
    tr.poll(make)
    clock.t += INOTIFY_GRACE_S * 2
    out = tr.poll(make)
    assert [(e.rung, e.mount_point, e.dev, e.fs_type) for e in out] == [("inotify", "/mnt/t", "0:39", "tmpfs")]
