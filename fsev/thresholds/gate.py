"""Which per-page threshold hooks must be attached now: only those near a level.

Any BPF program on a per-page tracepoint (mm_lru_insertion,
ext4_da_reserve_space) or kprobe costs the writer the kernel's dispatch, even
an empty one: about 30 ns per 4 KiB page here, 2.5-3 % of a write's CPU
(bench/results/thresholds.json). Far from a level no page can make a
crossing, so fsev detaches those hooks there and reads statfs instead, more
often as the available blocks approach a level, and attaches them again a
lead ahead of it (on either side of it: see distance()):

    reach = rate x lead + band + lag          (blocks)

`rate` is the fastest the free space is assumed to fall: RATE_BOUND bytes/s,
or OBSERVED_MARGIN x what the previous two samples showed when that is
faster (a writer still speeding up). The lead covers the attach and the
lateness of a poll. An attach takes 0.2-0.4 ms, except within an RCU grace
period of the same hook's last detach: the kernel then waits for that grace
period (a tracepoint going from one probe to none and back), 7-24 ms
measured on this VM. So the lead is LEAD_S, or LEAD_AFTER_DETACH_S for
AFTER_DETACH_S after a detach; and a hook is detached only beyond
OFF_FACTOR x the longer reach, so the attach that follows a detach is never
needed sooner than that. band and lag are the kernel estimate's own error
(fsev/thresholds/arming.py). While detached, the next statfs comes when a
writer at `rate` could have reached the reach, at most POLL_MAX_S later: so
a writer no faster than `rate` always meets the hook attached. A faster one
crosses unseen by the kernel; the next statfs still confirms the crossing
(late by less than one poll), without a pid.

Hooks of frees (tmpfs's page-cache deletes, shmem's un-charge) matter only
below L1, where a free can re-arm a level: attached while a mount of their
kind is below L1, and kept while it is near a level. The other ext4 hooks
fire per extent, not per page: always attached.

Pure functions here; fsev/thresholds/monitor.py samples statfs and switches.
"""

from __future__ import annotations

import math
import os

from fsev.errors import FsevError
from fsev.kernel.records import ThrKind
from fsev.kernel.thr_slots import Hook

RATE_BOUND = 4 << 30  # bytes/s: a single writer into the page cache, with room
LEAD_S = 0.01  # an attach (0.2-0.4 ms) and a late poll
LEAD_AFTER_DETACH_S = 0.05  # an attach waiting for the last detach's RCU grace period (7-24 ms)
AFTER_DETACH_S = 0.1  # how long after a detach that wait can come (grace periods: ~15 ms here)
POLL_MIN_S = 0.002
POLL_MAX_S = 0.1
OFF_FACTOR = 2  # detach only beyond OFF_FACTOR x the longer reach: no flapping at the edge
OBSERVED_MARGIN = 1.25  # over the last observed fall: a writer still speeding up
RATE_ENV = "FSEV_THR_RATE"  # bytes/s instead of RATE_BOUND (tests; hosts that write faster)


CHARGE_HOOK = {ThrKind.SHMEM: Hook.SHMEM_CHARGE, ThrKind.EXT4: Hook.EXT4_CHARGE}
FREE_HOOK = {ThrKind.SHMEM: Hook.SHMEM_FREE}


def rate_bound(environ: dict[str, str] | None = None) -> int:
    """RATE_BOUND, or FSEV_THR_RATE when set; FsevError for anything but a
    positive number of bytes/s (a typo would otherwise pass unnoticed)."""
    text = (os.environ if environ is None else environ).get(RATE_ENV, "").strip()
    if not text:
        return RATE_BOUND
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise FsevError(f"{RATE_ENV} must be a positive number of bytes per second, not {text!r}")
    return v


def rate_blocks(bound_bytes: int, block_size: int, observed_blocks_s: float = 0.0) -> float:
    """Blocks per second the free space is assumed able to fall at."""
    return max(bound_bytes / max(block_size, 1), OBSERVED_MARGIN * observed_blocks_s)


def lead_s(since_detach_s: float) -> float:
    """Seconds an attach may take, given how long ago the same hook was detached."""
    return LEAD_AFTER_DETACH_S if since_detach_s < AFTER_DETACH_S else LEAD_S


def reach(rate_blocks_s: float, band: int, lag: int, lead: float = LEAD_S) -> int:
    """Blocks from a level within which the charge hook must be attached."""
    return math.ceil(rate_blocks_s * lead) + band + lag


def distance(levels: list[int], hysteresis: int, avail: int) -> int:
    """Blocks from avail to the nearest level, on either side: 0 between a level
    and its re-arm point (level + hysteresis). Either side, because a mount
    that hovers at a level crosses it back and forth: detaching there would
    make every crossing pay an attach (milliseconds, in fsev's main loop)."""
    return min(max(lv - avail, avail - (lv + hysteresis), 0) for lv in levels)


def charge_needed(dist: int, on_reach: int, off_reach: int, attached: bool) -> bool:
    """Attach within on_reach of a level (reach() with lead_s()); once attached,
    stay until OFF_FACTOR x off_reach (reach() with LEAD_AFTER_DETACH_S): after
    a detach the mount is that far, beyond even the slow attach's reach."""
    return dist <= (OFF_FACTOR * off_reach if attached else on_reach)


def free_needed(depth: int, dist: int, off_reach: int, attached: bool) -> bool:
    """Below L1 a free can re-arm a level; once attached, it stays while the
    mount is near a level (for the same reason as charge_needed's)."""
    return depth > 0 or (attached and dist <= OFF_FACTOR * off_reach)


def next_sample_s(dist: int, reach_blocks: int, rate_blocks_s: float, attached: bool) -> float:
    """Seconds until the next statfs of a mount: soon enough that a writer at
    rate cannot pass the reach before it. With the hook attached hints drive
    statfs; the slow poll only notices when to detach."""
    if attached:
        return POLL_MAX_S
    ahead = dist - reach_blocks
    if ahead <= 0:
        return POLL_MIN_S
    return min(POLL_MAX_S, max(POLL_MIN_S, ahead / max(rate_blocks_s, 1.0)))
