"""`fsev serve`'s Prometheus metrics against the real kernel: a real `fsev serve`
with `metrics 127.0.0.1:PORT` (fsev/testing/service_rig.py), real ext4 errors,
a FUSE mount whose statfs hangs, hostile mount point names, textfile mode.
promtool (Debian's `prometheus`) checks what a real scrape gives."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.fuse_hang import fuse_hang

from fsev.testing.kernel_rig import FSEV, ext4, run, tmpfs
from fsev.testing.service_rig import FsevServe, fsev_serve

pytestmark = pytest.mark.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 5) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()


def value(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return None


def wait_value(port: int, name: str, want: float, timeout: float = 10, **labels: str) -> str:
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = scrape(port)
        if value(text, name, **labels) == want:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} never {want}; last scrape:\n{text}")


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: Debian's prometheus (scripts/install-test-deps.sh)"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    # Lint warnings (e.g. on counters' names) go to stdout with a non-zero code too: there must be none.
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


@contextlib.contextmanager
def service(conf: str) -> Iterator[tuple[FsevServe, int]]:
    port = free_port()
    with fsev_serve(f"metrics 127.0.0.1:{port}\n{conf}") as svc:
        yield svc, port


def test_a_real_ext4_error_is_counted_in_the_next_scrape():
    with ext4() as x, service("* err,warn,info\n") as (svc, port):
        labels = {"mountpoint": x.mount_point, "device": x.loop, "fstype": "ext4"}
        text = wait_value(port, "fsev_filesystem_recorded_errors", 0, **labels)
        assert value(text, "fsev_filesystem_errors_total", **labels) is None
        assert value(text, "fsev_up") == 1 and value(text, "fsev_probe_rung_info", point="ext4_error") == 1
        assert value(text, "fsev_filesystem_readonly", cause="error", **labels) == 0
        lst = svc.listener("--mount", x.mount_point, "--events", "err")
        x.trigger_errors(3)
        lst.wait_for(lambda evs: len([e for e in evs if e["type"] == "fs_error"]) == 3)
        text = scrape(port)  # the listener has them: so has the next scrape
        assert value(text, "fsev_filesystem_errors_total", function="trigger_test_error", **labels) == 3
        assert value(text, "fsev_filesystem_last_error_timestamp_seconds", **labels) > time.time() - 60
        # ext4 counts them in its superblock a moment later; fsev reads that after the errors
        wait_value(port, "fsev_filesystem_recorded_errors", float(x.sysfs("errors_count")), **labels)
        promtool_check(text)
        lst.stop()
        assert svc.stop() == 0


def test_a_scrape_answers_at_once_while_a_fuse_mount_hangs_every_statfs():
    with fuse_hang() as fh, service("* err\n") as (svc, port):
        mp = {"mountpoint": fh.mount_point}
        text = wait_value(port, "fsev_filesystem_avail_bytes", 500 * 4096, **mp)
        assert value(text, "fsev_filesystem_stat_stuck", **mp) == 0
        fh.hang()
        # the next sample (at most 5 s away) hangs; 2 s later it is stuck
        wait_value(port, "fsev_filesystem_stat_stuck", 1, timeout=12, **mp)
        times = []
        for _ in range(10):
            t0 = time.monotonic()
            text = scrape(port)
            times.append(time.monotonic() - t0)
        assert max(times) < 0.1, times
        assert value(text, "fsev_filesystem_stat_stuck", **mp) == 1
        assert value(text, "fsev_filesystem_avail_bytes", **mp) == 500 * 4096  # the last answer stays
        fh.answer()
        wait_value(port, "fsev_filesystem_stat_stuck", 0, timeout=5, **mp)
        assert svc.stop() == 0


def test_hostile_mount_point_names_keep_the_exposition_valid():
    names = ['q"uote', "new\nline", "back\\slash", "sp ace", "} {x=\"y\"}", "tab\there"]
    with tempfile.TemporaryDirectory(prefix="fsev-hostile-") as base:
        made = []
        try:
            for n in names:
                d = os.path.join(base, n)
                os.mkdir(d)
                run("mount", "-t", "tmpfs", "-o", "size=1m", 'we"ird\\src', d)
                made.append(d)
            with service("* err,info\n") as (svc, port):
                text = wait_value(port, "fsev_filesystem_avail_bytes", 1 << 20, mountpoint=made[1])
                got = {s.labels["mountpoint"] for fam in text_string_to_metric_families(text)
                       for s in fam.samples if s.name == "fsev_filesystem_size_bytes"}
                assert set(made) <= got
                assert value(text, "fsev_filesystem_size_bytes", mountpoint=made[0], device='we"ird\\src') == 1 << 20
                promtool_check(text)
                assert svc.stop() == 0
        finally:
            for d in made:
                run("umount", d, check=False)


def test_an_address_that_cannot_be_bound_is_one_line_and_exit_2_before_attaching():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with fsev_serve(f"metrics 127.0.0.1:{port}\n* err\n", start=False) as svc:
            t0 = time.monotonic()
            p = subprocess.run([FSEV, "serve", "--config", svc.config_path, "--socket", svc.socket_path],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 2, p.stderr
            lines = p.stderr.strip().splitlines()
            assert lines == [f"fsev: metrics 127.0.0.1:{port}: cannot listen: Address already in use"], p.stderr
            assert time.monotonic() - t0 < 5  # nothing compiled nor attached


def test_a_new_address_that_cannot_be_bound_is_refused_whole_and_the_old_endpoint_stays():
    with socket.socket() as busy, ext4() as x:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bad = busy.getsockname()[1]
        with service("* err\n") as (svc, port):
            r = svc.config(f"metrics 127.0.0.1:{bad}", f"{x.mount_point} info")
            assert r.returncode == 2
            assert r.stderr.strip() == f"fsev: metrics 127.0.0.1:{bad}: cannot listen: Address already in use"
            assert "info" not in svc.config("--show").stdout  # the whole change refused
            assert value(scrape(port), "fsev_up") == 1
            # SIGHUP with that address in the file: refused, logged, the old endpoint goes on
            with open(svc.config_path, "a") as f:
                f.write(f"metrics 127.0.0.1:{bad}\n")
            svc.signal(signal.SIGHUP)
            svc.wait_log("reload refused, configuration unchanged: metrics")
            assert value(scrape(port), "fsev_up") == 1
            # a good new address moves it
            new = free_port()
            assert svc.config(f"metrics 127.0.0.1:{new}").returncode == 0
            assert value(scrape(new), "fsev_up") == 1
            with pytest.raises(OSError):
                scrape(port, timeout=1)
            assert svc.config("metrics off").returncode == 0
            with pytest.raises(OSError):
                scrape(new, timeout=1)
            assert svc.stop() == 0


def test_scrapers_that_hang_up_mid_response_do_not_stop_the_service():
    with tmpfs() as t, service("* err\n") as (svc, port):
        wait_value(port, "fsev_filesystem_size_bytes", 8 << 20, mountpoint=t)
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST, not FIN
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)
            s.close()
        s = socket.create_connection(("127.0.0.1", port))  # one that says nothing
        assert value(scrape(port), "fsev_up") == 1
        s.close()
        assert svc.proc is not None and svc.proc.poll() is None
        assert not [line for line in svc.stderr_lines if "Traceback" in line], svc.stderr_lines
        assert svc.stop() == 0


def test_textfile_mode_writes_a_file_promtool_accepts_and_survives_a_missing_directory():
    with tmpfs() as t, tempfile.TemporaryDirectory(prefix="fsev-textfile-") as base:
        out = os.path.join(base, "collector")  # missing at start
        with fsev_serve(f"metrics_textfile {out}\n* err\n") as svc:
            svc.wait_log(f"metrics_textfile: cannot write {out}/fsev.prom: No such file or directory")
            os.mkdir(out)
            svc.wait_log("written again", timeout=15)
            path = os.path.join(out, "fsev.prom")
            text = open(path).read()
            assert value(text, "fsev_up") == 1 and value(text, "fsev_filesystem_size_bytes", mountpoint=t) is not None
            promtool_check(text)
            assert len([line for line in svc.stderr_lines if "metrics_textfile" in line]) == 2  # said once each
            assert svc.stop() == 0
            text = open(path).read()  # the last write, at stop
            assert value(text, "fsev_up") == 0
            assert os.listdir(out) == ["fsev.prom"]
