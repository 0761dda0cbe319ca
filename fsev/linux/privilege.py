"""Who may trace: root with CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON."""

from __future__ import annotations

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def can_trace(caps: int | None = None) -> bool:
    c = effective_caps() if caps is None else caps
    has = lambda bit: bool(c >> bit & 1)  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


NEED_ROOT = (
    "fsev needs root to trace (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN): run it with sudo"
)
