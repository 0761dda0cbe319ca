"""Loop-mounted XFS images, made by mkfs.xfs and damaged by xfs_db -x, for the
XFS points' kernel tests. Everything made here is undone, even when the test
fails: the mount, the loop device, the image (sparse: 320 MB cost nothing)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fsev.testing.kernel_rig import loop_image, run

SIZE_MB = 320  # mkfs.xfs refuses filesystems under 300 MB
FILES_IN_DIR = 40  # enough that /d is a block directory (one dir3 data block)


@dataclass
class Xfs:
    image: str
    loop: str
    mount_point: str
    inodes: dict[str, int]  # path below the root -> inode number, as populated

    @property
    def dev(self) -> str:
        st = os.stat(self.loop)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def path(self, rel: str) -> str:
        return os.path.join(self.mount_point, rel)


def _populate(mp: str) -> dict[str, int]:
    os.mkdir(os.path.join(mp, "d"))
    for i in range(FILES_IN_DIR):
        Path(mp, "d", f"file{i}").write_text(str(i))
    Path(mp, "f").write_text("hello")
    return {rel: os.stat(os.path.join(mp, rel)).st_ino for rel in ("d", "f")}


@contextlib.contextmanager
def xfs(*damage: str, mount: bool = True) -> Iterator[Xfs]:
    """A loop-mounted XFS with /d (a directory of FILES_IN_DIR files) and /f.
    damage: xfs_db commands run (-x) on the unmounted filesystem before it is
    mounted again; "{d}" and "{f}" stand for those inode numbers."""
    with loop_image(SIZE_MB, ("mkfs.xfs", "-q", "-f"), "fsev-xfs-") as (image, loop, mp):
        run("mount", loop, mp)
        inodes = _populate(mp)
        run("umount", mp)
        if damage:
            cmds = [c.format(**inodes) for c in damage]
            run("xfs_db", "-x", *[a for c in cmds for a in ("-c", c)], loop)
        if mount:
            run("mount", loop, mp)
        yield Xfs(image, loop, mp, inodes)
