"""A FUSE filesystem whose statfs hangs on demand: a dead NFS server, locally.

Run as a script it is the server (Debian's python3-fusepy, multithreaded so
other calls are answered while statfs hangs):
    python fuse_hang.py MOUNTPOINT FLAG
statfs blocks while the file FLAG (outside the mount) exists. fuse_hang()
mounts it, and undoes everything after, the flag first so that no statfs is
left hanging on an unmounted filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator


def serve(mount_point: str, flag: str) -> None:
    import fusepy  # Debian: python3-fusepy (libfuse2)

    class Hang(fusepy.Operations):
        def getattr(self, path, fh=None):
            if path == "/":
                t = time.time()
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_atime": t, "st_mtime": t, "st_ctime": t}
            raise fusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", ".."]

        def statfs(self, path):
            while os.path.exists(flag):
                time.sleep(0.02)
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1000, "f_bfree": 600, "f_bavail": 500,
                    "f_files": 100, "f_ffree": 50, "f_favail": 50, "f_namemax": 255}

    fusepy.FUSE(Hang(), mount_point, foreground=True, nothreads=False, fsname="fsev-hang")


@dataclass
class FuseHang:
    mount_point: str
    flag: str

    def hang(self) -> None:
        open(self.flag, "w").close()

    def answer(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.flag)


def _mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


@contextlib.contextmanager
def fuse_hang() -> Iterator[FuseHang]:
    work = tempfile.mkdtemp(prefix="fsev-fusehang-")
    mp = os.path.join(work, "mnt")
    flag = os.path.join(work, "hang")
    os.mkdir(mp)
    server = subprocess.Popen([sys.executable, __file__, mp, flag], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fh = FuseHang(mp, flag)
    try:
        deadline = time.monotonic() + 15
        while not _mounted(mp):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("FUSE server did not come up: " + (server.stderr.read().decode()  # type: ignore[union-attr]
                                                                      if server.poll() is not None else "timeout"))
            time.sleep(0.05)
        yield fh
    finally:
        fh.answer()
        # Imported here: this file is also the FUSE server's script, run alone.
        from support.fuse_disk import stop_fuse_server

        stop_fuse_server(server, mp, work)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
