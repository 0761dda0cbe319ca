"""What each stock kernel of the VM guests must give (tests/vm: Debian 11's
5.10, 12's 6.1, 13's 6.12), on the kprobe rungs that only they can run.

- ext4 errors: the same corruption gives the same errno on every kernel, and
  __ext4_error's arguments are read where this kernel passes them (5.10 has no
  `force_ro` before `error`: reading 5.11's positions there takes the format
  string's address for the block).
- read-only after an error: on 6.12-6.14 nothing in mountinfo shows ext4's
  emergency_ro, and ext4 drops every later error; `fsev top --once` must still
  show the filesystem read-only after the error, from the error path itself.

Outside a guest FSEV_VM_RELEASE is unset and the tables' defaults apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from fsev.testing.kernel_rig import FSEV, Ext4, FsevTrace, ext4, fsev_prog_ids, run, unmount

pytestmark = [pytest.mark.root, pytest.mark.kprobe]
ATTACH_S = 300  # bcc compiles slowly under emulation
RELEASE = os.environ.get("FSEV_VM_RELEASE", "")

# The corrupt_dir recipe (a directory block of random bytes, then ls): ext4
# raises it in htree_dirblock_to_tree through __ext4_error_inode with
# EFSBADCRC (EBADMSG, 74) on every kernel here; 6.1 is the reference.
DIR_BLOCK_ERRNO = {"debian11": 74, "debian12": 74, "debian13": 74}
# Where __ext4_error takes its errno (fsev doctor's ext4_error rung names it).
EXT4_ERROR_ERRNO_ARG = {"debian11": 4, "debian12": 5, "debian13": 5}


@contextlib.contextmanager
def ext4_bad_block_bitmap() -> Iterator[Ext4]:
    """A one-group ext4 whose block bitmap holds random bytes: the first
    allocation raises ext4_error(sb, "bg 0: bad block bitmap checksum"), that is
    __ext4_error with errno 0 and block 0 ("unknown") on every kernel."""
    work = tempfile.mkdtemp(prefix="fsev-ext4-bb-")
    image, mp, loop = os.path.join(work, "fs.img"), os.path.join(work, "mnt"), ""
    os.mkdir(mp)
    try:
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", image)
        line = next(l for l in run("dumpe2fs", image).stdout.splitlines() if "Block bitmap at" in l)
        block = int(line.split("Block bitmap at")[1].split()[0])
        with open(image, "r+b") as f:
            f.seek(block * 4096)
            f.write(os.urandom(4096))
        loop = run("losetup", "-f", "--show", image).stdout.strip()
        # From 5.12 ext4 prefetches block bitmaps after mount: the error would
        # come before fsev attaches, and later allocations skip the group quietly.
        if run("mount", "-o", "errors=continue,no_prefetch_block_bitmaps", loop, mp, check=False).returncode:
            run("mount", "-o", "errors=continue", loop, mp)  # 5.10: no prefetch, no option
        yield Ext4(image, loop, mp)
    finally:
        unmount(mp)
        if loop:
            run("losetup", "-d", loop, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _doctor_rung(point: str) -> dict:
    out = subprocess.run([FSEV, "doctor", "--json"], capture_output=True, text=True, timeout=300).stdout
    return next(r for r in json.loads(out)["plan"] if r["point"] == point)


def test_ext4_error_errno_argument_is_the_one_this_kernel_passes():
    rung = _doctor_rung("ext4_error")
    assert rung["rung"] == "kprobe", rung
    want = EXT4_ERROR_ERRNO_ARG.get(RELEASE)
    if want is not None:
        assert f"errno is argument {want} (its BTF prototype)" in rung["gives"], rung
    with ext4_bad_block_bitmap() as fs:
        with FsevTrace(["--mount", fs.mount_point, "--events", "err"]) as t:
            t.wait_attached(timeout=ATTACH_S)
            with contextlib.suppress(OSError):
                with open(os.path.join(fs.mount_point, "f"), "wb") as f:
                    f.write(b"x" * 65536)
                    os.fsync(f.fileno())
            t.wait_for(lambda e: any(x["type"] == "fs_error" for x in e), timeout=60)
            time.sleep(0.5)
            assert t.stop() == 0
    evs = [e for e in t.events() if e["type"] == "fs_error" and e["function"] == "ext4_validate_block_bitmap"]
    assert evs, t.events()
    e = evs[0]
    assert e["rung"] == "kprobe"
    # ext4_error() passes errno 0 and block 0: fsev leaves both out. Read at the
    # wrong positions, "block" would be the format string's kernel address.
    assert not ("block" in e and e.get("block_source", "kprobe") == "kprobe"), e
    assert e.get("errno_source") != "kprobe", e


def test_ext4_error_errno_is_the_same_on_every_kernel():
    with ext4(corrupt_dir=True) as fs:
        with FsevTrace(["--mount", fs.mount_point, "--events", "err"]) as t:
            t.wait_attached(timeout=ATTACH_S)
            subprocess.run(["ls", os.path.join(fs.mount_point, "d")], capture_output=True)
            t.wait_for(lambda e: any(x["type"] == "fs_error" for x in e), timeout=60)
            assert t.stop() == 0
    (e, *_) = [x for x in t.events() if x["type"] == "fs_error"]
    assert e["rung"] == "kprobe" and e["function"] == "htree_dirblock_to_tree", e
    assert e["errno"] == DIR_BLOCK_ERRNO.get(RELEASE, 74), e


def test_top_once_shows_read_only_after_the_error_from_the_error_path():
    with ext4(options="errors=remount-ro", corrupt_dir=True) as fs:
        env = dict(os.environ, COLUMNS="200")
        top = subprocess.Popen([FSEV, "top", "--once", "--window", "45", "--mount", fs.mount_point],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + ATTACH_S
            while not fsev_prog_ids(top.pid):
                assert top.poll() is None, top.communicate()
                assert time.monotonic() < deadline, "fsev top loaded no BPF program"
                time.sleep(0.5)
            time.sleep(8)  # loaded: attach follows, then the 45 s window
            subprocess.run(["ls", os.path.join(fs.mount_point, "d")], capture_output=True)
            # What the kernel shows afterwards: on 6.12-6.14 no emergency_ro in mountinfo.
            mountinfo = next((l for l in open("/proc/self/mountinfo") if f" {fs.mount_point} " in l), "")
            out, err = top.communicate(timeout=ATTACH_S)
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
    assert top.returncode == 0, err
    row = next(l for l in out.splitlines() if fs.mount_point in l and "ext4" in l)
    assert "RO!" in row, f"{out}\nmountinfo: {mountinfo}"
    assert "after error #" in out, out  # the feed's read_only line, linked to the error
    if RELEASE == "debian13":
        assert "emergency_ro" not in mountinfo, mountinfo  # so the state came from the error path
