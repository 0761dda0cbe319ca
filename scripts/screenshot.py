"""Regenerate docs/top.svg: a real `fsev top` screen, not a drawing.

Sets up a small scene on this machine (root, real kernel): an ext4 whose
superblock already recorded errors before fsev starts, an ext4 with a corrupted
directory block that is read while fsev watches, a tmpfs filled past its L1
free-space level; runs the installed `fsev top` in tmux, captures the pane with
its colours and turns it into SVG with rich's export_svg. Everything it mounts,
attaches and starts is undone on the way out.

    sudo /opt/fsev/venv/bin/python scripts/screenshot.py [--out docs/top.svg]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.text import Text

from fsev.testing.kernel_rig import run, unmount
from fsev.testing.tmux_top import TmuxTop

ROOT = Path(__file__).resolve().parent.parent

DEMO = Path("/srv/fsev-demo")
WIDTH, HEIGHT = 132, 22


@contextlib.contextmanager
def ext4_at(mp: Path, size_mb: int = 64, corrupt_dir: bool = False) -> Iterator[str]:
    """A loop-mounted ext4 at mp; yields its block device name (loopN)."""
    image = mp.with_suffix(".img")
    mp.mkdir(parents=True)
    loop = ""
    try:
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", str(image))
        loop = run("losetup", "-f", "--show", str(image)).stdout.strip()
        if corrupt_dir:
            run("mount", loop, str(mp))
            (mp / "d").mkdir()
            for i in range(20):
                (mp / "d" / f"f{i}").write_text("x")
            run("umount", str(mp))
            block = int(run("debugfs", "-R", "blocks /d", loop).stdout.split()[0])
            with open(loop, "r+b") as dev:
                dev.seek(block * 4096)
                dev.write(os.urandom(4096))
                os.fsync(dev.fileno())
        run("mount", "-o", "errors=continue", loop, str(mp))
        yield os.path.basename(loop)
    finally:
        unmount(str(mp))
        if loop:
            run("losetup", "-d", loop, check=False)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mp.rmdir()


@contextlib.contextmanager
def tmpfs_at(mp: Path, size: str) -> Iterator[None]:
    mp.mkdir(parents=True)
    try:
        run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mp))
        yield
    finally:
        unmount(str(mp))
        with contextlib.suppress(OSError):
            mp.rmdir()


def trigger(name: str, n: int = 1) -> None:
    with open(f"/sys/fs/ext4/{name}/trigger_fs_error", "w") as f:
        for _ in range(n):
            f.write("demo\n")
            f.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "top.svg"))
    out = Path(ap.parse_args().out)
    if os.geteuid() != 0:
        sys.exit("screenshot: run as root (it mounts filesystems and runs fsev top)")
    if DEMO.exists():
        sys.exit(f"screenshot: {DEMO} exists; remove it first")
    DEMO.mkdir(parents=True)
    try:
        with ext4_at(DEMO / "archive") as archive, ext4_at(DEMO / "data", corrupt_dir=True) as data, \
                tmpfs_at(DEMO / "scratch", "64m"):
            trigger(archive, 3)  # recorded in the superblock before fsev starts: shown as history
            time.sleep(1)
            args = [a for m in ("data", "archive", "scratch") for a in ("--mount", str(DEMO / m))]
            with TmuxTop(*args, "--thr", "40%,20%", width=WIDTH, height=HEIGHT) as top:
                top.wait_attached()
                with open(DEMO / "scratch" / "fill", "wb") as f:
                    f.write(b"\0" * (42 << 20))  # 64 MiB tmpfs: past L1 (40 % available)
                subprocess.run(["ls", str(DEMO / "data" / "d")], capture_output=True)
                time.sleep(0.5)
                trigger(data, 2)
                top.wait_screen(lambda s: "L1" in s and "htree_dirblock_to_tree" in s and "historical" in s)
                time.sleep(2.5)  # let the ages and the rate settle into a typical frame
                ansi = top.tmux("capture-pane", "-p", "-e", "-t", "top")
                top.keys("q")
                if top.exit_status() != 0:
                    sys.exit("screenshot: fsev top did not exit cleanly:\n" + top.stderr())
    finally:
        shutil.rmtree(DEMO, ignore_errors=True)
    console = Console(record=True, width=WIDTH, file=open(os.devnull, "w"), force_terminal=True,
                      color_system="truecolor")
    console.print(Text.from_ansi(ansi.rstrip("\n"), no_wrap=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(out), title="sudo fsev top --mount … --thr 40%,20%")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
