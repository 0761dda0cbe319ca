#!/usr/bin/env python3
"""Threshold overhead with a control arm, on the real kernel (root).

bench_thresholds.py compares "thresholds armed" with "fsev not running"
(with free page reporting on, that A/B is bimodal here: a slow mode of the
writer that comes and goes; both benches pause it). This one adds a third
arm, fsev running *without* thresholds (`--events err` on the same mount),
so that what the threshold programs cost can be told
apart from what fsev's mere running does to the writer, and a fourth,
thresholds armed at a level the write never comes near (`--thr 2%`), where
fsev keeps its per-page hooks detached (fsev/thresholds/gate.py). Arms are drawn in a
shuffled order each round (seeded); each arm starts fsev, the base arm stops
it again before its write (bench_thresholds.writes_beside_fsev).

Reported per arm: median writer CPU over all rounds, how many rounds fell into
the slow mode (CPU above 1.5 x the base median), and the median of the other
(fast) rounds; the overhead of thresholds is given against both base and the
control arm.

Writes bench/results/thr_arms.json. Usage:
    sudo /opt/fsev/venv/bin/python bench/bench_thr_arms.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import bench_thresholds as bt

RESULTS = Path(__file__).resolve().parent / "results" / "thr_arms.json"
ARMS = ("base", "fsev_no_thr", "thr_far", "thr_armed")


def arm_args(arm: str, mp: str) -> list[str]:
    if arm == "fsev_no_thr":
        return ["--mount", mp, "--events", "err"]
    if arm == "thr_far":
        # A level the write never comes near: fsev keeps its per-page hooks
        # detached (fsev/thresholds/gate.py) and only reads statfs now and then.
        return ["--mount", mp, "--thr", "2%", "--events", "thr"]
    return ["--mount", mp, "--thr", "40%,20%", "--events", "thr"]


def run_case(name: str, mount_ctx, nbytes: int, fsync: bool, rounds: int) -> dict:
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    rng = random.Random(name)
    with mount_ctx as mp:
        bt.timed_write(mp, nbytes, fsync)  # warm-up
        for _ in range(rounds):
            order = list(ARMS)
            rng.shuffle(order)
            for arm in order:
                [(_, cpu_s)], _ = bt.writes_beside_fsev(arm_args(arm, mp), mp, nbytes, fsync, 1, arm != "base")
                cpu[arm].append(cpu_s)
    base_med = statistics.median(cpu["base"])
    out: dict = {"name": name, "bytes": nbytes, "fsync": fsync, "rounds": rounds, "arms": {}}
    for arm, v in cpu.items():
        fast = [x for x in v if x <= 1.5 * base_med]
        out["arms"][arm] = {
            "cpu_s": [round(x, 4) for x in v],
            "median_cpu_s": round(statistics.median(v), 4),
            "slow_rounds": len(v) - len(fast),
            "fast_median_cpu_s": round(statistics.median(fast), 4) if fast else None,
        }
    a = out["arms"]

    def pct(x: float | None, y: float | None) -> float | None:
        return round((x / y - 1) * 100, 2) if x and y else None

    out["thr_vs_base_median_pct"] = pct(a["thr_armed"]["median_cpu_s"], a["base"]["median_cpu_s"])
    out["thr_vs_base_fast_pct"] = pct(a["thr_armed"]["fast_median_cpu_s"], a["base"]["fast_median_cpu_s"])
    out["thr_vs_control_fast_pct"] = pct(a["thr_armed"]["fast_median_cpu_s"], a["fsev_no_thr"]["fast_median_cpu_s"])
    out["control_vs_base_fast_pct"] = pct(a["fsev_no_thr"]["fast_median_cpu_s"], a["base"]["fast_median_cpu_s"])
    out["far_vs_base_fast_pct"] = pct(a["thr_far"]["fast_median_cpu_s"], a["base"]["fast_median_cpu_s"])
    out["thr_vs_far_fast_pct"] = pct(a["thr_armed"]["fast_median_cpu_s"], a["thr_far"]["fast_median_cpu_s"])
    out["target_overhead_pct"] = 2.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-page-reporting", action="store_true",
                    help="leave the VM's free page reporting on (noisier: see bench_thresholds.page_reporting_paused)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    bt.stop_on_sigterm()
    with bt.page_reporting_paused(not args.keep_page_reporting) as reporting:
        return run(args, reporting)


def run(args: argparse.Namespace, reporting: dict) -> int:
    res = {"kernel": os.uname().release, "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "loadavg_at_start": os.getloadavg(), "page_reporting": reporting, "cases": []}
    for name, ctx, nbytes, fsync in (
        ("tmpfs 2 GiB sequential write", bt.tmpfs("3g"), 2 * bt.GiB, False),
        ("ext4 loop 1 GiB write + fsync", bt.ext4_loop(1600), bt.GiB, True),
    ):
        c = run_case(name, ctx, nbytes, fsync, args.rounds)
        res["cases"].append(c)
        arms = "; ".join(f"{k} {v['median_cpu_s']}s (fast {v['fast_median_cpu_s']}s, slow {v['slow_rounds']})"
                         for k, v in c["arms"].items())
        print(f"{name}: {arms}; thresholds vs base (fast runs) {c['thr_vs_base_fast_pct']}%, "
              f"vs fsev without thresholds {c['thr_vs_control_fast_pct']}%, vs a level far away "
              f"{c['thr_vs_far_fast_pct']}%; far level vs base {c['far_vs_base_fast_pct']}%", flush=True)
    res["loadavg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
