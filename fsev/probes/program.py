"""The BPF program text: bpf/fsev.bpf.c behind a preamble of load-time constants.

Settings reach the kernel side as #defines written here (never as edits to the
C text), so `fsev trace --print-bpf` shows exactly what bcc compiles. Each
probe point gives its own switches, offsets and attachments
(fsev/points/<name>.py); this module puts them together for a plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from fsev.kernel.records import RecordClass, class_mask
from fsev.probes.ladder import Plan

if TYPE_CHECKING:
    from fsev.probes.point import Point

MAIN_SOURCE = "fsev.bpf.c"
# Free-space thresholds and the health events: appended to MAIN_SOURCE, whose
# ring buffer they share.
THR_SOURCE = "fsev_thr.bpf.c"
HEALTH_SOURCE = "fsev_health.bpf.c"


@dataclass(frozen=True)
class ProgramConfig:
    classes: frozenset[RecordClass]
    watch_all: bool
    ringbuf_pages: int = 256  # 1 MiB: about 5000 records of slack
    # Threshold probe points with a kernel rung armed on at least one mount.
    thr_points: frozenset[str] = frozenset()
    # Those of them armed on exactly one superblock: the BPF side may then
    # cache a mapping or inode as "that superblock" (bpf/fsev_thr.bpf.c).
    thr_single: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        p = self.ringbuf_pages
        if p < 1 or p & (p - 1):
            raise ValueError(f"ring buffer pages must be a power of two, not {p}")


def bpf_dir() -> Path:
    """Where the C ships: inside the installed package (fsev.bpf)."""
    return Path(str(resources.files("fsev.bpf")))


def offset_macro(spec: str) -> str:
    return "OFF_" + re.sub(r"[^A-Za-z0-9]", "_", spec).upper()


def required_offsets(points: Iterable["Point"], plan: Plan, config: ProgramConfig | None = None) -> list[str]:
    """BTF specs the programs of this plan read, each once, in the points' order."""
    specs: list[str] = []
    for p in points:
        r = plan.rung(p.name)
        if r is not None:
            specs += p.offsets(r, config)
    return list(dict.fromkeys(specs))


def preamble(points: Iterable["Point"], plan: Plan, config: ProgramConfig, offsets: dict[str, int]) -> str:
    """The #define block for this plan. Pure: tests check it without a kernel."""
    d: list[tuple[str, str]] = [
        ("FSEV_RINGBUF_PAGES", str(config.ringbuf_pages)),
        ("FSEV_CLASS_MASK", hex(class_mask(set(config.classes)))),
        ("FSEV_WATCH_ALL", "1" if config.watch_all else "0"),
    ]
    for p in points:
        d += p.defines(plan.rung(p.name), config)
    lines = [f"#define {k} {v}" for k, v in dict(d).items()]
    for spec, off in sorted(offsets.items()):
        lines.append(f"#define {offset_macro(spec)} {off}")
    return "/* fsev load-time constants */\n" + "\n".join(lines) + "\n"


def source(points: Iterable["Point"], plan: Plan, config: ProgramConfig, offsets: dict[str, int]) -> str:
    body = "\n".join((bpf_dir() / name).read_text() for name in (MAIN_SOURCE, THR_SOURCE, HEALTH_SOURCE))
    return preamble(points, plan, config, offsets) + body


def kprobe_attachments(points: Iterable["Point"], plan: Plan, config: ProgramConfig) -> list[tuple[str, str]]:
    """(kernel function, BPF function name) pairs the loader attaches."""
    out: list[tuple[str, str]] = []
    for p in points:
        r = plan.rung(p.name)
        if r is not None:
            out += p.kprobes(r, config)
    return out


def raw_tracepoint_attachments(points: Iterable["Point"], plan: Plan,
                               config: ProgramConfig) -> list[tuple[str, str, str]]:
    """(tracepoint, typed BPF function or "", plain BPF function) the loader
    attaches itself (bcc attaches the RAW_TRACEPOINT_PROBE ones as it loads them)."""
    out: list[tuple[str, str, str]] = []
    for p in points:
        r = plan.rung(p.name)
        if r is not None:
            out += p.raw_tracepoints(r, config)
    return out
