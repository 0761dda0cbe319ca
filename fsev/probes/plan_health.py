"""Probe planning for the health events: one ladder per probe point, richest
rung first, each skipped rung with its reason. Pure, like fsev.probes.plan, which
registers these planners.
"""

from __future__ import annotations

from fsev.kernel.health_facts import EXT4_ABORTED, EXT4_EMERGENCY_RO, EXT4_SHUTDOWN
from fsev.kernel.facts import KernelFacts
from fsev.probes.plan import ProbePoint, Rung, RungKind, _kprobe_skip_reason, _plan_ext4_error, _raw_tp_skip_reason

RAW_SYS_EXIT = "raw_syscalls:sys_exit"  # raw: sys_exit(struct pt_regs *, long ret)
RAW_EXT4_ERROR = "ext4:ext4_error"  # raw: ext4_error(struct super_block *, function, line)
BLOCK_RQ_ERROR = "block:block_rq_error"
FILEMAP_SET_WB_ERR = "filemap:filemap_set_wb_err"
# mount(2) is required; the others exist from 5.2 (move_mount, fsconfig) and
# 5.12 (mount_setattr) and are attached where present.
MOUNT_CALL_TRACEPOINTS = tuple(
    f"syscalls:sys_{side}_{call}" for call in ("mount", "move_mount", "fsconfig", "mount_setattr")
    for side in ("enter", "exit")
)
MOUNT_CALL_REQUIRED = ("syscalls:sys_enter_mount", "syscalls:sys_exit_mount")
NS_TRACEPOINTS = tuple(
    f"syscalls:sys_{side}_{call}" for call in ("unshare", "clone", "clone3") for side in ("enter", "exit")
)

# kprobe rungs. Known signatures:
#   static void ext4_handle_error(struct super_block *sb, ...)  sb first in every version
#   int reconfigure_super(struct fs_context *fc)                5.2+
#   int security_inode_create(struct inode *dir, struct dentry *, umode_t)   2.6+
#   int security_inode_mkdir(struct inode *dir, struct dentry *, umode_t)
#   bool blk_update_request(struct request *, blk_status_t, unsigned int)  4.13+
#   void __filemap_set_wb_err(struct address_space *, int err)            4.14+
RO_KPROBE = "ext4_handle_error"
RO_KPROBE_REMOUNT = "reconfigure_super"
ENOSPC_KPROBES = ("security_inode_create", "security_inode_mkdir")
BLOCK_KPROBE = "blk_update_request"
WB_KPROBE = "__filemap_set_wb_err"

HEALTH_TRACEPOINTS = {RAW_SYS_EXIT, RAW_EXT4_ERROR, BLOCK_RQ_ERROR, FILEMAP_SET_WB_ERR,
                      *MOUNT_CALL_TRACEPOINTS, *NS_TRACEPOINTS}
HEALTH_KPROBE_FUNCTIONS = {RO_KPROBE, RO_KPROBE_REMOUNT, *ENOSPC_KPROBES, BLOCK_KPROBE, WB_KPROBE}


def _raw_skip(facts: KernelFacts, tracepoints: tuple[str, ...], x86_64: bool = False) -> str | None:
    why = _raw_tp_skip_reason(facts, tracepoints)
    if why is None and x86_64 and facts.machine not in ("x86_64", "amd64"):
        return f"raw_tracepoint: sys_exit decoding knows x86-64 syscall numbers only, not {facts.machine}"
    return why


def ro_flag_description(facts: KernelFacts) -> str:
    """Which read-only states the programs read: what this kernel's BTF has."""
    flags = ["super_block.s_flags SB_RDONLY (up to 6.6)"]
    if facts.ext4_aborted_bit is not None:
        flags.append(f"ext4_sb_info.s_mount_flags EXT4_MF_FS_ABORTED ({facts.ext4_aborted_bit}; up to 6.5)")
    if facts.ext4_shutdown_bit is not None:
        flags.append(f"ext4_sb_info.s_ext4_flags EXT4_FLAGS_SHUTDOWN ({facts.ext4_shutdown_bit}; 6.7-6.11, backports)")
    if facts.ext4_emergency_ro_bit is not None:
        flags.append(f"EXT4_FLAGS_EMERGENCY_RO ({facts.ext4_emergency_ro_bit}; 6.12+)")
    else:
        flags.append("no EXT4_FLAGS_EMERGENCY_RO (a kernel before 6.12)")
    return ", ".join(flags)


