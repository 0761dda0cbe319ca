"""`fsev serve` against the real kernel: one service, its configuration changed
live over the socket, listeners with their own filters, the flight recorder.

Each test starts its own service (its own config, socket and journal in a
temporary directory: fsev/testing/service_rig.py) and its own mounts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from fsev.service.protocol import encode
from fsev.testing.kernel_rig import FSEV, ext4, run, tmpfs
from fsev.testing.service_rig import fsev_serve

pytestmark = pytest.mark.root


def errors_of(evs: list[dict], mount: str) -> list[dict]:
    return [e for e in evs if e["type"] == "fs_error" and e.get("mount_point") == mount]


def test_listeners_with_different_filters_get_exactly_their_events():
    with ext4() as x, ext4() as y, tmpfs() as t, fsev_serve("* info,warn,err\n") as svc:
        errs_x = svc.listener("--mount", x.mount_point, "--events", "err")
        info = svc.listener("--events", "info")
        every = svc.listener()
        assert any("attached to the fsev service" in l for l in errs_x.stderr_lines)
        x.trigger_errors(3)
        y.trigger_errors(2)
        sub = os.path.join(t, "sub")
        os.mkdir(sub)
        run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sub)
        run("umount", sub)
        every.wait_for(lambda e: len(errors_of(e, y.mount_point)) == 2
                       and any(ev["type"] == "umount" and ev.get("mount_point") == sub for ev in e))
        time.sleep(0.3)  # room for a wrong extra event
        for lst in (errs_x, info, every):
            assert lst.stop() == 0
        got_x = [e for e in errs_x.events() if e["type"] != "loss"]
        assert [e["type"] for e in got_x] == ["fs_error"] * 3
        assert {e["mount_point"] for e in got_x} == {x.mount_point}
        assert {e["function"] for e in got_x} == {"trigger_test_error"}
        got_info = info.events()
        assert got_info and all(e["class"] == "info" for e in got_info)
        assert any(e["type"] == "umount" and e.get("mount_point") == sub for e in got_info), got_info
        got_all = every.events()
        assert len(errors_of(got_all, x.mount_point)) == 3 and len(errors_of(got_all, y.mount_point)) == 2
        # seq is the service's: every listener sees the same numbers, in order
        seqs = [e["seq"] for e in got_all]
        assert seqs == sorted(seqs) and {e["seq"] for e in got_x} <= set(seqs)
        assert svc.stop() == 0


def test_a_config_change_reaches_the_kernel_without_losing_events_and_a_bad_line_changes_nothing():
    with ext4() as x, ext4() as y, fsev_serve(f"{y.mount_point} err\n") as svc:
        lst = svc.listener()
        x.trigger_errors(2)  # x is not configured: filtered in the kernel
        y.trigger_errors(1)
        lst.wait_for(lambda e: len(errors_of(e, y.mount_point)) == 1)
        stop = threading.Event()
        raised = [0]

        def keep_raising() -> None:  # y's errors go on through the change: none may be lost
            while not stop.is_set():
                y.trigger_errors(1)
                raised[0] += 1
                time.sleep(0.001)

        writer = threading.Thread(target=keep_raising)
        writer.start()
        try:
            r = svc.config(f"{x.mount_point} err")
        finally:
            time.sleep(0.1)
            stop.set()
            writer.join()
        assert r.returncode == 0, r.stderr
        x.trigger_errors(1)  # the reply came after the kernel took it
        lst.wait_for(lambda e: len(errors_of(e, x.mount_point)) == 1
                     and len(errors_of(e, y.mount_point)) == 1 + raised[0])
        assert len(errors_of(lst.events(), x.mount_point)) == 1
        assert len(errors_of(lst.events(), y.mount_point)) == 1 + raised[0]
        before = svc.config("--show").stdout
        bad = svc.config(f"{x.mount_point} info; {y.mount_point} thr 5% 10%")
        assert bad.returncode == 2
        assert bad.stderr.strip().startswith("fsev: ")
        assert len(bad.stderr.strip().splitlines()) == 1 and "L2" in bad.stderr and "request 2" in bad.stderr
        assert svc.config("--show").stdout == before  # the good first request was not applied either
        assert f"{x.mount_point} err" in before
        assert lst.stop() == 0
        assert svc.stop() == 0


def test_a_configured_mount_is_watched_when_mounted_dropped_when_gone_and_watched_again():
    with ext4() as x:
        later = x.mount_point
        run("umount", later)
        with fsev_serve(f"{later} err\n") as svc:
            lst = svc.listener()
            run("mount", "-o", "errors=continue", x.loop, later)
            try:
                t0 = time.monotonic()
                while not _watched(svc, later) and time.monotonic() - t0 < 2:
                    time.sleep(0.005)
                assert _watched(svc, later)  # how soon: bench/bench_service.py (mount_watched_ms)
                x.trigger_errors(1)
                lst.wait_for(lambda e: len(errors_of(e, later)) == 1)
                run("umount", later)
                t0 = time.monotonic()
                while _watched(svc, later) and time.monotonic() - t0 < 2:
                    time.sleep(0.005)
                assert not _watched(svc, later)  # dropped from the kernel filter
                run("mount", "-o", "errors=continue", x.loop, later)
                time.sleep(0.2)
                x.trigger_errors(2)
                lst.wait_for(lambda e: len(errors_of(e, later)) == 3)
            finally:
                if not os.path.ismount(later):
                    run("mount", x.loop, later, check=False)  # the fixture unmounts it
            assert len(errors_of(lst.events(), later)) == 3
            assert lst.stop() == 0
            assert svc.stop() == 0


def _watched(svc, mount_point: str) -> bool:
    """Whether the service watches mount_point now (its show request)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(svc.socket_path)
    s.sendall(encode({"op": "show"}))
    reply = json.loads(s.makefile("rb").readline())
    s.close()
    return any(w["mount_point"] == mount_point for w in reply["watching"])


