"""A disk that fails on demand: a one-file FUSE filesystem serving a 64 MiB
in-memory image whose armed byte ranges answer EIO, with a loop device on it.

There is no device-mapper, null_blk or scsi_debug on the test kernel; FUSE is
built in. Run as a script it is the FUSE server (Debian's python3-fusepy):
    python fuse_disk.py MOUNTPOINT
It serves `disk` (the image) and `ctl`: writing "read START LEN", "write
START LEN" or "off" to ctl arms or disarms a byte range.
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

from fsev.testing.kernel_rig import unmount

SIZE = 64 << 20


def serve(mount_point: str) -> None:
    import fusepy  # Debian: python3-fusepy (libfuse2)

    class Disk(fusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.data = bytearray(SIZE)
            self.armed = {"read": (0, 0), "write": (0, 0)}
            self.now = time.time_ns()

        def _hit(self, kind: str, off: int, size: int) -> bool:
            start, length = self.armed[kind]
            return length > 0 and off < start + length and start < off + size

        def getattr(self, path, fh=None):
            t = self.now
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_atime": t, "st_mtime": t, "st_ctime": t}
            if path in ("/disk", "/ctl"):
                size = SIZE if path == "/disk" else 0
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size,
                        "st_atime": t, "st_mtime": t, "st_ctime": t}
            raise fusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", "disk", "ctl"]

        def open(self, path, flags):
            return 0

        def truncate(self, path, length, fh=None):
            return 0

        def read(self, path, size, offset, fh):
            if path != "/disk":
                return b""
            if self._hit("read", offset, size):
                raise fusepy.FuseOSError(errno.EIO)
            return bytes(self.data[offset:offset + size])

        def write(self, path, buf, offset, fh):
            if path == "/ctl":
                words = buf.decode().split()
                if words and words[0] in self.armed:
                    self.armed[words[0]] = (int(words[1]), int(words[2]))
                else:
                    self.armed = {"read": (0, 0), "write": (0, 0)}
                return len(buf)
            if self._hit("write", offset, len(buf)):
                raise fusepy.FuseOSError(errno.EIO)
            self.data[offset:offset + len(buf)] = buf
            return len(buf)

        def fsync(self, path, datasync, fh):
            return 0

        def flush(self, path, fh):
            return 0

    # direct_io: every read reaches this process, none is served from the page cache.
    fusepy.FUSE(Disk(), mount_point, foreground=True, nothreads=True, direct_io=True)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


@dataclass
class FuseDisk:
    fuse_dir: str
    loop: str
    server: subprocess.Popen

    def arm(self, kind: str, start: int, length: int) -> None:
        with open(os.path.join(self.fuse_dir, "ctl"), "w") as f:
            f.write(f"{kind} {start} {length}")

    def disarm(self) -> None:
        with open(os.path.join(self.fuse_dir, "ctl"), "w") as f:
            f.write("off")

    @property
    def dev(self) -> str:
        st = os.stat(self.loop)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def stop_fuse_server(server: subprocess.Popen, mount_point: str, work: str) -> None:
    """Unmount a test's FUSE filesystem (lazily as a last resort), end its
    server by PID, remove its directories: whatever state the test left."""
    if mounted(mount_point):
        subprocess.run(["umount", mount_point], capture_output=True)
        if mounted(mount_point):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    for d in (mount_point, work):
        with contextlib.suppress(OSError):
            os.rmdir(d)


BLOCK = 4096  # the ext4 block size the tests make, so byte ranges are block * BLOCK


@contextlib.contextmanager
def fresh_ext4(disk: FuseDisk, options: str, files: int = 0) -> Iterator[str]:
    """A fresh ext4 on the FUSE disk, with /d/f0.. created, mounted with
    options after a remount and a flush, so no inode or block of it is cached.
    Inode numbers are known: 12 is /d, 13 + i is /d/f<i>."""
    disk.disarm()
    mp = tempfile.mkdtemp(prefix="fsev-fuse-ext4-")
    try:
        # No lazy init: its zeroing (write-zeroes, which FUSE refuses) would
        # fail requests of its own.
        _run("mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
             disk.loop)
        _run("mount", disk.loop, mp)
        if files:
            os.mkdir(os.path.join(mp, "d"))
            for i in range(files):
                open(os.path.join(mp, "d", f"f{i}"), "w").close()
        _run("umount", mp)
        _run("mount", "-o", options, disk.loop, mp)
        _run("blockdev", "--flushbufs", disk.loop)
        yield mp
    finally:
        disk.disarm()
        unmount(mp)
        os.rmdir(mp)


def itable_block(disk: FuseDisk, ino: int) -> int:
    """The inode table block that holds inode ino (debugfs)."""
    out = _run("debugfs", "-R", f"imap <{ino}>", disk.loop).stdout
    return int(out.split("located at block")[1].split(",")[0])


def journal_extents(disk: FuseDisk) -> list[tuple[int, int]]:
    """The journal's (first block, count) extents (debugfs)."""
    ext = _run("debugfs", "-R", "stat <8>", disk.loop).stdout.split("EXTENTS:")[1].split()
    out = []
    for part in ext:
        first, _, last = part.split(":")[1].rstrip(",").partition("-")
        out.append((int(first), int(last or first) - int(first) + 1))
    return out


@contextlib.contextmanager
def fuse_disk() -> Iterator[FuseDisk]:
    """A FUSE-served image with a loop device on it; everything is undone after."""
    work = tempfile.mkdtemp(prefix="fsev-fuse-")
    fuse_dir = os.path.join(work, "fuse")
    os.mkdir(fuse_dir)
    server = subprocess.Popen([sys.executable, __file__, fuse_dir], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    loop = ""
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(fuse_dir, "disk")):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("FUSE disk did not come up: " + (server.stderr.read().decode()
                                                                    if server.poll() is not None else "timeout"))
            time.sleep(0.05)
        loop = _run("losetup", "-f", "--show", os.path.join(fuse_dir, "disk")).stdout.strip()
        yield FuseDisk(fuse_dir, loop, server)
    finally:
        if loop:
            _run("losetup", "-d", loop, check=False)
        stop_fuse_server(server, fuse_dir, work)


if __name__ == "__main__":
    serve(sys.argv[1])
