"""What the running kernel offers to attach to: the input of plan_probes().

Gathering touches /sys and /proc; the result is a plain value so planning
stays a pure function that unit tests drive with made-up kernels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

TRACEFS = os.environ.get("FSEV_TRACEFS", "/sys/kernel/tracing")
BTF_PATH = os.environ.get("FSEV_BTF_PATH", "/sys/kernel/btf/vmlinux")
# bcc attaches kprobes through the perf "kprobe" PMU (or kprobe_events on old
# kernels); either one existing means CONFIG_KPROBES=y.
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"


@dataclass(frozen=True)
class KernelFacts:
    release: str
    kprobes: bool
    kprobes_why_not: str = ""
    # Functions that exist and can be kprobed (only the ones fsev asked about).
    kprobe_functions: frozenset[str] = field(default_factory=frozenset)
    # "system:event" names that exist.
    tracepoints: frozenset[str] = field(default_factory=frozenset)
    raw_tracepoints: bool = True
    btf: bool = True
    tracefs: bool = True
    # beyond tracepoints and kprobes (_feature_facts)
    machine: str = "x86_64"  # raw sys_exit decoding knows x86-64 syscall numbers and pt_regs
    fanotify_fs_error: bool = False  # FAN_FS_ERROR (5.16+)
    fanotify_mntns: bool = False  # FAN_MARK_MNTNS, FAN_MNT_ATTACH/DETACH (6.15+)
    fserror: bool = False  # fserror_report() (7.0+): FAN_FS_ERROR from XFS and iomap filesystems too
    ext4_emergency_ro_bit: int | None = None  # EXT4_FLAGS_EMERGENCY_RO in BTF (6.12+)
    ext4_shutdown_bit: int | None = None  # EXT4_FLAGS_SHUTDOWN in BTF (4.10+; an anonymous enum, not always kept)
    ext4_aborted_bit: int | None = None  # EXT4_MF_FS_ABORTED in BTF (up to 6.5)
    # True when ext4_shutdown_bit is EXT4_FLAGS_SHUTDOWN_VALUE, not BTF's: the
    # anonymous enum is gone from Debian 13's 6.12 BTF, s_ext4_flags is not.
    ext4_shutdown_known: bool = False
    ext4_error_errno_param: int | None = None  # position of __ext4_error's `error` (4 on 5.8-5.10, 5 from 5.11)
    folio: bool = True  # struct folio in BTF (5.16+): mm_lru_insertion & co take one (before: a page)
    # Loaded modules (of those fsev's points hook) whose types are in no BTF:
    # module BTF is 5.11+, so on 5.10 btrfs's and xfs's structs cannot be read
    # and a rung reading them cannot start. Built-in code is in vmlinux's BTF.
    modules_without_btf: frozenset[str] = field(default_factory=frozenset)

    def has_tracepoint(self, name: str) -> bool:
        return name in self.tracepoints

    def module_btf(self, module: str) -> bool:
        """The module's structs can be read (its BTF, or built in)."""
        return self.btf and module not in self.modules_without_btf


# Types that exist exactly when the feature does.
FANOTIFY_FS_ERROR_TYPE = "sizeof:fanotify_error_event"  # FAN_FS_ERROR, 5.16
FANOTIFY_MNT_TYPE = "sizeof:fanotify_mnt_event"  # FAN_MNT_ATTACH/DETACH, FAN_MARK_MNTNS, 6.15
FSERROR_TYPE = "sizeof:fserror_event"  # fserror_report(), 7.0: ext4, XFS and iomap feed FAN_FS_ERROR through it
# ext4 >= 6.12: errors=remount-ro sets this bit of ext4_sb_info.s_ext4_flags
# instead of SB_RDONLY. Its presence decides which state the programs read.
EXT4_EMERGENCY_RO = "enum:EXT4_FLAGS_EMERGENCY_RO"
# 4.10+ (the shutdown ioctl); what errors=remount-ro sets from 6.7 to 6.11.
EXT4_SHUTDOWN = "enum:EXT4_FLAGS_SHUTDOWN"
# Up to 6.5, in ext4_sb_info.s_mount_flags: set with SB_RDONLY, or alone in
# stable kernels that stopped setting SB_RDONLY after errors (Debian's 6.1).
EXT4_ABORTED = "enum:EXT4_MF_FS_ABORTED"
# EXT4_FLAGS_SHUTDOWN's value in every kernel that has it (enum { RESIZING,
# SHUTDOWN, ... } since 4.10): used when BTF dropped the anonymous enum but
# has ext4_sb_info.s_ext4_flags, as Debian 13's 6.12 does (measured), where
# errors=remount-ro sets this bit and nothing else (6.7-6.14).
EXT4_FLAGS_SHUTDOWN_VALUE = 1
EXT4_FLAGS_FIELD = "ext4_sb_info.s_ext4_flags"
FOLIO_TYPE = "sizeof:folio"  # 5.16+
# Where __ext4_error takes its errno: 5.11 put `bool force_ro` before it.
EXT4_ERROR_ERRNO_PARAM = "param:__ext4_error.error"


