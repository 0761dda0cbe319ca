"""Real block I/O errors: ext4 on a loop device whose backing file is served by
FUSE and answers EIO for an armed byte range (tests/support/fuse_disk.py)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Iterator

import pytest
from support.fuse_disk import BLOCK, FuseDisk, fresh_ext4, fuse_disk, itable_block

from fsev.testing.kernel_rig import FsevTrace, run

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def disk() -> Iterator[FuseDisk]:
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    with fuse_disk() as d:
        yield d


def test_io_error_on_an_inode_table_block_gives_block_error_then_ext4_error_then_read_only(disk):
    with fresh_ext4(disk, "errors=remount-ro", files=100) as mp:
        victim = os.path.join(mp, "d", "f90")
        # Inode numbers are known before the mount: 12 is the first free one.
        ino = 12 + 1 + 90  # /d, then f0..f90
        block = itable_block(disk, ino)
        with FsevTrace(["--mount", mp, "--events", "err"]) as t:
            t.wait_attached()
            disk.arm("read", block * BLOCK, BLOCK)
            st = subprocess.run(["stat", victim], capture_output=True, text=True)
            assert st.returncode != 0 and "Input/output error" in st.stderr
            t.wait_for(lambda e: any(x["type"] == "read_only" for x in e))
            time.sleep(0.3)
            assert t.stop() == 0
    evs = [e for e in t.events() if e["type"] != "loss"]
    types = [e["type"] for e in evs]
    blk = [e for e in evs if e["type"] == "block_io_error"]
    assert blk and all(e["dev"] == disk.dev and e["mount_point"] == mp and e["fs_type"] == "ext4" for e in blk), evs
    assert all(e["errno"] == 5 and e["class"] == "err" and e["rwbs"].startswith("R") for e in blk)
    sector = block * BLOCK // 512
    assert any(e["sector"] <= sector < e["sector"] + e["bytes"] // 512 for e in blk)
    (err,) = [e for e in evs if e["type"] == "fs_error"]
    assert err["errno"] == 5 and err["inode"] == ino and err["comm"] == "stat" and err["dev"] == disk.dev
    (ro,) = [e for e in evs if e["type"] == "read_only"]
    assert ro["class"] == "err" and ro["caused_by_seq"] == err["seq"] and ro["flag"] == "emergency_ro"
    # the chain, in order: the failed request, the error it caused, the switch to read-only
    assert types.index("block_io_error") < types.index("fs_error") < types.index("read_only")


def test_a_failed_write_back_gives_a_writeback_error_on_the_file(disk):
    with fresh_ext4(disk, "errors=continue") as mp:
        path = os.path.join(mp, "data")
        with open(path, "wb") as f:
            f.write(os.urandom(BLOCK))
            f.flush()
            os.fsync(f.fileno())
        ino = os.stat(path).st_ino
        block = int(run("debugfs", "-R", f"bmap <{ino}> 0", disk.loop).stdout.strip())
        with FsevTrace(["--mount", mp, "--events", "err"]) as t:
            t.wait_attached()
            disk.arm("write", block * BLOCK, BLOCK)
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, os.urandom(BLOCK), 0)
                with pytest.raises(OSError) as got:
                    os.fsync(fd)
                assert got.value.errno == 5
            finally:
                os.close(fd)
            t.wait_for(lambda e: any(x["type"] == "wb_error" for x in e))
            time.sleep(0.3)
            assert t.stop() == 0
    evs = t.events()
    (wb,) = [e for e in evs if e["type"] == "wb_error"]
    assert wb["class"] == "err" and wb["inode"] == ino and wb["errno"] == 5 and wb["mount_point"] == mp
    assert wb["errseq"] & 0xFFF == 5
    writes = [e for e in evs if e["type"] == "block_io_error"]
    assert writes and all(e["rwbs"].startswith("W") for e in writes)
    assert any(e["sector"] <= block * 8 < e["sector"] + e["bytes"] // 512 for e in writes)
