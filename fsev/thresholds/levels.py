"""Free-space thresholds: parsing `--thr` and the reference state machine.

Levels count *available blocks* (statfs f_bavail, in f_frsize units), as in the
generic filesystem events proposal fsev descends from. L1 >= L2: L1 is the
first warning ("lower range reached"), L2 the second ("upper range reached").

The same rules run in the kernel (bpf/ threshold state, per superblock); this
module is the reference the kernel side is tested against and the engine of
the statfs-polling fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_LEVEL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[KMGTP]i?B?|B)?\s*$", re.IGNORECASE)


class ThresholdError(ValueError):
    """A malformed or impossible --thr; str() is the one-line message."""


@dataclass(frozen=True)
class LevelSpec:
    """One level as written: blocks, a size in bytes, or a percentage."""

    amount: float
    unit: str  # "blocks", "bytes" or "percent"
    text: str

    def to_blocks(self, block_size: int, total_blocks: int) -> int:
        if self.unit == "blocks":
            return int(self.amount)
        if self.unit == "bytes":
            return int(self.amount // block_size)
        return int(total_blocks * self.amount / 100)


@dataclass(frozen=True)
class ThresholdSpec:
    l1: LevelSpec
    l2: LevelSpec | None

    @property
    def text(self) -> str:
        return self.l1.text + ("," + self.l2.text if self.l2 else "")


@dataclass(frozen=True)
class Levels:
    """Levels in available blocks, ready for the state machine."""

    l1: int
    l2: int | None = None
    hysteresis: int = 0

    def __post_init__(self) -> None:
        if self.l1 < 0 or (self.l2 is not None and self.l2 < 0):
            raise ThresholdError("threshold levels must not be negative")
        if self.l2 is not None and self.l2 > self.l1:
            raise ThresholdError(
                f"L2 ({self.l2}) must not exceed L1 ({self.l1}): levels count available blocks, "
                "so L2, the later warning, is the smaller number"
            )
        if self.hysteresis < 0:
            raise ThresholdError("--thr-hysteresis must not be negative")

    def as_list(self) -> list[int]:
        return [self.l1] if self.l2 is None else [self.l1, self.l2]


def _parse_level(text: str) -> LevelSpec:
    m = _LEVEL_RE.match(text)
    if not m:
        raise ThresholdError(
            f"bad threshold level {text!r}: expected available blocks (710000), "
            "a size (10G) or a percentage (10%)"
        )
    amount = float(m.group(1))
    suffix = (m.group(2) or "").upper()
    if suffix == "%":
        if amount > 100:
            raise ThresholdError(f"bad threshold level {text!r}: a percentage cannot exceed 100")
        return LevelSpec(amount, "percent", text.strip())
    if suffix == "":
        if amount != int(amount):
            raise ThresholdError(f"bad threshold level {text!r}: a block count is a whole number")
        return LevelSpec(amount, "blocks", text.strip())
    unit = suffix.rstrip("B").rstrip("I") if suffix != "B" else ""
    return LevelSpec(amount * _SIZE_UNITS[unit], "bytes", text.strip())


def parse_thr(text: str) -> ThresholdSpec:
    """Parse `L1[,L2]`. Checks what can be checked without a filesystem."""
    parts = [p for p in text.split(",")]
    if not text.strip() or len(parts) > 2 or any(not p.strip() for p in parts):
        raise ThresholdError(f"bad --thr {text!r}: expected L1[,L2], e.g. 710000,500000 or 10G,5G or 10%,5%")
    l1 = _parse_level(parts[0])
    l2 = _parse_level(parts[1]) if len(parts) == 2 else None
    if l2 is not None and l1.unit == l2.unit and l2.amount > l1.amount:
        raise ThresholdError(
            f"bad --thr {text!r}: L2 ({l2.text}) exceeds L1 ({l1.text}); levels count available "
            "space, so L1 >= L2"
        )
    return ThresholdSpec(l1, l2)


def parse_hysteresis(text: str) -> LevelSpec:
    """`--thr-hysteresis`: blocks (100), a size (64M) or a percentage of the filesystem (1%)."""
    try:
        return _parse_level(text)
    except ThresholdError:
        raise ThresholdError(
            f"bad --thr-hysteresis {text!r}: expected blocks (100), a size (64M) or a percentage (1%)"
        ) from None


def resolve_levels(spec: ThresholdSpec, block_size: int, total_blocks: int, hysteresis: int = 0) -> Levels:
    """Convert to blocks for one filesystem, rejecting levels it can never reach."""
    if total_blocks <= 0:
        raise ThresholdError(
            "the filesystem reports no size (statfs f_blocks is 0, e.g. tmpfs mounted with size=0): "
            "free-space levels cannot apply; give it a size limit"
        )
    l1 = spec.l1.to_blocks(block_size, total_blocks)
    l2 = spec.l2.to_blocks(block_size, total_blocks) if spec.l2 else None
    for name, v, s in (("L1", l1, spec.l1), ("L2", l2, spec.l2)):
        if v is not None and s is not None and v > total_blocks:
            raise ThresholdError(
                f"--thr {name} {s.text} is {v} blocks, more than the filesystem has ({total_blocks} "
                f"blocks of {block_size} bytes)"
            )
    return Levels(l1, l2, hysteresis)


@dataclass(frozen=True)
class Crossing:
    level: int  # 1 or 2
    level_blocks: int
    direction: str  # "down" or "up"
    avail_blocks: int

    @property
    def level_name(self) -> str:
        return f"L{self.level}"


class ThresholdState:
    """The seed's two-level rules, one filesystem.

    depth 0: above L1; 1: at or below L1 (and above L2); 2: at or below L2.
    Falling to a level fires once; rising above level + hysteresis fires once
    and re-arms it. A jump across both levels fires both, in order.
    """

    __slots__ = ("levels", "depth")

    def __init__(self, levels: Levels, avail_blocks: int | None = None) -> None:
        self.levels = levels
        self.depth = 0
        if avail_blocks is not None:
            # Start in the state the filesystem is already in, silently:
            # fsev reports crossings, not the level it found at start.
            self.depth = self._depth_for(avail_blocks)

    def _depth_for(self, avail: int) -> int:
        lv = self.levels.as_list()
        return sum(1 for L in lv if avail <= L)

    def update(self, avail: int) -> list[Crossing]:
        lv = self.levels.as_list()
        out: list[Crossing] = []
        while self.depth < len(lv) and avail <= lv[self.depth]:
            out.append(Crossing(self.depth + 1, lv[self.depth], "down", avail))
            self.depth += 1
        while self.depth > 0 and avail > lv[self.depth - 1] + self.levels.hysteresis:
            out.append(Crossing(self.depth, lv[self.depth - 1], "up", avail))
            self.depth -= 1
        return out