def _plan_read_only(facts: KernelFacts) -> Rung:
    point = ProbePoint.READ_ONLY
    flag = ro_flag_description(facts)
    reads = tuple(spec for spec, bit in ((EXT4_EMERGENCY_RO, facts.ext4_emergency_ro_bit),
                                         (EXT4_SHUTDOWN, facts.ext4_shutdown_bit),
                                         (EXT4_ABORTED, facts.ext4_aborted_bit)) if bit is not None)
    admin = "; admin remounts ro/rw from /proc/self/mountinfo changes and mount(2) calls"
    why = _kprobe_skip_reason(facts, (RO_KPROBE,))
    if why is None:
        targets = (RO_KPROBE,) + ((RO_KPROBE_REMOUNT,) if RO_KPROBE_REMOUNT in facts.kprobe_functions else ())
        return Rung(point, RungKind.KPROBE, targets,
                    gives=f"every error-caused transition, in any context, from {flag} before and after "
                    f"ext4_handle_error; remounts from reconfigure_super{admin}", reads=reads)
    skipped = (why,)
    why = _raw_skip(facts, (RAW_EXT4_ERROR, RAW_SYS_EXIT), x86_64=True)
    if why is None:
        return Rung(point, RungKind.RAW_TRACEPOINT, ("ext4_error", "sys_exit"),
                    gives=f"{flag} at the error and again when the erroring task leaves its syscall{admin}",
                    misses="errors raised outside a syscall (writeback, journal threads): fsev sees those "
                    "read-only states in /proc/self/mountinfo after the error (rung polled)",
                    skipped=skipped, reads=reads)
    return Rung(point, RungKind.POLLED, ("/proc/self/mountinfo",),
                gives="read-only states (ro, emergency_ro) in /proc/self/mountinfo, checked after each "
                "ext4 error and each mount-table change",
                misses="the exact moment and the task of an error-caused transition",
                skipped=skipped + (why,))


def _plan_enospc(facts: KernelFacts) -> Rung:
    point = ProbePoint.ENOSPC
    misses = ("io_uring, aio and in-kernel writers (nfsd, loop); splice, sendfile, copy_file_range; "
              "ENOSPC reported late by close or fsync; 32-bit (compat) processes, whose syscall numbers "
              "differ; whether a write lacked room for data or for metadata (told by the call only)")
    raw_why = _raw_skip(facts, (RAW_SYS_EXIT,), x86_64=True)
    why = _kprobe_skip_reason(facts, ENOSPC_KPROBES) or raw_why
    if why is None:
        return Rung(point, RungKind.KPROBE, ("sys_exit", *ENOSPC_KPROBES),
                    gives="failed write/fallocate (superblock from the fd) and create/mkdir (superblock of "
                    "the parent directory, from security_inode_create/mkdir)",
                    misses=misses)
    skipped = (why,)
    if raw_why is None:
        return Rung(point, RungKind.RAW_TRACEPOINT, ("sys_exit",),
                    gives="failed write/fallocate (superblock from the task's fd table) and create/mkdir "
                    "(path as passed)",
                    misses=misses + "; for create/mkdir the mount is resolved from the path by fsev (absolute, "
                    "or relative to the task's cwd while it lives), so symlinks and other mount "
                    "namespaces can mislead it",
                    skipped=skipped)
    return Rung(point, RungKind.NONE, skipped=skipped + (raw_why,))


def _plan_block_io(facts: KernelFacts) -> Rung:
    point = ProbePoint.BLOCK_IO_ERROR
    misses = ("errors below a stacked device (dm, md) show on the device that failed, which fsev maps to "
              "mounts only when it, or a partition of it, is mounted")
    if facts.has_tracepoint(BLOCK_RQ_ERROR):
        return Rung(point, RungKind.TRACEPOINT, (BLOCK_RQ_ERROR,),
                    gives="device, sector, bytes, errno, operation of each failed request",
                    misses=misses)
    skipped = (f"tracepoint: {BLOCK_RQ_ERROR} not present (older kernel)",)
    why = _kprobe_skip_reason(facts, (BLOCK_KPROBE,))
    if why is None:
        return Rung(point, RungKind.KPROBE, (BLOCK_KPROBE,),
                    gives="device, sector, bytes and blk_status_t of each failed request completion",
                    misses=misses + "; the operation (read or write)", skipped=skipped)
    return Rung(point, RungKind.NONE, skipped=skipped + (why,))