def test_a_crossed_threshold_keeps_its_state_across_a_change_of_another_mount():
    with tmpfs("8m") as t, ext4() as x, fsev_serve(f"{t} thr 4M 2M\n") as svc:
        lst = svc.listener("--events", "thr")
        with open(os.path.join(t, "a"), "wb") as f:
            f.write(b"\0" * (5 << 20))  # 3 MiB left: L1 crossed
        lst.wait_for(lambda e: any(ev["level"] == "L1" for ev in e))
        assert svc.config(f"{x.mount_point} err").returncode == 0
        time.sleep(0.5)
        with open(os.path.join(t, "b"), "wb") as f:
            f.write(b"\0" * (2 << 20))  # 1 MiB left: L2 crossed
        lst.wait_for(lambda e: any(ev["level"] == "L2" for ev in e))
        time.sleep(0.3)
        assert lst.stop() == 0
        crossings = [(e["level"], e["direction"]) for e in lst.events() if e["type"] == "threshold"]
        assert crossings == [("L1", "down"), ("L2", "down")]  # none repeated, none missed
        assert svc.stop() == 0


def test_a_listener_that_never_reads_gets_its_exact_loss_and_the_others_complete():
    n = 20000
    with ext4() as x, fsev_serve(f"{x.mount_point} err\nlistener_queue 64\n") as svc:
        fast = svc.listener()
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(svc.socket_path)
        slow.sendall(encode({"op": "listen", "name": "slow"}))
        time.sleep(0.2)
        x.trigger_errors(n)
        fast.wait_for(lambda e: len(errors_of(e, x.mount_point)) + sum(
            ev["lost"] for ev in e if ev["type"] == "loss") >= n, timeout=30)
        fast_evs = fast.events()
        kernel_lost = sum(e["lost"] for e in fast_evs if e["type"] == "loss" and e["rung"] == "ringbuf")
        fast_lost = sum(e["lost"] for e in fast_evs if e["type"] == "loss" and e["rung"] == "listener")
        assert len(errors_of(fast_evs, x.mount_point)) + kernel_lost + fast_lost == n
        # now the slow one reads: what it got plus what it was told it lost is everything
        f = slow.makefile("rb")
        slow.settimeout(10)
        assert json.loads(f.readline())["ok"] is True
        got = lost_listener = lost_kernel = 0
        while got + lost_listener + lost_kernel < n:
            e = json.loads(f.readline())
            if e["type"] == "loss":
                if e["rung"] == "listener":
                    lost_listener += e["lost"]
                else:
                    lost_kernel += e["lost"]
            elif e["type"] == "fs_error":
                got += 1
        assert got + lost_listener + lost_kernel == n
        assert lost_listener > 0 and lost_kernel == kernel_lost
        slow.close()
        assert fast.stop() == 0
        assert svc.stop() == 0


