"""`fsev doctor`: can this host trace, and with which rung per probe point?"""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich.table import Table

from fsev.linux.privilege import can_trace
from fsev.points.registry import ProbePoint, plan_probes
from fsev.probes.ladder import RungKind
from fsev.session.setup_checks import Check, check_bcc, check_btf, check_headers, check_tracefs
from fsev.session.trace import kernel_facts


def _service_check() -> Check:
    """Whether `fsev serve` answers on its socket (informational: standalone works without it)."""
    from fsev.errors import FsevError
    from fsev.service.client import request, socket_path

    path = socket_path()
    try:
        status = request({"op": "status"}, path, timeout=2.0)["status"]
    except FsevError as e:
        why = "" if str(e).startswith("no fsev service") else f" ({e})"
        return Check("service", True, f"not running at {path}{why}: trace, top and record run standalone")
    return Check("service", True, f"fsev serve pid {status.get('pid')} at {path}: "
                 f"{len(status.get('watching', []))} mounts watched, {len(status.get('listeners', []))} listeners")


def _device_counters(console: Console) -> None:
    """The device error counters now: the baseline a session starts from
    (btrfs_dev_stats reports only what grows after it)."""
    from fsev.linux.mountinfo import MountTable
    from fsev.points.btrfs_dev_stats import counters_now

    try:
        rows = counters_now(MountTable.read())
    except OSError:
        return
    if not rows:
        return
    t = Table(title="device error counters now (the baseline: fsev reports only what grows after it)")
    for col in ("mount", "device", "devid", "counters"):
        t.add_column(col, overflow="fold")
    for mp, device, devid, got in rows:
        text = got if isinstance(got, str) else ", ".join(f"{k} {v}" for k, v in got.items())
        t.add_row(mp, device, str(devid or "-"), text)
    console.print(t)


def run_doctor(as_json: bool = False) -> int:
    console = Console(highlight=False)
    checks: list[Check] = [
        Check("kernel", True, f"{os.uname().release} {os.uname().version}"),
        Check("privilege", can_trace(), "root: may trace" if can_trace() else "not root: cannot load BPF",
              "run fsev with sudo"),
        check_btf(),
        check_tracefs(),
        check_headers(),
        check_bcc(),
        _service_check(),
    ]
    facts = kernel_facts()
    plan = plan_probes(facts)
    # Only the foundation's points are required; a health point without a
    # rung here (e.g. no block:block_rq_error on an old kernel) is shown, not fatal.
    required = (ProbePoint.EXT4_ERROR, ProbePoint.MOUNT_DROP)
    failed = [c for c in checks if not c.ok] + [r for r in plan.rungs if not r.usable and r.point in required]
    notes: list[str] = []
    if plan.kind(ProbePoint.EXT4_ERROR_DETAIL) is RungKind.FANOTIFY:
        from fsev.linux.mountinfo import MountTable
        from fsev.points.ext4_error_detail import mark_notes

        notes = mark_notes(list(MountTable.read()))
    if as_json:
        # The same checks and plan, for scripts and the VM test's ladder table
        # (tests/vm/test_ladder.py): the rung of each point and why.
        print(json.dumps({
            "kernel": os.uname().release,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks],
            "plan": [{"point": r.name, "rung": r.kind.value, "targets": list(r.targets), "gives": r.gives,
                      "misses": r.misses, "skipped": list(r.skipped), "absent": r.absent} for r in plan.rungs],
            "notes": notes,
            "can_trace": not failed,
        }, indent=1))
        return 1 if failed else 0
    t = Table(title="fsev doctor", show_lines=False)
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail / fix", overflow="fold")
    for c in checks:
        t.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail if c.ok else f"{c.detail}\nfix: {c.fix}")
    console.print(t)

    p = Table(title="probe plan (richest rung this kernel offers)")
    p.add_column("probe point")
    p.add_column("rung")
    p.add_column("attaches")
    p.add_column("why not richer / what it misses", overflow="fold")
    for r in plan.rungs:
        why = "\n".join(r.skipped)
        if r.misses:
            why += ("\n" if why else "") + f"misses: {r.misses}"
        if r.absent:
            why += ("\n" if why else "") + f"nothing to watch: {r.absent}"
        p.add_row(r.name, r.kind.value, ", ".join(r.targets) or "-", why or "-")
    console.print(p)
    _device_counters(console)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}")

    if failed:
        console.print("[red]fsev cannot trace on this host[/]: fix the rows marked FAIL above.")
        return 1
    console.print("[green]fsev can trace on this host.[/]")
    return 0
