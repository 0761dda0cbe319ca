"""Made-up filesystems for the threshold tests: a kernel, mounts, statfs."""

from __future__ import annotations

from dataclasses import dataclass

from fsev.kernel.facts import KernelFacts
from fsev.linux.mountinfo import Mount
from fsev.points.thr_ext4 import EXT4_THR_TRACEPOINTS
from fsev.points.thr_tmpfs import SHMEM_TRACEPOINTS
from support.kernels import fake_kernel

ALL_TP = frozenset(SHMEM_TRACEPOINTS + EXT4_THR_TRACEPOINTS)


def facts(kprobes: bool = False, funcs: frozenset[str] = frozenset(), tps: frozenset[str] = ALL_TP) -> KernelFacts:
    return fake_kernel(release="test", kprobes=kprobes, kprobes_why_not="" if kprobes else "no kprobes",
                       kprobe_functions=funcs, tracepoints=tps)


def mount(mp: str, fs_type: str, minor: int = 40, major: int = 0, source: str = "x") -> Mount:
    return Mount(minor, 1, major, minor, "/", mp, ("rw",), fs_type, source, ())


@dataclass
class FakeStatfs:
    f_frsize: int = 4096
    f_blocks: int = 2048
    f_bavail: int = 2048


class Disk:
    """A statfs whose available blocks the test sets (of `blocks` in all)."""

    def __init__(self, avail: int, blocks: int = 2048) -> None:
        self.avail = avail
        self.blocks = blocks
        self.calls = 0

    def __call__(self, path: str) -> FakeStatfs:
        self.calls += 1
        return FakeStatfs(f_blocks=self.blocks, f_bavail=self.avail)
