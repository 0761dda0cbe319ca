"""The BPF program text: bpf/fsev.bpf.c behind a preamble of load-time constants.

Settings reach the kernel side as #defines written here (never as edits to the
C text). source() expands bpf/fsev.bpf.c's includes of the files beside it, so
the text bcc compiles is the whole program, and `fsev trace --print-bpf`
shows exactly that. Each
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
from fsev.probes.ladder import Plan, RungKind

if TYPE_CHECKING:
    from fsev.probes.point import Point

# The entry file: includes bpf/common.h, then each probe point's bpf/<point>.bpf.c.
MAIN_SOURCE = "fsev.bpf.c"
# A local include (a file in bpf/), expanded by source(); <...> ones stay for bcc.
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


@dataclass(frozen=True)
class ProgramConfig:
    classes: frozenset[RecordClass]
    watch_all: bool
    ringbuf_pages: int = 256  # 1 MiB: about 5000 records of slack
    # Threshold probe points with a kernel rung armed on at least one mount.
    thr_points: frozenset[str] = frozenset()
    # Those of them armed on exactly one superblock: the BPF side may then
    # cache a mapping or inode as "that superblock" (bpf/thr_common.h).
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
    kprobes = False
    for p in points:
        d += p.defines(plan.rung(p.name), config)
        kprobes = kprobes or p.compiled_as(plan.rung(p.name), config, RungKind.KPROBE)
    # bpf/common.h includes the kernel's ptrace.h (struct pt_regs, 130 headers
    # that bcc parses three times: 25 ms of the compile) only for kprobes.
    d.append(("FSEV_KPROBES", "1" if kprobes else "0"))
    lines = [f"#define {k} {v}" for k, v in dict(d).items()]
    for spec, off in sorted(offsets.items()):
        lines.append(f"#define {offset_macro(spec)} {off}")
    return "/* fsev load-time constants */\n" + "\n".join(lines) + "\n"


def expand_includes(name: str, directory: Path, done: set[str] | None = None) -> str:
    """directory/name with each #include "x" of a file in directory replaced by
    x's text, itself expanded, where x first appears; a later include of x
    becomes a comment (headers have guards, and a .bpf.c file defines programs
    that bcc must see once). Depth first, in text order: the order the C
    preprocessor would read them in."""
    done = set() if done is None else done
    done.add(name)

    def one(m: re.Match[str]) -> str:
        inc = m.group(1)
        if not (directory / inc).is_file():
            return m.group(0)
        if inc in done:
            return f'/* #include "{inc}": expanded above */'
        text = expand_includes(inc, directory, done).rstrip("\n")
        return f"/* ---- bpf/{inc} ---- */\n{text}\n/* ---- end of bpf/{inc} ---- */"

    return _LOCAL_INCLUDE.sub(one, (directory / name).read_text())


def source(points: Iterable["Point"], plan: Plan, config: ProgramConfig, offsets: dict[str, int]) -> str:
    """The whole program as bcc compiles it: the preamble, then bpf/fsev.bpf.c
    with its local includes expanded (no #include "..." is left for bcc)."""
    return preamble(points, plan, config, offsets) + expand_includes(MAIN_SOURCE, bpf_dir())


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
