"""ext4 error details on the kprobe rungs, on a kernel that has kprobes (the
stock-kernel VM, tests/vm): __ext4_std_error from its own kprobe, and on
7.0+ fserror_report (fsev/points/fserror.py): folded into the ext4 error it
belongs to, standing alone for an iomap direct-I/O error.

One `fsev trace` over every mount serves the module (one compile: slow
under emulation); each test picks its events by its own mount point."""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import time
from typing import Iterator

import pytest
from support.fuse_disk import BLOCK, FuseDisk, fresh_ext4, fuse_disk, journal_extents

from fsev.testing.kernel_rig import FsevTrace, ext4, run

pytestmark = [pytest.mark.root, pytest.mark.kprobe]


def _has_symbol(name: str) -> bool:
    with open("/proc/kallsyms") as f:
        return any(line.split()[2] == name for line in f if len(line.split()) >= 3)


@pytest.fixture(scope="module")
def disk() -> Iterator[FuseDisk]:
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    with fuse_disk() as d:
        yield d


def _rung(t: FsevTrace, point: str) -> str:
    line = next(l for l in t.stderr_lines if l.startswith(f"fsev: {point}: "))
    return line.split(": ")[2].split()[0]


def _errors(t: FsevTrace, mp: str) -> list[dict]:
    return [e for e in t.events() if e["type"] == "fs_error" and e.get("mount_point") == mp]


def test_a_std_error_comes_from_its_kprobe(err_trace, disk):
    assert _rung(err_trace, "ext4_error") == "kprobe", err_trace.stderr_lines
    with fresh_ext4(disk, "errors=continue,dirsync") as mp:
        journal = journal_extents(disk)
        first = min(b for b, _ in journal)
        last = max(b + c for b, c in journal)
        time.sleep(0.5)
        disk.arm("write", first * BLOCK, (last - first) * BLOCK)
        with contextlib.suppress(OSError):
            os.mkdir(os.path.join(mp, "new"))  # dirsync: waits for the commit that fails
        err_trace.wait_for(lambda e: any(x.get("mount_point") == mp and x.get("function") == "ext4_mkdir" for x in e),
                       timeout=30)
        time.sleep(1)
        errors = _errors(err_trace, mp)
    std = [e for e in errors if e.get("function") == "ext4_mkdir"]
    assert std, errors
    assert std[0]["rung"] == "kprobe" and std[0]["errno"] == 5 and std[0]["errno_source"] == "kprobe"


@pytest.mark.skipif(not _has_symbol("fserror_report"), reason="fserror_report is Linux 7.0+")
def test_fserror_folds_into_the_ext4_error_and_stands_alone_for_a_direct_io_error(err_trace, disk):
    assert _rung(err_trace, "fserror") == "kprobe", err_trace.stderr_lines
    with ext4(options="errors=continue", corrupt_dir=True) as fs:
        time.sleep(0.5)
        subprocess.run(["ls", os.path.join(fs.mount_point, "d")], capture_output=True)
        err_trace.wait_for(lambda e: _errors(err_trace, fs.mount_point), timeout=30)
        time.sleep(1)  # room for the report it folds
        errors = _errors(err_trace, fs.mount_point)
    assert len(errors) == 1 and errors[0]["function"] == "htree_dirblock_to_tree", errors

    with fresh_ext4(disk, "errors=continue") as mp:
        time.sleep(0.5)
        path = os.path.join(mp, "data")
        with open(path, "wb") as f:
            f.write(os.urandom(4 * BLOCK))
            f.flush()
            os.fsync(f.fileno())
        ino = os.stat(path).st_ino
        block = int(run("debugfs", "-R", f"bmap <{ino}> 1", disk.loop).stdout.strip())
        disk.arm("read", block * BLOCK, BLOCK)
        buf = mmap.mmap(-1, BLOCK)  # O_DIRECT wants an aligned buffer
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            with pytest.raises(OSError):
                os.preadv(fd, [buf], BLOCK)
        finally:
            os.close(fd)
        err_trace.wait_for(lambda e: any(x.get("mount_point") == mp and x.get("function") == "fserror_report"
                                     for x in e), timeout=30)
        errors = _errors(err_trace, mp)
    (rep,) = [e for e in errors if e.get("function") == "fserror_report"]
    assert rep["rung"] == "kprobe" and rep["errno"] == 5 and rep["inode"] == ino
    assert rep["error_type"] == "directio_read" and rep["pos"] == BLOCK and rep["len"] == BLOCK