def _feature_facts() -> dict:
    """The machine, fanotify's features and ext4's read-only flags, from the
    running kernel's BTF, so no feature is tried by acting."""
    out: dict = {"machine": os.uname().machine}
    try:
        from fsev.kernel.btf import BtfError, resolve  # imported only here: gathering needs it, planning not

        got = resolve([FANOTIFY_FS_ERROR_TYPE, FANOTIFY_MNT_TYPE, FSERROR_TYPE, EXT4_EMERGENCY_RO, EXT4_SHUTDOWN,
                       EXT4_ABORTED, EXT4_ERROR_ERRNO_PARAM, EXT4_FLAGS_FIELD, FOLIO_TYPE], modules=("ext4",))
    except (ImportError, OSError, ValueError, BtfError):  # no BTF: fsev cannot trace anyway
        return out
    out["fanotify_fs_error"] = got[FANOTIFY_FS_ERROR_TYPE] is not None
    out["fanotify_mntns"] = got[FANOTIFY_MNT_TYPE] is not None
    out["fserror"] = got[FSERROR_TYPE] is not None
    out["ext4_emergency_ro_bit"] = got[EXT4_EMERGENCY_RO]
    out["ext4_shutdown_bit"] = got[EXT4_SHUTDOWN]
    if got[EXT4_SHUTDOWN] is None and got[EXT4_FLAGS_FIELD] is not None:
        out["ext4_shutdown_bit"], out["ext4_shutdown_known"] = EXT4_FLAGS_SHUTDOWN_VALUE, True
    out["ext4_aborted_bit"] = got[EXT4_ABORTED]
    out["ext4_error_errno_param"] = got[EXT4_ERROR_ERRNO_PARAM]
    out["folio"] = got[FOLIO_TYPE] is not None
    return out


def _kprobe_blacklist() -> set[str]:
    for p in ("/sys/kernel/debug/kprobes/blacklist", "/sys/kernel/tracing/../debug/kprobes/blacklist"):
        try:
            with open(p) as f:
                return {line.split()[-1] for line in f if line.strip()}
        except OSError:
            continue
    return set()


def _traceable(functions: set[str]) -> set[str]:
    """Which of these functions are real (not inlined) text symbols."""
    found: set[str] = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T") and parts[2] in functions:
                    found.add(parts[2])
    except OSError:
        return set()
    return found - _kprobe_blacklist()


def _modules_without_btf(modules: Iterable[str]) -> frozenset[str]:
    """Loaded modules (initstate: a module, not built in) with no BTF of their own."""
    btf_dir = os.path.dirname(BTF_PATH)
    return frozenset(m for m in modules if os.path.exists(f"/sys/module/{m}/initstate")
                     and not os.path.exists(os.path.join(btf_dir, m)))


def gather(tracepoints: set[str], kprobe_functions: set[str], modules: Iterable[str] = ()) -> KernelFacts:
    """Read the kernel's facts for the probe points fsev may use (modules: the
    ones whose structs they read, registry.BTF_MODULES)."""
    release = os.uname().release
    tracefs = os.path.isdir(os.path.join(TRACEFS, "events"))
    kprobes = os.path.exists(KPROBE_PMU) or os.path.exists(os.path.join(TRACEFS, "kprobe_events"))
    why = "" if kprobes else "kernel built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events)"
    funcs = frozenset(_traceable(kprobe_functions)) if kprobes else frozenset()
    tps = frozenset(
        tp for tp in tracepoints if tracefs and os.path.isdir(os.path.join(TRACEFS, "events", *tp.split(":", 1)))
    )
    return KernelFacts(
        **_feature_facts(),
        release=release,
        kprobes=kprobes,
        kprobes_why_not=why,
        kprobe_functions=funcs,
        tracepoints=tps,
        btf=os.path.exists(BTF_PATH),
        tracefs=tracefs,
        modules_without_btf=_modules_without_btf(modules),
    )