def _plan_wb(facts: KernelFacts) -> Rung:
    point = ProbePoint.WB_ERROR
    misses = "the task is whoever completed the I/O (often a kworker or an interrupt); the file's path"
    # The tracepoint's own errseq field is errseq_set()'s return: the value
    # before the set (0 on a file's first error). The raw tracepoint reads
    # mapping->wb_err instead, so no perf-tracepoint rung is offered.
    why = _raw_skip(facts, (FILEMAP_SET_WB_ERR,))
    if why is None:
        return Rung(point, RungKind.RAW_TRACEPOINT, ("filemap_set_wb_err",),
                    gives="device, inode, errseq after the error was recorded (errno in its low bits)",
                    misses=misses)
    skipped = (why,)
    why = _kprobe_skip_reason(facts, (WB_KPROBE,))
    if why is None:
        return Rung(point, RungKind.KPROBE, (WB_KPROBE,), gives="device, inode, errno (the function's argument)",
                    misses=misses + "; the errseq", skipped=skipped)
    return Rung(point, RungKind.NONE, skipped=skipped + (why,))


def _plan_topology(facts: KernelFacts) -> Rung:
    point = ProbePoint.MOUNT_TOPOLOGY
    calls = tuple(t for t in MOUNT_CALL_TRACEPOINTS if facts.has_tracepoint(t))
    have_calls = all(t in calls for t in MOUNT_CALL_REQUIRED)
    if facts.fanotify_mntns and have_calls:
        ns = tuple(t for t in NS_TRACEPOINTS if facts.has_tracepoint(t))
        return Rung(point, RungKind.FANOTIFY, ("FAN_MARK_MNTNS", *calls, *ns),
                    gives="every attach and detach in fsev's and each new mount namespace with the mount's "
                    "unique id (fanotify), what the call was (mount/bind/move/remount, syscall "
                    "tracepoints), drops when a namespace is torn down",
                    misses="mounts in a namespace that dies before fsev can mark it, other than by "
                    "mount(2) (those are reported as gone with it); remounts have no fanotify event "
                    "(the syscall tells)")
    skipped = ("fanotify: no FAN_MARK_MNTNS (kernel before 6.15)",) if not facts.fanotify_mntns else ()
    # No kprobe rung: the attach paths are static functions whose signatures
    # change every few releases (attach_recursive_mnt, 6.16), and drops have
    # their own kprobe rung (mount_drop, cleanup_mnt).
    if have_calls:
        return Rung(point, RungKind.TRACEPOINT, calls,
                    gives="successful mount(2), move_mount, fsconfig reconfigure, mount_setattr: call, "
                    "target as passed, flags, task and its mount namespace",
                    misses="propagated mounts; mount ids (taken from mountinfo when fsev's namespace "
                    "has the mount); drops by namespace teardown",
                    skipped=skipped)
    return Rung(point, RungKind.NONE, skipped=skipped + ("tracepoint: syscalls:sys_*_mount not present",))


def _plan_ext4_error_detail(facts: KernelFacts) -> Rung:
    point = ProbePoint.EXT4_ERROR_DETAIL
    base = _plan_ext4_error(facts)
    if base.kind is RungKind.KPROBE:
        return Rung(point, RungKind.KPROBE, base.targets, gives="errno, inode, block from the function arguments")
    if base.kind is RungKind.NONE:
        return Rung(point, RungKind.NONE, skipped=("no ext4 error rung",))
    skipped = ("kprobe: the ext4 error rung is " + base.kind.value,)
    if facts.fanotify_fs_error:
        return Rung(point, RungKind.FANOTIFY, ("FAN_FS_ERROR", "/sys/fs/ext4/*/last_error_*"),
                    gives="errno and inode of the first error fanotify queued (read at once, so almost every "
                    "error); else the superblock's last recorded error when its function and line match",
                    misses="errno and inode of errors merged into one queued fanotify event that the "
                    "superblock's last error does not describe; after ring-buffer loss, errno may be "
                    "matched to the wrong error",
                    skipped=skipped)
    skipped += ("fanotify: no FAN_FS_ERROR (kernel before 5.16)",)
    return Rung(point, RungKind.POLLED, ("/sys/fs/ext4/*/last_error_*",),
                gives="errno, inode, block of the superblock's last recorded error when its function and line "
                "match the event's",
                misses="every error but the last of a burst", skipped=skipped)


HEALTH_PLANNERS = {
    ProbePoint.EXT4_ERROR_DETAIL: _plan_ext4_error_detail,
    ProbePoint.READ_ONLY: _plan_read_only,
    ProbePoint.ENOSPC: _plan_enospc,
    ProbePoint.BLOCK_IO_ERROR: _plan_block_io,
    ProbePoint.WB_ERROR: _plan_wb,
    ProbePoint.MOUNT_TOPOLOGY: _plan_topology,
}
