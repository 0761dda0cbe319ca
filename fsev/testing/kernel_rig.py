"""Real-kernel test material: tmpfs and loop-mounted ext4, a running `fsev trace`.

Everything here cleans up after itself, even when the test using it fails:
mounts are unmounted (lazily as a last resort), loop devices detached, and
processes started here are ended by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

FSEV = str(Path(sys.executable).parent / "fsev")


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


def is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


def unmount(path: str) -> None:
    for args in (("umount", path), ("umount", "-l", path)):
        if not is_mounted(path):
            return
        run(*args, check=False)


@contextlib.contextmanager
def tmpfs(size: str = "8m", prefix: str = "fsev-tmpfs-") -> Iterator[str]:
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", d)
        yield d
    finally:
        unmount(d)
        with contextlib.suppress(OSError):
            os.rmdir(d)


@contextlib.contextmanager
def loop_image(size_mb: int, mkfs: tuple[str, ...], prefix: str) -> Iterator[tuple[str, str, str]]:
    """(image, loop device, mount point) of a fresh sparse image made by
    `mkfs ... IMAGE`, on a loop device of its own, not mounted. Afterwards
    the mount point is unmounted, the loop device detached and the files
    removed (never recursively: a mount that would not go keeps its files)."""
    work = tempfile.mkdtemp(prefix=prefix)
    image, mp = os.path.join(work, "fs.img"), os.path.join(work, "mnt")
    os.mkdir(mp)
    loop = ""
    try:
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        run(*mkfs, image)
        loop = run("losetup", "-f", "--show", image).stdout.strip()
        yield image, loop, mp
    finally:
        unmount(mp)
        if loop:
            run("losetup", "-d", loop, check=False)
        with contextlib.suppress(OSError):
            os.unlink(image)
        for d in (mp, work):
            with contextlib.suppress(OSError):
                os.rmdir(d)


@dataclass
class Ext4:
    image: str
    loop: str
    mount_point: str

    @property
    def name(self) -> str:
        return os.path.basename(self.loop)

    @property
    def dev(self) -> str:
        st = os.stat(self.loop)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def sysfs(self, attr: str) -> str:
        return Path(f"/sys/fs/ext4/{self.name}/{attr}").read_text().strip()

    def trigger_errors(self, n: int = 1) -> None:
        """Raise n real ext4 errors (function trigger_test_error)."""
        with open(f"/sys/fs/ext4/{self.name}/trigger_fs_error", "w") as f:
            for _ in range(n):
                f.write("fsev test\n")
                f.flush()


@contextlib.contextmanager
def ext4(size_mb: int = 32, options: str = "errors=continue", corrupt_dir: bool = False) -> Iterator[Ext4]:
    """A loop-mounted ext4. corrupt_dir: /d's directory block holds random bytes,
    so listing it raises a real ext4 error in htree_dirblock_to_tree."""
    with loop_image(size_mb, ("mkfs.ext4", "-q", "-F", "-b", "4096"), "fsev-ext4-") as (image, loop, mp):
        if corrupt_dir:
            run("mount", loop, mp)
            os.mkdir(os.path.join(mp, "d"))
            for i in range(20):
                Path(mp, "d", f"f{i}").write_text("x")
            run("umount", mp)
            blocks = run("debugfs", "-R", "blocks /d", loop).stdout.split()
            with open(loop, "r+b") as dev:
                dev.seek(int(blocks[0]) * 4096)
                dev.write(os.urandom(4096))
                dev.flush()
                os.fsync(dev.fileno())
        run("mount", "-o", options, loop, mp)
        yield Ext4(image, loop, mp)


def fsev_prog_ids(pid: int) -> set[int]:
    """IDs of the BPF programs process pid holds open (from /proc/PID/fdinfo,
    since Debian's bpftool cannot show owning pids)."""
    ids: set[int] = set()
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            text = Path(fdinfo, fd).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def live_prog_ids() -> set[int]:
    out = run("bpftool", "-j", "prog", "list", check=False).stdout or "[]"
    return {p["id"] for p in json.loads(out)}


@dataclass
class FsevTrace:
    """A running `fsev trace --json`, its output collected by reader threads."""

    args: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen = field(init=False)
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [FSEV, "trace", "--json", *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **(self.env or {})},
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str], sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_attached(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any("attached in" in l for l in self.stderr_lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError("fsev trace did not attach:\n" + "".join(self.stderr_lines))

    def events(self) -> list[dict]:
        return [json.loads(l) for l in list(self.stdout_lines) if l.strip()]

    def wait_for(self, pred: Callable[[list[dict]], object], timeout: float = 10) -> list[dict]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            evs = self.events()
            if pred(evs):
                return evs
            time.sleep(0.02)
        return self.events()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "FsevTrace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
