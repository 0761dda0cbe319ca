"""The mount table, from /proc/self/mountinfo: device -> mount point(s), fs type, source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from fsev.events.device import Device

# Pseudo filesystems that a user watching disk health rarely wants listed.
PSEUDO_FS_TYPES = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "devpts", "securityfs", "cgroup", "cgroup2",
        "pstore", "bpf", "tracefs", "debugfs", "configfs", "fusectl", "mqueue",
        "hugetlbfs", "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "efivarfs",
    }
)


@dataclass(frozen=True)
class Mount:
    mnt_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]

    @property
    def dev(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options

    @property
    def pseudo(self) -> bool:
        return self.fs_type in PSEUDO_FS_TYPES


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> Mount:
    """One line of proc(5) mountinfo; ValueError on a malformed line."""
    left, sep, right = line.rstrip("\n").partition(" - ")
    if not sep:
        raise ValueError(f"mountinfo line without separator: {line!r}")
    a = left.split(" ")
    b = right.split(" ")
    if len(a) < 6 or len(b) < 2:
        raise ValueError(f"mountinfo line too short: {line!r}")
    dev = Device.parse(a[2])
    return Mount(
        mnt_id=int(a[0]),
        parent_id=int(a[1]),
        major=dev.major,
        minor=dev.minor,
        root=_unescape(a[3]),
        mount_point=_unescape(a[4]),
        options=tuple(a[5].split(",")),
        fs_type=b[0],
        source=_unescape(b[1]),
        super_options=tuple(b[2].split(",")) if len(b) > 2 else (),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    return [parse_mountinfo_line(l) for l in text.splitlines() if l.strip()]


class MountTable:
    """Lookups by device, mount id and path over one snapshot of mountinfo.

    refresh() re-reads it; the previous snapshot is kept so that an event about
    a mount that just went away (an unmount) can still be named.
    """

    def __init__(self, mounts: Iterable[Mount] = (), path: str = "/proc/self/mountinfo") -> None:
        self._path = path
        self.generation = 0  # bumped by every refresh, so caches know to forget
        self._mounts: list[Mount] = []
        self._gone: dict[int, Mount] = {}
        self._index(list(mounts))

    @classmethod
    def read(cls, path: str = "/proc/self/mountinfo") -> "MountTable":
        t = cls(path=path)
        t.refresh()
        return t

    def _index(self, mounts: list[Mount]) -> None:
        self.generation += 1
        for m in self._mounts:
            self._gone[m.mnt_id] = m
        self._mounts = mounts
        self._by_id = {m.mnt_id: m for m in mounts}
        self._by_dev: dict[tuple[int, int], list[Mount]] = {}
        for m in mounts:
            self._by_dev.setdefault((m.major, m.minor), []).append(m)
            self._gone.pop(m.mnt_id, None)
        if len(self._gone) > 4096:  # bounded memory of departed mounts
            for k in list(self._gone)[: len(self._gone) - 4096]:
                del self._gone[k]

    def refresh(self) -> None:
        with open(self._path, encoding="utf-8", errors="surrogateescape") as f:
            self._index(parse_mountinfo(f.read()))

    def __iter__(self) -> Iterator[Mount]:
        return iter(self._mounts)

    def __len__(self) -> int:
        return len(self._mounts)

    def by_dev(self, major: int, minor: int) -> list[Mount]:
        return self._by_dev.get((major, minor), [])

    def by_id(self, mnt_id: int) -> Mount | None:
        return self._by_id.get(mnt_id) or self._gone.get(mnt_id)

    def departed_by_dev(self, major: int, minor: int) -> list[Mount]:
        return [m for m in self._gone.values() if (m.major, m.minor) == (major, minor)]

    def by_mount_point(self, path: str) -> Mount | None:
        """The topmost mount at exactly this path (the last one mounted there)."""
        found = None
        for m in self._mounts:
            if m.mount_point == path:
                found = m
        return found

    def departed_by_mount_point(self, path: str) -> Mount | None:
        found = None
        for m in self._gone.values():
            if m.mount_point == path:
                found = m
        return found

    def containing(self, path: str) -> Mount | None:
        """The mount a path lives on (longest matching mount point)."""
        real = os.path.realpath(path)
        best: Mount | None = None
        for m in self._mounts:
            mp = m.mount_point
            if real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/":
                if best is None or len(mp) >= len(best.mount_point):
                    best = m
        return best
