"""What the user asked to watch: --mount and --events, validated into values."""

from __future__ import annotations

import os

from fsev.errors import FsevError
from fsev.events import ALL_CLASSES, EventClass
from fsev.linux.mountinfo import Mount, MountTable


def parse_classes(text: str | None) -> frozenset[EventClass]:
    if text is None or not text.strip():
        return ALL_CLASSES
    out: set[EventClass] = set()
    valid = ", ".join(c.value for c in EventClass)
    for part in text.split(","):
        name = part.strip().lower()
        if name == "all":
            return ALL_CLASSES
        try:
            out.add(EventClass(name))
        except ValueError:
            raise FsevError(f"unknown event class {part.strip()!r}: choose from {valid}") from None
    return frozenset(out)


def resolve_mounts(paths: list[str], table: MountTable) -> list[Mount]:
    """Each --mount must name an existing mount point (symlinks resolved)."""
    mounts: list[Mount] = []
    for p in paths:
        if not os.path.exists(p):
            raise FsevError(f"--mount {p}: no such file or directory")
        real = os.path.realpath(p)
        m = table.by_mount_point(real)
        if m is None:
            host = table.containing(real)
            where = f" (it is on {host.mount_point})" if host else ""
            raise FsevError(f"--mount {p}: not a mount point{where}")
        if m not in mounts:
            mounts.append(m)
    return mounts
