"""The ladder right on each guest's kernel: for every probe point, the rung
`fsev doctor --json` chose inside the guest, and why, against what that kernel
must give (the table below, from what each kernel has: tests/vm, docs/vm.md).

A point missing from the table fails, so a new probe point says here what each
stock kernel gives it.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vm

# guest -> point -> (rung, texts that must appear in the rung's targets/gives/misses/skipped)
# (ext4_error_detail: kprobe wherever kprobes are, FAN_FS_ERROR (5.16+) or not.)
LADDER: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    # 5.10: no FAN_FS_ERROR (5.16), no block:block_rq_error, no shmem accounting
    # function pair fsev knows and no struct folio (the raw rung's), __ext4_error without force_ro, no ext4
    # emergency_ro or shutdown flag after errors, no fanotify mount marks.
    "debian11": {
        "ext4_error": ("kprobe", ("errno is argument 4 (its BTF prototype)",)),
        "ext4_error_detail": ("kprobe", ()),
        "mount_drop": ("kprobe", ()),
        "thr_tmpfs": ("polled", ("no known pair of shmem accounting functions", "no struct folio")),
        "thr_ext4": ("raw_tracepoint", ()),
        "thr_other": ("polled", ()),
        "read_only": ("kprobe", ("no EXT4_FLAGS_EMERGENCY_RO",)),
        "enospc": ("kprobe", ()),
        "block_io_error": ("kprobe", ("block:block_rq_error",)),
        "wb_error": ("raw_tracepoint", ()),
        "mount_topology": ("tracepoint", ("no FAN_MARK_MNTNS",)),
        "kernel_log": ("tracepoint", ()),
        # No module BTF: btrfs's and xfs's structs cannot be read, so their
        # kprobe and raw tracepoint rungs give way to their kernel log lines.
        "btrfs_error": ("tracepoint", ("printk:console", "module has no BTF (module BTF is Linux 5.11+)")),
        "btrfs_dev_stats": ("polled", ("module has no BTF (module BTF is Linux 5.11+)",)),
        "xfs_error": ("tracepoint", ("printk:console", "module has no BTF (module BTF is Linux 5.11+)")),
        "xfs_shutdown": ("tracepoint", ("printk:console",)),
        "fserror": ("none", ("Linux 7.0+",)),
    },
    # 6.1: shmem_inode_acct_blocks absent and shmem_inode_acct_block inlined
    # (the shmem_alloc_and_acct_folio pair instead); ext4 sets
    # EXT4_MF_FS_ABORTED, not emergency_ro.
    "debian12": {
        "ext4_error": ("kprobe", ("errno is argument 5 (its BTF prototype)",)),
        "ext4_error_detail": ("kprobe", ()),
        "mount_drop": ("kprobe", ()),
        "thr_tmpfs": ("kprobe", ("shmem_alloc_and_acct_folio",)),
        "thr_ext4": ("raw_tracepoint", ()),
        "thr_other": ("polled", ()),
        "read_only": ("kprobe", ("EXT4_MF_FS_ABORTED", "no EXT4_FLAGS_EMERGENCY_RO")),
        "enospc": ("kprobe", ()),
        "block_io_error": ("tracepoint", ()),
        "wb_error": ("raw_tracepoint", ()),
        "mount_topology": ("tracepoint", ("no FAN_MARK_MNTNS",)),
        "kernel_log": ("tracepoint", ()),
        # xfs_ag_mark_sick (before 6.13's groups); Debian's 6.1 has the
        # xfs_force_shutdown tracepoint (a stable backport, as the guest found).
        "btrfs_error": ("kprobe", ("__btrfs_handle_fs_error",)),
        "btrfs_dev_stats": ("kprobe", ("btrfs_dev_stat_inc_and_print",)),
        "xfs_error": ("kprobe", ("xfs_corruption_error", "xfs_ag_mark_sick")),
        "xfs_shutdown": ("raw_tracepoint", ("xfs:xfs_force_shutdown",)),
        "fserror": ("none", ("Linux 7.0+",)),
    },
    # 6.12: errors=remount-ro sets EXT4_FLAGS_SHUTDOWN only (EMERGENCY_RO and
    # its mountinfo word are 6.15), and its BTF has no EXT4_FLAGS_* enum: the
    # kprobe rung reads the bit at its known value; shmem_inode_acct_blocks traceable.
    "debian13": {
        "ext4_error": ("kprobe", ("errno is argument 5 (its BTF prototype)",)),
        "ext4_error_detail": ("kprobe", ()),
        "mount_drop": ("kprobe", ()),
        "thr_tmpfs": ("kprobe", ("shmem_inode_acct_blocks",)),
        "thr_ext4": ("raw_tracepoint", ()),
        "thr_other": ("polled", ()),
        "read_only": ("kprobe", ("EXT4_FLAGS_SHUTDOWN (1, its known value",)),
        "enospc": ("kprobe", ()),
        "block_io_error": ("tracepoint", ()),
        "wb_error": ("raw_tracepoint", ()),
        "mount_topology": ("tracepoint", ("no FAN_MARK_MNTNS",)),
        "kernel_log": ("tracepoint", ()),
        # 6.12's xfs.ko has the xfs_force_shutdown tracepoint (read from the image's module).
        "btrfs_error": ("kprobe", ("__btrfs_handle_fs_error",)),
        "btrfs_dev_stats": ("kprobe", ("btrfs_dev_stat_inc_and_print",)),
        "xfs_error": ("kprobe", ("xfs_corruption_error",)),
        "xfs_shutdown": ("raw_tracepoint", ("xfs:xfs_force_shutdown",)),
        "fserror": ("none", ("Linux 7.0+",)),
    },
}


def _plan(guest_run) -> dict[str, dict]:
    path = guest_run.out / "results" / "doctor.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        err = guest_run.out / "results" / "doctor-json.err"
        pytest.fail(f"no fsev doctor --json from {guest_run.where}: {e}\n"
                    f"{err.read_text()[-2000:] if err.exists() else ''}", pytrace=False)
    return {r["point"]: r for r in doc["plan"]}


def test_ladder(guest_run, guest, ladder_point):
    # (guest, ladder_point): each point of LADDER[guest] (tests/vm/conftest.py);
    # a point only the guest's doctor names fails test_every_point_has_a_row.
    point = ladder_point
    rung, texts = LADDER[guest][point]
    got = _plan(guest_run).get(point)
    assert got is not None, f"fsev doctor in {guest_run.where} names no point {point}"
    why = "\n".join([", ".join(got["targets"]), got["gives"], got["misses"], *got["skipped"]])
    assert got["rung"] == rung, (f"{point} in {guest_run.where}: rung {got['rung']} ({', '.join(got['targets'])}), "
                                 f"the table says {rung}\n{why}")
    for t in texts:
        assert t in why, f"{point} in {guest_run.where}: {t!r} not in what doctor says:\n{why}"


def test_every_point_has_a_row(guest_run, guest):
    missing = sorted(set(_plan(guest_run)) - set(LADDER.get(guest, {})))
    assert not missing, (f"fsev doctor in {guest_run.where} names points the table in tests/vm/test_ladder.py "
                         f"has no row for: {', '.join(missing)}")
