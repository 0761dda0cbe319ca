"""The VM guests (tests/vm, vm/guests) as the tests inside them see them.

Inside a guest FSEV_VM_GUEST=1 and FSEV_VM_RELEASE names it (debian11,
debian12, debian13). A guest's kernel is known, so a test skipping there for
"this kernel lacks X" either names a lack that release really has (listed
here, per release) or hides a feature fsev failed to find: tests/conftest.py
turns every other skip inside a guest into a failure.
"""

from __future__ import annotations

import os
import re

IN_GUEST = os.environ.get("FSEV_VM_GUEST") == "1"
RELEASE = os.environ.get("FSEV_VM_RELEASE", "")

# release -> patterns (re.search, case-insensitive) of the skip reasons it may give.
_BEFORE_6_15 = (r"FAN_MARK_MNTNS|fanotify mount(-namespace)? marks?|FAN_MNT_(ATTACH|DETACH)",
                r"emergency_ro.*(6\.15|mountinfo)",
                r"fserror_report is Linux 7\.0\+")
EXPECTED_SKIPS: dict[str, tuple[str, ...]] = {
    # 5.10: no FAN_FS_ERROR (5.16), no statmount/listmount (6.8), no ext4
    # emergency_ro or shutdown flag after errors (6.7/6.12).
    "debian11": _BEFORE_6_15 + (r"FAN_FS_ERROR|fanotify.*(5\.16|fs.error)", r"statmount|listmount",
                                r"EXT4_FLAGS_(EMERGENCY_RO|SHUTDOWN)|before 6\.(7|12)",
                                r"no known pair of shmem accounting functions",
                                r"module has no BTF \(module BTF is Linux 5\.11\+\)"),
    # 6.1: no statmount/listmount, no emergency_ro; shmem_inode_acct_block inlined.
    "debian12": _BEFORE_6_15 + (r"statmount|listmount", r"EXT4_FLAGS_EMERGENCY_RO|before 6\.12",
                                r"shmem_inode_acct_blocks?"),
    # 6.12: emergency_ro not yet in mountinfo (6.15).
    "debian13": _BEFORE_6_15,
}


def skip_allowed(reason: str, release: str = RELEASE) -> bool:
    return any(re.search(p, reason, re.IGNORECASE) for p in EXPECTED_SKIPS.get(release, ()))
