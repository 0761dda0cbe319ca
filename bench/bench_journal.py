"""Journal benchmarks (issue 6), results as JSON in bench/results/journal.json.

- write_path: synthetic Events through the recorder's sink (Recorder.emit ->
  JournalWriter: JSON line, batch, segment insert, fsynced commit) until every
  event is committed. Goal: >= 100 000 events/s sustained.
- parts: what one event costs in each stage (CPU), to see where the time goes.
- end_to_end (root): real ext4 errors raised at a target rate by a writer
  process on CPU 1; on CPU 0 a TraceSession feeds a Recorder, as `fsev record`
  does. Recorded + lost (ring buffer drops, counted) against raised.

The machine is shared by other work; each figure is a median of several runs,
with the load average recorded next to it.

Run: /opt/fsev-journal/venv/bin/python bench/bench_journal.py  (root for end_to_end)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fsev.events import Event, EventClass, EventType
from fsev.events.json_line import event_json
from fsev.journal.recorder import Recorder
from fsev.journal.store import Journal
from fsev.kernel.facts import KernelFacts
from fsev.points.registry import plan_probes
from fsev.testing.flood import start_writer

RESULTS = Path(__file__).resolve().parent / "results" / "journal.json"
GOAL_EPS = 100_000


def synthetic(n: int) -> list[Event]:
    """Events as a flood of ext4 errors on the tracepoint rung produces them."""
    return [
        Event(seq=i + 1, ts_ns=10**12 + i * 7000, wall_time=1.7e9 + i * 7e-6, cls=EventClass.ERR,
              type=EventType.FS_ERROR, rung="tracepoint", dev="7:3", mount_point="/tmp/fsev-ext4-3yq0x1be/mnt",
              fs_type="ext4", source="/dev/loop3", mnt_id=412, pid=5000 + i % 3, tgid=5000 + i % 3,
              comm="python3", function="trigger_test_error", line=129)
        for i in range(n)
    ]


def _plan():
    return plan_probes(KernelFacts(release=os.uname().release, kprobes=False,
                                   tracepoints=frozenset({"ext4:ext4_error", "syscalls:sys_enter_umount",
                                                          "syscalls:sys_exit_umount"})))


def write_path(n: int = 500_000, runs: int = 5) -> dict:
    evs = synthetic(n)
    rates, cpus, sizes = [], [], []
    with tempfile.TemporaryDirectory(prefix="fsev-bench-") as d:
        for r in range(runs):
            path = os.path.join(d, f"w{r}.fsev")
            rec = Recorder(path, "bench").start(_plan(), {}, None)
            t0, c0 = time.perf_counter(), time.process_time()
            for ev in evs:
                rec.emit(ev)
            assert rec.writer is not None
            rec.writer.flush()  # returns when the last batch is committed and fsynced
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rec.close("bench")
            rates.append(n / dt)
            cpus.append(dc / n * 1e6)
            sizes.append(os.path.getsize(path) / n)
            os.unlink(path)
    return {"events": n, "runs": runs, "events_per_s": [round(x) for x in rates],
            "median_events_per_s": round(statistics.median(rates)), "best_events_per_s": round(max(rates)),
            "cpu_us_per_event_median": round(statistics.median(cpus), 2),
            "bytes_per_event": round(statistics.median(sizes), 1), "goal_events_per_s": GOAL_EPS,
            "meets_goal": statistics.median(rates) >= GOAL_EPS}


def parts(n: int = 200_000) -> dict:
    evs = synthetic(n)
    c0 = time.process_time()
    lines = [event_json(e) for e in evs]
    ser = time.process_time() - c0
    with tempfile.TemporaryDirectory(prefix="fsev-bench-") as d:
        j = Journal.open(os.path.join(d, "p.fsev"), write=True, create=True)
        rec = j.begin_recording("bench", [], {})
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, n, 5000):
            j.commit_segment(rec, lines[i:i + 5000], [])
        com_cpu, com_wall = time.process_time() - c0, time.perf_counter() - t0
        j.close()
    return {"json_line_cpu_us": round(ser / n * 1e6, 2),
            "commit_cpu_us_per_event": round(com_cpu / n * 1e6, 2),
            "commit_wall_us_per_event": round(com_wall / n * 1e6, 2),
            "note": "commit: 5000-event segments, fsynced (synchronous=FULL); wall includes the disk"}




def end_to_end(fs, rate: float, seconds: float = 3.0) -> dict:
    """`fsev record`'s path, in process so it can be pinned: TraceSession -> Recorder -> journal."""
    from fsev.linux.mountinfo import MountTable
    from fsev.session.selection import resolve_mounts
    from fsev.session.trace import TraceOptions, TraceSession

    os.sched_setaffinity(0, {0})
    try:
        with tempfile.TemporaryDirectory(prefix="fsev-bench-") as d:
            path = os.path.join(d, "e.fsev")
            mounts = resolve_mounts([fs.mount_point], MountTable.read())
            s = TraceSession(TraceOptions(mounts=mounts, classes=frozenset({EventClass.ERR})))
            rec = Recorder(path, "bench").start(s.plan, {}, None)
            s.start()
            w = start_writer(fs.name, rate, seconds)
            c0, t0 = time.process_time(), time.monotonic()
            for ev in s.events(poll_ms=10, until=t0 + seconds + 0.5):
                rec.emit(ev)
            s.close()
            rec.close("bench")
            cpu = time.process_time() - c0
            raised = int(w.communicate()[0])
            with Journal.open(path) as j:
                evs = [r.json() for r in j.records()]
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    recorded = sum(1 for e in evs if e["type"] == "fs_error")
    lost = sum(e["lost"] for e in evs if e["type"] == "loss")
    walls = [e["wall_time"] for e in evs if e["type"] == "fs_error"]
    span = (max(walls) - min(walls)) if len(walls) > 1 else seconds
    return {"target_rate": rate or "max", "raised": raised, "raised_per_s": round(raised / seconds),
            "recorded": recorded, "lost": lost, "accounted": recorded + lost == raised,
            "recorded_per_s": round(recorded / max(span, 1e-9)),
            "recorder_cpu_us_per_event": round(cpu / max(recorded, 1) * 1e6, 2)}


def main() -> None:
    res: dict = {"kernel": os.uname().release, "cpus": os.cpu_count(), "time": time.time(),
                 "loadavg_before": os.getloadavg()}
    res["write_path"] = write_path()
    res["parts"] = parts()
    if os.geteuid() == 0:
        from fsev.testing.kernel_rig import ext4

        with ext4() as fs:
            res["end_to_end"] = [end_to_end(fs, r) for r in (50_000, 100_000, 0)]
    else:
        res["end_to_end"] = "skipped: needs root"
    res["loadavg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
