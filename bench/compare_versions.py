"""Two versions of fsev side by side: bench_pipeline.py of each, in alternating
rounds on this machine, with the ratios of their figures (results as JSON in
bench/results/pipeline_ab.json).

Each side is a source tree and the Python of a venv with that tree installed:

  sudo /opt/fsev/venv/bin/python bench/compare_versions.py \\
      --base-tree /work/old --base-python /opt/fsev-old/bin/python [--rounds 2]

The other side is this tree and the Python running this script. Not run by
`make bench` (it needs a second install); a change that may cost speed says
its ratios from here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pipeline_ab.json"
# (figure, path into pipeline.json, higher is better)
FIGURES = (
    ("start_to_attached_s", ("start_to_attached", "median_s"), False),
    ("compile_and_attach_s", ("start_to_attached", "compile_and_attach_median_s"), False),
    ("decode_events_per_cpu_s", ("decode_only", "events_per_cpu_s"), True),
    ("latency_p99_ms", ("latency", "p99_ms"), False),
)


def one_run(tree: Path, python: str) -> dict:
    out = tree / "bench" / "results" / "pipeline.json"
    before = out.read_bytes() if out.exists() else None
    subprocess.run([python, str(tree / "bench" / "bench_pipeline.py")], check=True, cwd="/",
                   stdout=subprocess.DEVNULL)
    got = json.loads(out.read_text())
    if before is not None:  # leave each tree's committed results as they were
        out.write_bytes(before)
    return got


def figure(run: dict, path: tuple[str, str]) -> float:
    return float(run[path[0]][path[1]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-tree", type=Path, required=True)
    ap.add_argument("--base-python", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--base-label", default="base")
    args = ap.parse_args()
    sides = {"base": (args.base_tree.resolve(), args.base_python), "this": (HERE.parent, sys.executable)}
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    for _ in range(args.rounds):
        for side, (tree, python) in sides.items():
            runs[side].append(one_run(tree, python))
    res: dict = {"kernel": os.uname().release, "time": time.time(), "rounds": args.rounds,
                 "base": {"label": args.base_label, "tree": str(sides["base"][0])}, "figures": {}}
    for name, path, higher_better in FIGURES:
        base = statistics.median(figure(r, path) for r in runs["base"])
        this = statistics.median(figure(r, path) for r in runs["this"])
        res["figures"][name] = {"base": base, "this": this, "this_over_base": round(this / base, 3),
                                "higher_is_better": higher_better,
                                "base_runs": [figure(r, path) for r in runs["base"]],
                                "this_runs": [figure(r, path) for r in runs["this"]]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    for name, f in res["figures"].items():
        print(f"{name}: base {f['base']:.4g}, this {f['this']:.4g}, ratio {f['this_over_base']}")


if __name__ == "__main__":
    main()
