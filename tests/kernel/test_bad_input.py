"""Bad input and missing privilege: one line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from fsev.testing.kernel_rig import FSEV, tmpfs

pytestmark = pytest.mark.root


def fsev(*args: str, env: dict[str, str] | None = None, user: int | None = None) -> subprocess.CompletedProcess:
    cmd = [FSEV, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert r.stdout == ""


def test_not_root():
    r = fsev("trace", user=65534)
    assert_one_line_error(r, "needs root", "CAP_BPF")


def test_mount_that_does_not_exist():
    assert_one_line_error(fsev("trace", "--mount", "/no/such/dir"), "--mount /no/such/dir", "no such file")


def test_mount_that_is_not_a_mount_point():
    with tmpfs() as mp:
        sub = os.path.join(mp, "sub")
        os.mkdir(sub)
        assert_one_line_error(fsev("trace", "--mount", sub), "not a mount point", f"on {mp}")


def test_unknown_event_class():
    assert_one_line_error(fsev("trace", "--events", "err,bogus"), "unknown event class 'bogus'", "info, warn, err, thr")


@pytest.mark.parametrize(
    "thr, needle",
    [
        ("abc", "bad threshold level 'abc'"),
        ("10,20", "L2 (20) exceeds L1 (10)"),
        ("1,2,3", "expected L1[,L2]"),
        ("", "expected L1[,L2]"),
        ("150%", "cannot exceed 100"),
    ],
)
def test_malformed_thr(thr, needle):
    with tmpfs() as mp:
        assert_one_line_error(fsev("trace", "--mount", mp, "--thr", thr), needle)


def test_thr_larger_than_the_filesystem():
    with tmpfs("8m") as mp:
        assert_one_line_error(fsev("trace", "--mount", mp, "--thr", "999999"), "more than the filesystem has")


def test_thr_without_mount():
    assert_one_line_error(fsev("trace", "--thr", "1000,500"), "--thr needs --mount")


def test_no_btf():
    assert_one_line_error(fsev("trace", env={"FSEV_BTF_PATH": "/nonexistent/vmlinux"}), "kernel BTF not found")


def test_no_tracefs_and_cannot_mount_it():
    r = fsev("trace", env={"FSEV_TRACEFS": "/nonexistent/tracing"})
    assert_one_line_error(r, "tracefs is not mounted at /nonexistent/tracing", "mounting it failed")


def test_unknown_option_is_one_line():
    assert_one_line_error(fsev("trace", "--bogus"), "--bogus")


def test_doctor_fails_with_a_fix_hint_when_tracing_is_impossible():
    r = fsev("doctor", env={"FSEV_BTF_PATH": "/nonexistent/vmlinux"})
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "CONFIG_DEBUG_INFO_BTF" in r.stdout
    assert "Traceback" not in r.stderr


def test_doctor_shows_the_rung_of_each_probe_point():
    r = fsev("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ext4_error" in r.stdout and "mount_drop" in r.stdout
    assert "tracepoint" in r.stdout or "kprobe" in r.stdout
