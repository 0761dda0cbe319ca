"""What the two btrfs points share (btrfs_error, btrfs_dev_stats): the watched
btrfs filesystems that are mounted now, and their member devices.

A btrfs superblock's dev (what mountinfo shows and events carry) is an
anonymous 0:N, not any member's; its log lines name the member device
btrfs calls it by ("device loop0"), and block I/O errors name a member. So
both points map a member's major:minor back to the filesystem here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from fsev.linux.btrfs import Filesystem, Member, filesystem_at
from fsev.linux.mountinfo import Mount, MountTable

FS_TYPE = "btrfs"


@dataclass(frozen=True)
class WatchedBtrfs:
    mount: Mount  # a watched mount of it (the first in the table)
    fs: Filesystem

    @property
    def dev(self) -> str:
        return self.mount.dev


class BtrfsMounts:
    """The watched mounted btrfs filesystems, by their dev and by member dev.
    Read again when the mount table or the watched set changes: one
    BTRFS_IOC_FS_INFO and one BTRFS_IOC_DEV_INFO per member, per new filesystem."""

    def __init__(self, table: MountTable, watched: Callable[[Mount], bool],
                 read: Callable[[str], Filesystem] = filesystem_at) -> None:
        self.table = table
        self.watched = watched
        self.read = read
        self.by_dev: dict[str, WatchedBtrfs] = {}
        self._by_member: dict[str, WatchedBtrfs] = {}
        self.unreadable: dict[str, str] = {}  # mount point -> why its members could not be read
        self._key: tuple[int, int] | None = None

    def refresh(self, watch_generation: int = 0, force: bool = False) -> None:
        key = (self.table.generation, watch_generation)
        if key == self._key and not force:
            return
        self._key = key
        old = self.by_dev
        by_dev: dict[str, WatchedBtrfs] = {}
        self.unreadable = {}
        for m in self.table:
            if m.fs_type != FS_TYPE or m.dev in by_dev or not self.watched(m):
                continue
            known = old.get(m.dev)
            if known is not None and not force:
                by_dev[m.dev] = WatchedBtrfs(m, known.fs)
                continue
            try:
                by_dev[m.dev] = WatchedBtrfs(m, self.read(m.mount_point))
            except OSError as e:
                self.unreadable[m.mount_point] = os.strerror(e.errno) if e.errno else str(e)
        self.by_dev = by_dev
        self._by_member = {mem.dev: w for w in by_dev.values() for mem in w.fs.members if mem.dev}

    def by_member(self, dev: str | None, name: str | None = None) -> tuple[WatchedBtrfs, Member] | None:
        """The filesystem a member device belongs to: by major:minor, else by
        the device name btrfs printed (a path's last part)."""
        w = self._by_member.get(dev) if dev else None
        if w is not None:
            mem = w.fs.member_by_dev(dev)  # type: ignore[arg-type]  # dev is set: w was found by it
            if mem is not None:
                return w, mem
        if name:
            for w in self.by_dev.values():
                for mem in w.fs.members:
                    if os.path.basename(mem.path) == name:
                        return w, mem
        return None
