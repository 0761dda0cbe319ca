"""What the two XFS points share (xfs_error, xfs_shutdown): whether XFS's code
is in the running kernel, and what they say when it is not.

XFS is a module on every distribution kernel fsev runs on, loaded when the
first XFS filesystem is mounted: before that neither point has anything to
hook, and nothing to watch either (a dormant rung, not a degraded one).
"""

from __future__ import annotations

from fsev.kernel.facts import KernelFacts

FS_TYPE = "xfs"
ABSENT = "the xfs module is not loaded: no XFS filesystem is mounted (restart fsev after one is)"


def xfs_present(facts: KernelFacts) -> bool:
    """One of XFS's tracepoints or functions that fsev looked for is in the
    kernel: none are while the module is not loaded."""
    return any(t.startswith(f"{FS_TYPE}:") for t in facts.tracepoints) or \
        any(f.startswith(f"{FS_TYPE}_") for f in facts.kprobe_functions)
