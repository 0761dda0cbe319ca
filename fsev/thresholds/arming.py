"""Arming free-space thresholds: which rung watches each mount, levels in blocks, the band.

Pure planning (arm_thresholds takes statfs and the CPU count as inputs), so
unit tests drive it without root. The kernel side (bpf/thr_common.h) gets
one ThrState per watched superblock; the user side (fsev/thresholds/monitor.py) gets
the same ArmedMount list and confirms every crossing with statfs.

The band is what makes confirmation cheap: the BPF side reads per-CPU
counters without summing them, so its estimate of the available blocks can be
off by up to `batch x CPUs` per counter (lib/percpu_counter.c keeps each
CPU's share within +-percpu_counter_batch, which is max(32, 2 x online CPUs)).
It hints user space only while a crossing is possible within that band.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from fsev.events.device import kernel_dev
from fsev.kernel.records import ThrKind, ThrState
from fsev.linux.mountinfo import Mount
from fsev.points.registry import ProbePoint
from fsev.points.thr_tmpfs import shmem_accounting
from fsev.probes.ladder import Plan, RungKind
from fsev.thresholds.levels import Levels, LevelSpec, ThresholdError, ThresholdSpec, resolve_levels

# Filesystem types whose block accounting fsev reads in the kernel. ext3 is
# served by the ext4 driver on every kernel fsev supports (ext3.ko is gone
# since 4.3). ext2 is too on kernels built with EXT4_USE_FOR_EXT2, but not on
# all: it is polled.
_POINT_BY_FS = {"tmpfs": ProbePoint.THR_TMPFS, "ext4": ProbePoint.THR_EXT4, "ext3": ProbePoint.THR_EXT4}
_KIND = {ProbePoint.THR_TMPFS: ThrKind.SHMEM, ProbePoint.THR_EXT4: ThrKind.EXT4}

LRU_BATCH = 31  # FOLIO_BATCH_SIZE - 1: folios a CPU holds before the LRU sees them
HPAGE_PMD_NR = 512  # a PMD huge page, in 4 KiB pages (x86-64, arm64 with 4K pages)


class StatfsResult(Protocol):
    # Read-only, as in os.statvfs_result: plain attributes would demand writable ones.
    @property
    def f_frsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...


@dataclass(frozen=True)
class ArmedMount:
    """Thresholds on one mount, ready for the kernel map and the monitor."""

    mount: Mount
    levels: Levels
    point: ProbePoint
    rung: RungKind  # KPROBE / RAW_TRACEPOINT, or POLLED
    block_size: int  # statfs f_frsize: the unit of every level
    total_blocks: int
    band: int  # kernel rungs: |counter estimate - statfs| bound, in blocks
    lag: int  # blocks a charge can stay unseen by the kernel rung (tmpfs LRU batching)
    step: int = 1  # kernel budget per event: tmpfs, pages of the largest folio; ext4, blocks per cluster
    cpus: int = 1  # possible CPUs: the kernel cuts each budget into this many per-CPU shares
    slack: int = 0  # kernel: blocks a check keeps back for events in flight on other CPUs (slack_for)

    @property
    def polled(self) -> bool:
        return self.rung is RungKind.POLLED

    @property
    def kind(self) -> ThrKind:
        """Which kernel accounting the rung reads (NONE when polled)."""
        return ThrKind.NONE if self.polled else _KIND[self.point]

    @property
    def key(self) -> int:
        """Kernel dev_t of the superblock: the thr_slot key, and how hints name it."""
        return kernel_dev(self.mount.major, self.mount.minor)

    def state(self, depth: int) -> ThrState:
        lv = self.levels
        return ThrState(
            l1=lv.l1, l2=lv.l2 if lv.l2 is not None else 0, hysteresis=lv.hysteresis, band=self.band,
            slack=self.slack, last_hint_ns=0, gate=0, step=self.step, kind=int(self.kind), nlevels=len(lv.as_list()),
            depth=depth, dev=self.key, cpus=self.cpus,
        )

    def describe(self) -> str:
        lv = self.levels
        text = f"L1 {lv.l1}" + (f", L2 {lv.l2}" if lv.l2 is not None else "")
        text += f" blocks of {self.block_size} bytes (of {self.total_blocks})"
        if lv.hysteresis:
            text += f", hysteresis {lv.hysteresis}"
        if self.polled:
            return f"{text}; polled (statfs)"
        return (f"{text}; {self.rung.value}, confirmed by statfs, band {self.band} blocks; "
                "per-page hooks attached only near a level")


def percpu_batch(online_cpus: int) -> int:
    """lib/percpu_counter.c: percpu_counter_batch = max(32, 2 * online CPUs)."""
    return max(32, 2 * online_cpus)


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """CPUs whose per-CPU counter share can be non-zero (ranges like 0-3,8)."""
    try:
        text = open(path).read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def ext4_cluster_bits(device: str) -> int:
    """log2(blocks per cluster) from the on-disk superblock (0 without bigalloc).

    statfs does not say it; the BPF side reads s_cluster_bits itself, this is
    only for sizing the band. Unreadable: 0, and the band is then too small
    only on bigalloc filesystems (the monitor's trailing statfs reads cover it).
    """
    try:
        with open(device, "rb") as f:
            f.seek(1024)
            sb = f.read(1024)
    except OSError:
        return 0
    if len(sb) < 0x68 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        return 0
    log_block, log_cluster = struct.unpack_from("<II", sb, 0x18)
    ro_compat = struct.unpack_from("<I", sb, 0x64)[0]
    bigalloc = bool(ro_compat & 0x200)
    return max(0, log_cluster - log_block) if bigalloc else 0


def band_for(point: ProbePoint, rung: RungKind, plan: Plan, cpus: int, cluster_bits: int = 0) -> tuple[int, int]:
    """(band, lag) in blocks for a kernel rung; (0, 0) when polled."""
    if rung is RungKind.POLLED:
        return 0, 0
    per_counter = percpu_batch(cpus) * cpus
    if point is ProbePoint.THR_TMPFS:
        band, lag = per_counter, 0  # used_blocks
        if rung is RungKind.RAW_TRACEPOINT:
            lag = LRU_BATCH * cpus
        else:
            r = plan.rung(point)
            row = shmem_accounting(r.targets) if r else None
            if row is not None and not row.acct_pages:
                band += HPAGE_PMD_NR  # the charge's size is not an argument there
        return band + lag, lag
    # ext4: free and dirty cluster counters, in clusters.
    return (2 * per_counter) << cluster_bits, 0


def slack_for(point: ProbePoint, cpus: int, cluster_bits: int = 0) -> int:
    """Blocks a kernel check holds back from the budget it shares out per CPU.

    A check claims a new generation, then reads the counters; an event on
    another CPU whose charge was still in that CPU's store buffer can have
    read the old generation and spend from an old share: one event per other
    CPU, each at most a PMD-size folio (tmpfs huge pages; ext4's large folios
    reserve that much at once, plus a partly covered cluster).
    """
    largest = HPAGE_PMD_NR if point is ProbePoint.THR_TMPFS else HPAGE_PMD_NR + (1 << cluster_bits)
    return (cpus - 1) * largest


def arm_thresholds(
    plan: Plan,
    mounts: list[Mount],
    spec: ThresholdSpec,
    hysteresis: LevelSpec | None = None,
    statfs: Callable[[str], StatfsResult] = os.statvfs,
    cpus: int | None = None,
    cluster_bits: Callable[[str], int] = ext4_cluster_bits,
) -> list[ArmedMount]:
    """Levels in blocks and a rung for each mount (one per superblock).

    Raises ThresholdError, naming the mount, for levels the filesystem can
    never reach or a filesystem without a size.
    """
    cpus = cpus or possible_cpus()
    armed: list[ArmedMount] = []
    seen: set[tuple[int, int]] = set()
    for m in mounts:
        if (m.major, m.minor) in seen:  # bind mounts of one superblock: one state
            continue
        seen.add((m.major, m.minor))
        st = statfs(m.mount_point)
        try:
            hyst = hysteresis.to_blocks(st.f_frsize, st.f_blocks) if hysteresis else 0
            levels = resolve_levels(spec, st.f_frsize, st.f_blocks, hyst)
        except ThresholdError as e:
            if m.fs_type == "tmpfs" and st.f_blocks == 0:
                raise ThresholdError(
                    f"{m.mount_point}: tmpfs without a size limit (size=0) has no free-space count; "
                    "remount it with size=... to use --thr"
                ) from None
            raise ThresholdError(f"{m.mount_point}: {e}") from None
        point = _POINT_BY_FS.get(m.fs_type, ProbePoint.THR_OTHER)
        r = plan.rung(point)
        rung = r.kind if r is not None and r.kind is not RungKind.NONE else RungKind.POLLED
        if point is ProbePoint.THR_OTHER:
            rung = RungKind.POLLED
        bits = cluster_bits(m.source) if point is ProbePoint.THR_EXT4 and rung is not RungKind.POLLED else 0
        band, lag = band_for(point, rung, plan, cpus, bits)
        # tmpfs: an LRU event is one folio, up to a PMD huge page (huge=...);
        # ext4: reservations count clusters.
        step = HPAGE_PMD_NR if point is ProbePoint.THR_TMPFS else 1 << bits
        slack = slack_for(point, cpus, bits) if rung is not RungKind.POLLED else 0
        armed.append(ArmedMount(m, levels, point, rung, st.f_frsize, st.f_blocks, band, lag, step, cpus, slack))
    return armed


def kernel_points(armed: list[ArmedMount]) -> frozenset[ProbePoint]:
    """Threshold probe points whose kernel programs must be compiled in."""
    return frozenset(a.point for a in armed if not a.polled)


def single_points(armed: list[ArmedMount]) -> frozenset[ProbePoint]:
    """Kernel probe points armed on exactly one superblock (arm_thresholds keeps one
    ArmedMount per superblock)."""
    points = [a.point for a in armed if not a.polled]
    return frozenset(p for p in points if points.count(p) == 1)
