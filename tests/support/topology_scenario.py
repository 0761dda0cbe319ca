"""The mount-topology scenario both rungs must report the same way
(tests/kernel/test_event_points_kernel.py here, test_event_points_kprobe.py in the VM)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from fsev.testing.kernel_rig import FsevTrace, run, unmount


def _rung_for(trace: FsevTrace, point: str) -> str:
    line = next(l for l in trace.stderr_lines if l.startswith(f"fsev: {point}: "))
    return line.split(": ")[2].split()[0]


def topology_scenario(attach_timeout: float = 60) -> tuple[list[dict], tuple[str, str, str, str], str]:
    """Mount a tmpfs, bind it, move the bind, remount it read-only, unmount
    both; then a tmpfs that only a short-lived mount namespace ever has (no
    umount(2) drops it, the namespace's end does). The events, the four
    paths and the mount_topology rung. (Also run in the stock-kernel VM.)"""
    a, b, c, ns_dir = (tempfile.mkdtemp(prefix=f"fsev-topo-{x}-") for x in "abcn")
    try:
        with FsevTrace(["--events", "info"]) as t:
            t.wait_attached(timeout=attach_timeout)
            rung = _rung_for(t, "mount_topology")
            # mount(2) itself: util-linux 2.39+ (Debian 13) uses the new mount API,
            # which fsev reports by its calls (move_mount "attach", fsconfig
            # "reconfigure"), not by these actions.
            classic = {**os.environ, "LIBMOUNT_FORCE_MOUNT2": "always"}
            run("mount", "-t", "tmpfs", "-o", "size=1m", "fsev-topo", a, env=classic)
            run("mount", "--bind", a, b, env=classic)
            run("mount", "--move", b, c, env=classic)
            run("mount", "-o", "remount,ro", a, env=classic)
            time.sleep(0.3)
            run("umount", c)
            run("umount", a)
            subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=1m fsev-ns {ns_dir} && exit"], check=True, env=classic)
            t.wait_for(lambda e: any(x["type"] == "umount" and x.get("cause") == "namespace_teardown" for x in e),
                       timeout=5 if rung == "fanotify" else 2)
            time.sleep(0.3)
            assert t.stop() == 0
    finally:
        for d in (c, b, a, ns_dir):
            unmount(d)
            os.rmdir(d)
    return t.events(), (a, b, c, ns_dir), rung


def check_topology(evs: list[dict], paths: tuple[str, str, str, str], rung: str) -> list[dict]:
    """The events every rung gives; returns those of the other namespace."""
    a, b, c, ns_dir = paths
    mine = [e for e in evs if e.get("mount_point") in paths or e.get("path") in paths]
    mounts = [e for e in mine if e["type"] == "mount"]
    assert [(e.get("action"), e["mount_point"]) for e in mounts][:4] == [
        ("mount", a), ("bind", b), ("move", c), ("remount", a)], mine
    assert mounts[1]["from"] == a and mounts[2]["from"] == b and mounts[3]["read_only"] is True
    new = mounts[0]
    assert new["fs_type"] == "tmpfs" and new["comm"] == "mount" and new["mnt_id"] > 0 and new["class"] == "info"
    assert new["rung"] == rung
    drops = [(e["mount_point"], e.get("cause")) for e in mine if e["type"] == "umount"]
    assert (c, None) in drops and (a, None) in drops
    ro = [e for e in mine if e["type"] == "read_only"]
    assert ro and ro[0]["class"] == "info" and ro[0]["read_only"] is True and ro[0]["cause"] == "remount"
    own_ns = os.stat("/proc/self/ns/mnt").st_ino
    inside = [e for e in mine if e.get("mnt_ns") and e["mnt_ns"] != own_ns]
    assert inside and (inside[0]["type"], inside[0]["mount_point"]) == ("mount", ns_dir), inside
    return inside
