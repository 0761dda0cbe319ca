"""The kernel facts the health probe points plan on, beyond tracepoints and
kprobes: the machine, fanotify's features, and ext4's emergency read-only
flag. Taken from the running kernel's BTF, so no feature is tried by acting.
"""

from __future__ import annotations

import os

# Types that exist exactly when the feature does.
FANOTIFY_FS_ERROR_TYPE = "sizeof:fanotify_error_event"  # FAN_FS_ERROR, 5.16
FANOTIFY_MNT_TYPE = "sizeof:fanotify_mnt_event"  # FAN_MNT_ATTACH/DETACH, FAN_MARK_MNTNS, 6.15
# ext4 >= 6.12: errors=remount-ro sets this bit of ext4_sb_info.s_ext4_flags
# instead of SB_RDONLY. Its presence decides which state the programs read.
EXT4_EMERGENCY_RO = "enum:EXT4_FLAGS_EMERGENCY_RO"
# 4.10+ (the shutdown ioctl); what errors=remount-ro sets from 6.7 to 6.11.
EXT4_SHUTDOWN = "enum:EXT4_FLAGS_SHUTDOWN"
# Up to 6.5, in ext4_sb_info.s_mount_flags: set with SB_RDONLY, or alone in
# stable kernels that stopped setting SB_RDONLY after errors (Debian's 6.1).
EXT4_ABORTED = "enum:EXT4_MF_FS_ABORTED"


def gather_health_facts() -> dict:
    out: dict = {"machine": os.uname().machine}
    try:
        from fsev.kernel.btf import BtfError, resolve

        got = resolve([FANOTIFY_FS_ERROR_TYPE, FANOTIFY_MNT_TYPE, EXT4_EMERGENCY_RO, EXT4_SHUTDOWN, EXT4_ABORTED],
                      modules=("ext4",))
    except (ImportError, OSError, ValueError, BtfError):  # no BTF: fsev cannot trace anyway
        return out
    out["fanotify_fs_error"] = got[FANOTIFY_FS_ERROR_TYPE] is not None
    out["fanotify_mntns"] = got[FANOTIFY_MNT_TYPE] is not None
    out["ext4_emergency_ro_bit"] = got[EXT4_EMERGENCY_RO]
    out["ext4_shutdown_bit"] = got[EXT4_SHUTDOWN]
    out["ext4_aborted_bit"] = got[EXT4_ABORTED]
    return out
