"""The probe ladder: rungs, plans, and the reasons a richer rung was skipped.

Each probe point (fsev/points/<name>.py) plans its own ladder from the
running kernel's facts; this module holds what every ladder is made of. Pure:
unit tests plan made-up kernels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fsev.kernel.facts import KernelFacts


class RungKind(str, enum.Enum):
    KPROBE = "kprobe"
    TRACEPOINT = "tracepoint"
    RAW_TRACEPOINT = "raw_tracepoint"
    FANOTIFY = "fanotify"  # fanotify(7) marks from user space (with tracepoints beside them)
    POLLED = "polled"  # statfs, /sys or /proc read by user space: no kernel probe at all
    NONE = "none"


@dataclass(frozen=True)
class Rung:
    point: str  # the probe point's name (fsev.points.registry.ProbePoint)
    kind: RungKind
    targets: tuple[str, ...] = ()  # functions or tracepoints attached
    gives: str = ""  # what this rung reports
    misses: str = ""  # what it cannot see
    skipped: tuple[str, ...] = field(default_factory=tuple)  # why richer rungs were not used
    # BTF facts beyond struct offsets that the rung's programs read (e.g.
    # "enum:EXT4_FLAGS_EMERGENCY_RO"); resolved with the offsets.
    reads: tuple[str, ...] = ()
    # Why there is nothing here to watch (kind NONE only): the running kernel
    # lacks the code the point hooks, not a mechanism to hook it (a function of
    # a newer kernel; a filesystem module not loaded, so none of its kind is
    # mounted). "" when the code is there.
    absent: str = ""
    # Argument positions the rung's kprobe programs read, where they moved
    # between kernels: (macro name, PT_REGS_PARMn index), chosen by plan().
    args: tuple[tuple[str, int], ...] = ()

    @property
    def usable(self) -> bool:
        return self.kind is not RungKind.NONE

    @property
    def name(self) -> str:
        """The point's name as text (point may be a str enum member)."""
        return str(getattr(self.point, "value", self.point))


@dataclass(frozen=True)
class Plan:
    rungs: tuple[Rung, ...]

    def rung(self, point: str) -> Rung | None:
        for r in self.rungs:
            if r.point == point:
                return r
        return None

    def kind(self, point: str) -> RungKind | None:
        """The kind of a usable rung for point; None if it has none."""
        r = self.rung(point)
        return r.kind if r is not None and r.usable else None

    def summary(self) -> dict[str, str]:
        return {r.name: r.kind.value for r in self.rungs}


def kprobe_skip_reason(facts: KernelFacts, required: tuple[str, ...]) -> str | None:
    """Why the kprobe rung on these functions cannot be used here; None if it can."""
    if not facts.kprobes:
        return f"kprobe: {facts.kprobes_why_not or 'kprobes unavailable'}"
    missing = [f for f in required if f not in facts.kprobe_functions]
    if missing:
        return f"kprobe: {', '.join(missing)} not a traceable symbol in this kernel (inlined or renamed)"
    return None


def module_btf_skip_reason(facts: KernelFacts, module: str, rung: str) -> str | None:
    """Why a rung that reads this module's structs cannot be used here; None if it can."""
    if not facts.btf:
        return f"{rung}: no kernel BTF to read {module}'s structs"
    if not facts.module_btf(module):
        return (f"{rung}: the {module} module has no BTF (module BTF is Linux 5.11+), so its structs "
                "cannot be read safely")
    return None


def raw_tp_skip_reason(facts: KernelFacts, tracepoints: tuple[str, ...], x86_64: bool = False) -> str | None:
    """Why raw tracepoints on these events cannot be used here; None if they can.
    x86_64: the program decodes x86-64 syscall numbers and pt_regs (raw sys_exit)."""
    if not facts.raw_tracepoints:
        return "raw_tracepoint: not supported by this kernel"
    missing = [t for t in tracepoints if not facts.has_tracepoint(t)]
    if missing:
        return f"raw_tracepoint: {', '.join(missing)} not present"
    if not facts.btf:
        return "raw_tracepoint: no kernel BTF to read the raw arguments safely"
    if x86_64 and facts.machine not in ("x86_64", "amd64"):
        return f"raw_tracepoint: sys_exit decoding knows x86-64 syscall numbers only, not {facts.machine}"
    return None


POLLED_GIVES = "statfs every few hundred ms from user space, with a per-mount timeout"
POLLED_MISSES = "the pid and comm of the task that caused a crossing; crossings shorter than the poll interval"


def polled(point: str, skipped: tuple[str, ...]) -> Rung:
    """The statfs rung every free-space point falls back to."""
    return Rung(point, RungKind.POLLED, ("statfs",), gives=POLLED_GIVES, misses=POLLED_MISSES, skipped=skipped)
