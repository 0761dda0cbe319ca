"""Made-up kernels for planning and program tests: the one builder of KernelFacts
in the tests, and the kernels more than one test plans on.

fake_kernel() takes KernelFacts' own fields, with the same defaults (a
kernel without kprobes or tracepoints), and any set for a frozenset.
"""

from __future__ import annotations

from typing import Any

from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import Record

CORE_TRACEPOINTS = frozenset({"ext4:ext4_error", "syscalls:sys_enter_umount", "syscalls:sys_exit_umount"})


def fake_kernel(*, release: str = "test", kprobes: bool = False, kprobes_why_not: str = "",
                kprobe_functions: "frozenset[str] | set[str]" = frozenset(),
                tracepoints: "frozenset[str] | set[str]" = frozenset(), **features: Any) -> KernelFacts:
    """A KernelFacts as gather() would report for such a kernel."""
    return KernelFacts(release=release, kprobes=kprobes, kprobes_why_not=kprobes_why_not,
                       kprobe_functions=frozenset(kprobe_functions), tracepoints=frozenset(tracepoints), **features)


# The tracepoint rungs only: what the record contract and the program text are checked on.
TRACEPOINTS_ONLY = fake_kernel(kprobes_why_not="test", tracepoints=CORE_TRACEPOINTS)


def raw_record(**fields: Any) -> Record:
    """A struct fsev_record with these fields set (the rest zero), as the kernel sends it."""
    r = Record()
    for k, v in fields.items():
        setattr(r, k, v)
    return r
