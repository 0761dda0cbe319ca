"""packaging/fsev.service: `systemd-analyze verify` passes with no warning, and
the lines the service's behaviour depends on are there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "fsev.service"
# The installed fsev of this test run (the venv's), not /usr/local/bin/fsev:
# verify checks that ExecStart's binary exists, and the suite must not depend
# on what `make install` last pointed /usr/local/bin/fsev at.
FSEV = Path(sys.executable).parent / "fsev"


def unit_lines() -> list[str]:
    return [l.strip() for l in UNIT.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]


def test_systemd_analyze_verify_passes_without_a_warning(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; `make test` installs it)")
    assert FSEV.exists(), FSEV
    text = UNIT.read_text()
    assert "\nExecStart=/usr/local/bin/fsev serve\n" in text
    unit = tmp_path / "fsev.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/fsev ", f"ExecStart={FSEV} "))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")


@pytest.mark.parametrize("line", [
    "Type=notify", "NotifyAccess=main", "ExecStart=/usr/local/bin/fsev serve", "ExecReload=/bin/kill -HUP $MAINPID",
    "Restart=on-failure", "RuntimeDirectory=fsev", "StateDirectory=fsev", "ConfigurationDirectory=fsev",
])
def test_the_unit_has(line):
    assert line in unit_lines()


def test_the_sandbox_keeps_bpf_perf_fanotify_headers_and_the_host_mounts():
    lines = unit_lines()
    keys = {l.split("=", 1)[0] for l in lines}
    # each of these hides the headers bcc needs or gives the service a mount namespace of its own
    assert not keys & {"ProtectKernelModules", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                       "PrivateMounts", "ReadOnlyPaths", "ProtectProc", "ProcSubset", "ProtectHostname",
                       "ProtectControlGroups", "ProtectKernelTunables", "ProtectKernelLogs", "RootDirectory"}
    filters = [l.split("=", 1)[1] for l in lines if l.startswith("SystemCallFilter=")]
    assert filters and all(f.startswith("~") for f in filters), filters  # a deny list only
    denied = " ".join(filters)
    for group in ("@debug", "@privileged", "@system-service", "@resources", "@basic-io", "@file-system"):
        assert group not in denied  # bpf, perf_event_open, fanotify_* live in @privileged and @debug
    caps = next(l for l in lines if l.startswith("CapabilityBoundingSet=")).split("=", 1)[1].split()
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_DAC_READ_SEARCH",
            "CAP_SYS_PTRACE"} <= set(caps)


def test_the_denied_groups_hold_none_of_the_calls_fsev_makes():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    filters = " ".join(l.split("=", 1)[1].lstrip("~") for l in unit_lines() if l.startswith("SystemCallFilter="))
    r = subprocess.run(["systemd-analyze", "syscall-filter", *filters.split()], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    denied = {l.strip() for l in r.stdout.splitlines() if l.startswith("    ") and not l.strip().startswith("#")}
    needed = {"bpf", "perf_event_open", "fanotify_init", "fanotify_mark", "inotify_init1", "inotify_add_watch",
              "statfs", "fstatfs", "mmap", "munmap", "ioctl", "epoll_wait", "socket", "bind", "connect", "sendto",
              "sendmsg", "recvmsg", "prlimit64", "setrlimit", "open_by_handle_at", "name_to_handle_at", "madvise",
              "fchown", "fchmod", "getsockopt"}
    assert denied, r.stdout
    assert not denied & needed, sorted(denied & needed)
