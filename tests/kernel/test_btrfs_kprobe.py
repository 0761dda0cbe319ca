"""btrfs_error's kprobe rung, on a kernel that has kprobes (the stock-kernel
VM, tests/vm: Debian 12's 6.1, where btrfs is a module: loaded first, so that
its functions are traceable and its BTF, /sys/kernel/btf/btrfs, is there).

A transaction abort from write errors during a commit (the FUSE-backed disk):
__btrfs_abort_transaction gives one fs_error with transaction_abort, errno,
function and line (its nested __btrfs_handle_fs_error call adds none), and
the kernel log lines of the same abort add none either; the read-only state
it causes is linked to it; btrfs_dev_stats's kprobe sign gives the write
error count its task. Needs mkfs.btrfs and python3-fusepy in the guest."""

from __future__ import annotations

import shutil
import time

import pytest
from support.btrfs_rig import aborted_transaction, mount_dev, ours
from support.fuse_disk import fuse_disk

from fsev.session.trace import kernel_facts
from fsev.testing.kernel_rig import FsevTrace, run

pytestmark = [pytest.mark.root, pytest.mark.kprobe]
ATTACH_S = 300  # bcc compiles slowly under emulation


def _rung_for(trace: FsevTrace, point: str) -> str:
    line = next(l for l in trace.stderr_lines if l.startswith(f"fsev: {point}: "))
    return line.split(": ")[2].split()[0]


@pytest.fixture(scope="module", autouse=True)
def btrfs_loaded() -> None:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("needs btrfs-progs in the guest")
    pytest.importorskip("fusepy", reason="needs Debian's python3-fusepy")
    run("modprobe", "btrfs", check=False)  # built in here, a module on Debian
    with open("/proc/filesystems") as f:
        assert "btrfs" in f.read()
    if not kernel_facts().module_btf("btrfs"):
        pytest.skip("the btrfs module has no BTF (module BTF is Linux 5.11+): no kprobe rung, its log lines serve")


def test_a_transaction_abort_on_the_kprobe_rung_is_one_event_with_its_errno_and_read_only_follows():
    t: FsevTrace | None = None
    devs: list[str] = []

    def trace_it(mp: str) -> None:
        nonlocal t
        devs.append(mount_dev(mp))
        t = FsevTrace(["--mount", mp, "--events", "err"])
        t.wait_attached(timeout=ATTACH_S)

    try:
        with fuse_disk() as disk, aborted_transaction(disk, trace_it) as mp:
            assert t is not None
            assert _rung_for(t, "btrfs_error") == "kprobe", t.stderr_lines
            assert _rung_for(t, "btrfs_dev_stats") == "kprobe", t.stderr_lines
            t.wait_for(lambda evs: ours(evs, mp, "read_only") and ours(evs, mp, "device_errors"), timeout=30)
            time.sleep(1.5)  # room for a duplicate: the nested call, the log lines, the mountinfo checks
            assert t.stop() == 0
            evs = t.events()
            loop = disk.loop
    finally:
        if t is not None:
            t.kill()
    errors = ours(evs, mp, "fs_error")
    aborts = [e for e in errors if e.get("transaction_abort")]
    assert len(aborts) == 1, errors
    a = aborts[0]
    assert a["rung"] == "kprobe" and a["errno"] == 5 and a["function"] and a["line"] > 0
    assert a["dev"] == devs[0] and a["fs_type"] == "btrfs" and a["pid"] > 0
    # Each (function, line) once: neither the nested __btrfs_handle_fs_error nor the log repeats it.
    places = [(e["function"], e["line"]) for e in errors if e.get("function")]
    assert len(places) == len(set(places)), errors
    assert not [e for e in errors if e["rung"] == "kernel_log" and e.get("function")], errors
    ro = ours(evs, mp, "read_only")
    assert len(ro) == 1 and ro[0]["cause"] == "error" and ro[0]["caused_by_seq"] in {e["seq"] for e in errors}
    counts = ours(evs, mp, "device_errors")
    assert counts[0]["counters"].get("write_io_errs", 0) >= 1 and counts[0]["device"] == loop
    assert counts[0]["rung"] == "polled" and "comm" in counts[0]  # the counting task, from the kprobe sign
    # --mount of a btrfs: the kernel filter lets its member device's block errors through
    assert ours(evs, mp, "block_io_error"), evs