def test_garbage_disconnects_hung_and_killed_listeners_leave_the_service_serving():
    with ext4() as x, fsev_serve(f"{x.mount_point} err\nlistener_timeout 1s\n") as svc:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(svc.socket_path)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert json.loads(s.makefile("rb").readline())["ok"] is False
        s.close()
        doomed = svc.listener()
        x.trigger_errors(50)
        doomed.proc.kill()  # mid-stream
        doomed.proc.wait(10)
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(svc.socket_path)
        half.sendall(b'{"op": "listen"')  # and never the rest
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hung.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hung.connect(svc.socket_path)
        hung.sendall(encode({"op": "listen", "name": "hung"}))
        time.sleep(0.2)
        x.trigger_errors(5000)  # fills its socket; then it reads nothing for longer than listener_timeout
        assert "read nothing for 1s" in svc.wait_log("dropped listener hung", timeout=10)
        hung.close()
        after = svc.listener()
        x.trigger_errors(3)
        after.wait_for(lambda e: len(errors_of(e, x.mount_point)) == 3)
        half.close()
        assert after.stop() == 0
        assert svc.proc is not None and svc.proc.poll() is None
        assert svc.stop() == 0


GROUP = "fsevtestlisten"


@pytest.fixture
def listen_group():
    run("groupadd", "-f", GROUP)
    try:
        yield GROUP
    finally:
        run("groupdel", GROUP, check=False)


def test_non_root_listeners_are_refused_or_see_only_their_namespace(listen_group):
    with tmpfs() as a, tmpfs() as b, fsev_serve("* info,warn,err\n") as svc:
        nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        r = subprocess.run([*nobody, FSEV, "trace", "--count", "1"], capture_output=True, text=True,
                           env=svc.env, timeout=30)
        assert r.returncode == 2 and "permission denied" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line: the socket is root's
    with tmpfs() as a, tmpfs() as b, fsev_serve(f"socket_group {listen_group}\n* info,warn,err\n") as svc:
        gid = int(run("getent", "group", listen_group).stdout.split(":")[2])
        member = ["setpriv", "--reuid", "65534", "--regid", "65534", "--groups", str(gid)]
        # In a mount namespace of its own where b is unmounted: b's events are not its business.
        script = f"umount {b} && exec {' '.join(member)} {FSEV} trace --json --events warn"
        lst = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=svc.env)
        host = svc.listener("--events", "warn")  # root, the host's namespace: sees both
        try:
            time.sleep(1.0)
            for full in (a, b):  # ENOSPC on each (warn)
                subprocess.run(["dd", "if=/dev/zero", f"of={full}/fill", "bs=1M", "count=16"], capture_output=True)
            time.sleep(1.5)  # an ENOSPC storm is reported when it ends
            assert svc.fsev("config", "--show").returncode == 0
            change = subprocess.run([*member, FSEV, "config", "/x err"], capture_output=True, text=True,
                                    env=svc.env, timeout=30)
            assert change.returncode == 2 and "only root" in change.stderr, change.stderr
        finally:
            lst.send_signal(signal.SIGTERM)
            out, err = lst.communicate(timeout=30)
        evs = [json.loads(x) for x in out.splitlines() if x.strip()]
        points = {e.get("mount_point") for e in evs if e["type"] == "enospc"}
        assert points == {a}, (evs, err)
        assert host.stop() == 0
        assert {e.get("mount_point") for e in host.events() if e["type"] == "enospc"} == {a, b}
        assert svc.stop() == 0


