"""The threshold programs' kernel-side bookkeeping: the thr_state map's slots
and gate word (struct fsev_thr_state in bpf/fsev.h), and the groups the
per-page programs are attached and detached in.

Pure: which slot a new superblock takes, and the gate user space writes with
a new state. The loader (fsev.kernel.loader) applies them.
"""

from __future__ import annotations

import enum

from fsev.kernel.records import ThrKind


class Hook(enum.Enum):
    """A group of per-page programs attached and detached together
    (fsev/thresholds/gate.py says when; fsev/points/thr_*.py name their programs')."""

    SHMEM_CHARGE = "tmpfs charge"
    SHMEM_FREE = "tmpfs free"
    EXT4_CHARGE = "ext4 reservation"


def thr_slot_for(kind: int, taken: set[int]) -> int:
    """The thr_state slot for a new superblock of `kind` (a ThrKind): the first of
    each kind gets slot kind - 1, where the BPF side looks for the only one of a
    kind armed on a single superblock (FSEV_THR_*_SINGLE); others the lowest free
    slot after those."""
    first = kind - 1
    if 0 <= first < len(ThrKind) - 1 and first not in taken:
        return first
    slot = len(ThrKind) - 1
    while slot in taken:
        slot += 1
    return slot


# The gate word of struct fsev_thr_state: generation << 32 | per-CPU share.
GATE_GEN = 1 << 32
USER_GEN_STEP = 1 << 16  # far past any generation a racing kernel check can claim


def reset_gate(gate: int) -> int:
    """The gate user space writes with a new state: a generation no CPU holds a
    share of (so every CPU checks again, under the new depth), share 0. A
    kernel check racing with the write then fails to publish: its cmpxchg
    expects the generation it claimed, at most one past the one read here."""
    return (((gate >> 32) + USER_GEN_STEP) % GATE_GEN) << 32
