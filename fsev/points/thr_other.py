"""Probe point thr_other: free space of every other filesystem, polled with statfs.

No kernel rung: fsev knows the block accounting of tmpfs and ext4 only.
"""

from __future__ import annotations

from fsev.kernel.facts import KernelFacts
from fsev.points.free_space import FreeSpacePoint
from fsev.probes.ladder import Rung, polled

NAME = "thr_other"


class ThrOther(FreeSpacePoint):
    name = NAME

    def plan(self, facts: KernelFacts) -> Rung:
        return polled(NAME, ("no kernel rung: fsev knows the block accounting of tmpfs and ext4 only",))


POINT = ThrOther()