def test_sighup_reloads_the_file_and_a_bad_file_keeps_the_running_configuration():
    with ext4() as x, ext4() as y, fsev_serve(f"{x.mount_point} err\n") as svc:
        lst = svc.listener()
        with open(svc.config_path, "a") as f:
            f.write(f"{y.mount_point} err\n")
        svc.signal(signal.SIGHUP)
        svc.wait_log("reloaded")
        y.trigger_errors(1)
        lst.wait_for(lambda e: len(errors_of(e, y.mount_point)) == 1)
        shown = svc.config("--show").stdout
        with open(svc.config_path, "a") as f:
            f.write("/nowhere warning\n")
        svc.signal(signal.SIGHUP)
        line = svc.wait_log("reload refused")
        assert "unknown type 'warning'" in line
        assert svc.config("--show").stdout == shown
        os.rename(svc.config_path, svc.config_path + ".gone")
        svc.signal(signal.SIGHUP)
        assert "reload refused" in svc.wait_log("cannot read")
        x.trigger_errors(1)
        lst.wait_for(lambda e: len(errors_of(e, x.mount_point)) == 1)
        assert lst.stop() == 0
        assert svc.stop() == 0


def test_bad_starts_second_service_and_stale_socket():
    with fsev_serve("* err\n", start=False) as svc:
        svc.write_config("* warning\n")
        r = svc.fsev("serve", "--config", svc.config_path, "--socket", svc.socket_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "line 1" in r.stderr, r.stderr
        r = svc.fsev("serve", "--config", svc.config_path + ".none", "--socket", svc.socket_path)
        assert r.returncode == 2 and "cannot read" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        svc.write_config(f"journal {svc.journal_path}\njournald off\n* err\n")
        svc.start()
        r = svc.fsev("serve", "--config", svc.config_path, "--socket", svc.socket_path)
        assert r.returncode == 2 and "another fsev serve is running" in r.stderr and r.stderr.count("\n") == 1
        svc.kill()  # kill -9: the socket file stays behind
        assert os.path.exists(svc.socket_path)
        svc.start()  # replaced
        assert svc.config("--show").returncode == 0
        assert svc.stop() == 0


def test_kill_9_keeps_the_journal_and_a_restart_goes_on_recording():
    with ext4() as x, fsev_serve(f"{x.mount_point} err\n") as svc:
        lst = svc.listener()
        x.trigger_errors(5)
        lst.wait_for(lambda e: len(errors_of(e, x.mount_point)) == 5)
        time.sleep(1.5)  # the writer commits at least every second
        svc.kill()
        lst.kill()
        between = time.time()
        time.sleep(0.05)
        svc.start()
        lst = svc.listener()
        x.trigger_errors(4)
        lst.wait_for(lambda e: len(errors_of(e, x.mount_point)) == 4)
        assert lst.stop() == 0
        assert svc.stop() == 0
        r = svc.fsev("replay", svc.journal_path, "--json")
        assert r.returncode == 0, r.stderr
        evs = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(errors_of(evs, x.mount_point)) == 9
        # "what happened since then": the time window, from the flight recorder
        r = svc.fsev("replay", svc.journal_path, "--json", "--since", f"@{between}")
        assert r.returncode == 0, r.stderr
        assert len(errors_of([json.loads(line) for line in r.stdout.splitlines()], x.mount_point)) == 4
        r = svc.fsev("replay", svc.journal_path, "--json", "--until", f"@{between}")
        assert len(errors_of([json.loads(line) for line in r.stdout.splitlines()], x.mount_point)) == 5


def test_sigterm_during_a_config_change_leaves_nothing_half_applied():
    with ext4() as x, fsev_serve("* err\n") as svc:
        results: list[subprocess.CompletedProcess[str]] = []
        changer = threading.Thread(target=lambda: results.append(svc.config(f"{x.mount_point} info,warn")))
        changer.start()
        svc.signal(signal.SIGTERM)
        changer.join(30)
        assert svc.proc is not None and svc.proc.wait(30) == 0
        assert "Traceback" not in "".join(svc.stderr_lines)
        r = svc.fsev("report", svc.journal_path, "--json")
        assert r.returncode == 0, r.stderr
