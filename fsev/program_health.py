"""The health part of the BPF program: the switches of its points' bpf/*.bpf.c,
the BTF offsets it reads, and the kprobes it attaches. Pure (fsev.program
calls these); tests check them without a kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .health_facts import EXT4_ABORTED, EXT4_EMERGENCY_RO, EXT4_SHUTDOWN
from .plan import Plan, ProbePoint, RungKind
from .plan_health import ENOSPC_KPROBES, MOUNT_CALL_TRACEPOINTS, NS_TRACEPOINTS, RO_KPROBE, RO_KPROBE_REMOUNT
from .records import RecordClass

if TYPE_CHECKING:
    from .program import ProgramConfig

_SB = ("super_block.s_dev",)
_RO = (*_SB, "super_block.s_flags")
_RO_EXT4_FLAGS = ("super_block.s_fs_info", "ext4_sb_info.s_ext4_flags")
_RO_EXT4_MOUNT_FLAGS = ("super_block.s_fs_info", "ext4_sb_info.s_mount_flags")
_ENOSPC = (*_SB, "pt_regs.orig_ax", "pt_regs.di", "pt_regs.si", "task_struct.files", "files_struct.fdt",
           "fdtable.fd", "fdtable.max_fds", "file.f_inode", "inode.i_sb", "inode.i_ino", "task_struct.fs",
           "fs_struct.root.mnt", "fs_struct.pwd.mnt", "vfsmount.mnt_sb")
_MNTNS = ("task_struct.nsproxy", "nsproxy.mnt_ns", "mnt_namespace.ns.inum")
HEALTH_OFFSETS = {
    (ProbePoint.READ_ONLY, RungKind.RAW_TRACEPOINT): _RO,
    (ProbePoint.READ_ONLY, RungKind.KPROBE): (*_RO, "fs_context.root", "dentry.d_sb"),
    (ProbePoint.ENOSPC, RungKind.RAW_TRACEPOINT): _ENOSPC,
    (ProbePoint.ENOSPC, RungKind.KPROBE): _ENOSPC,
    (ProbePoint.BLOCK_IO_ERROR, RungKind.KPROBE): ("request.part", "block_device.bd_dev", "request.__sector"),
    (ProbePoint.WB_ERROR, RungKind.KPROBE): (*_SB, "address_space.host", "inode.i_sb", "inode.i_ino"),
    (ProbePoint.WB_ERROR, RungKind.RAW_TRACEPOINT): (*_SB, "address_space.host", "address_space.wb_err",
                                                     "inode.i_sb", "inode.i_ino"),
    (ProbePoint.MOUNT_TOPOLOGY, RungKind.TRACEPOINT): _MNTNS,
    (ProbePoint.MOUNT_TOPOLOGY, RungKind.FANOTIFY): _MNTNS,
}
# The class whose events each probe point's kernel side produces.
_POINT_CLASS = {
    ProbePoint.READ_ONLY: RecordClass.ERR,
    ProbePoint.ENOSPC: RecordClass.WARN,
    ProbePoint.BLOCK_IO_ERROR: RecordClass.ERR,
    ProbePoint.WB_ERROR: RecordClass.ERR,
    ProbePoint.MOUNT_TOPOLOGY: RecordClass.INFO,
}


def _on(plan: Plan, config: "ProgramConfig | None", point: ProbePoint, kind: RungKind) -> bool:
    """Whether this point's programs are compiled in: its rung, and a class
    the user asked for (config None: every class)."""
    r = plan.rung(point)
    if r is None or r.kind is not kind:
        return False
    if config is None:
        return True
    if point is ProbePoint.READ_ONLY:  # error transitions are err; kprobe remounts are info
        return bool({RecordClass.ERR, RecordClass.INFO} & config.classes)
    return _POINT_CLASS[point] in config.classes


def health_offsets(plan: Plan, config: "ProgramConfig | None") -> list[str]:
    """BTF specs the health programs of this plan read: struct offsets, and
    what the rungs declare (the emergency read-only enum, where it exists)."""
    specs: list[str] = []
    for (point, kind), wanted in HEALTH_OFFSETS.items():
        if _on(plan, config, point, kind):
            specs += wanted
            reads = plan.rung(point).reads  # type: ignore[union-attr]
            for spec in (EXT4_EMERGENCY_RO, EXT4_SHUTDOWN):
                if spec in reads:
                    specs += [*_RO_EXT4_FLAGS, spec]
            if EXT4_ABORTED in reads:
                specs += [*_RO_EXT4_MOUNT_FLAGS, EXT4_ABORTED]
    return list(dict.fromkeys(specs))


def health_defines(plan: Plan, config: "ProgramConfig") -> list[str]:
    """#define lines for the health points' bpf/*.bpf.c."""
    topo = plan.rung(ProbePoint.MOUNT_TOPOLOGY)
    topo_on = _on(plan, config, ProbePoint.MOUNT_TOPOLOGY, RungKind.TRACEPOINT) or _on(
        plan, config, ProbePoint.MOUNT_TOPOLOGY, RungKind.FANOTIFY)
    d = {
        "FSEV_RO_RAW_TP": _on(plan, config, ProbePoint.READ_ONLY, RungKind.RAW_TRACEPOINT),
        "FSEV_RO_KPROBE": _on(plan, config, ProbePoint.READ_ONLY, RungKind.KPROBE),
        "FSEV_ENOSPC_RAW_TP": _on(plan, config, ProbePoint.ENOSPC, RungKind.RAW_TRACEPOINT),
        "FSEV_ENOSPC_KPROBE": _on(plan, config, ProbePoint.ENOSPC, RungKind.KPROBE),
        "FSEV_BLOCK_IO_TRACEPOINT": _on(plan, config, ProbePoint.BLOCK_IO_ERROR, RungKind.TRACEPOINT),
        "FSEV_BLOCK_IO_KPROBE": _on(plan, config, ProbePoint.BLOCK_IO_ERROR, RungKind.KPROBE),
        "FSEV_WB_RAW_TP": _on(plan, config, ProbePoint.WB_ERROR, RungKind.RAW_TRACEPOINT),
        "FSEV_WB_KPROBE": _on(plan, config, ProbePoint.WB_ERROR, RungKind.KPROBE),
        "FSEV_TOPOLOGY_TRACEPOINT": topo_on,
        # New namespaces matter only to the fanotify rung, which marks them.
        "FSEV_TOPOLOGY_NS": _on(plan, config, ProbePoint.MOUNT_TOPOLOGY, RungKind.FANOTIFY),
    }
    targets = set(topo.targets) if topo else set()
    for tp in (*MOUNT_CALL_TRACEPOINTS, *NS_TRACEPOINTS):
        if tp.startswith("syscalls:sys_enter_"):
            call = tp.removeprefix("syscalls:sys_enter_")
            d[f"FSEV_HAVE_SYS_{call.upper()}"] = tp in targets and f"syscalls:sys_exit_{call}" in targets
    return [f"#define {k} {int(v)}" for k, v in d.items()]


def health_kprobes(plan: Plan, config: "ProgramConfig") -> list[tuple[str, str]]:
    """(kernel function, BPF function) pairs; names starting kretp_ are return probes."""
    out: list[tuple[str, str]] = []
    ro = plan.rung(ProbePoint.READ_ONLY)
    if ro and _on(plan, config, ProbePoint.READ_ONLY, RungKind.KPROBE):
        for fn in (RO_KPROBE, RO_KPROBE_REMOUNT):
            if fn in ro.targets:
                out += [(fn, f"kp_{fn}"), (fn, f"kretp_{fn}")]
    if _on(plan, config, ProbePoint.ENOSPC, RungKind.KPROBE):
        out += [(fn, f"kp_{fn}") for fn in ENOSPC_KPROBES]
    for point in (ProbePoint.BLOCK_IO_ERROR, ProbePoint.WB_ERROR):
        r = plan.rung(point)
        if r and _on(plan, config, point, RungKind.KPROBE):
            out += [(fn, f"kp_{fn}") for fn in r.targets]
    return out
