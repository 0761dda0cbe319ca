"""A real systemd-journald in a journal namespace of its own, for tests.

PID 1 here is not systemd, so tests start journald themselves (systemd >= 245:
`systemd-journald NAMESPACE` listens on /run/systemd/journal.NAMESPACE/socket
and stores in /var/log/journal/MACHINE_ID.NAMESPACE), unique per run, and read
the entries back with `journalctl --namespace`. It needs root and
/etc/machine-id; journald is stopped by its PID and its directories removed
at the end, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

JOURNALD = "/lib/systemd/systemd-journald"


def _machine_id() -> str | None:
    try:
        mid = Path("/etc/machine-id").read_text().strip()
    except OSError:
        return None
    return mid if len(mid) == 32 else None


class Journald:
    def __init__(self, namespace: str, machine_id: str, log: Path) -> None:
        self.ns = namespace
        self.socket = f"/run/systemd/journal.{namespace}/socket"
        self.dirs = [Path(f"/run/systemd/journal.{namespace}"),
                     Path(f"/var/log/journal/{machine_id}.{namespace}"),
                     Path(f"/run/log/journal/{machine_id}.{namespace}")]
        self.made = [p for p in (Path("/var/log/journal"), Path("/run/log/journal")) if not p.exists()]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _listening(self) -> bool:
        # A journald that stopped leaves its socket file (the next one binds
        # anew, and the inode number may be the same): ready means connectable.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.connect(self.socket)
            except OSError:
                return False
        return True

    def start(self) -> None:
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen([JOURNALD, self.ns], stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journald did not start (exit {self.proc.poll()}): {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        for d in self.made:  # only if journald made it for this test and nothing else is in it
            try:
                d.rmdir()
            except OSError:
                pass

    def entries(self, *args: str) -> list[dict]:
        r = subprocess.run(["journalctl", f"--namespace={self.ns}", "-o", "json", "--no-pager",
                            "SYSLOG_IDENTIFIER=fsev", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

    def wait_for(self, n: int, *args: str) -> list[dict]:
        deadline = time.monotonic() + 10
        while True:
            got = self.entries(*args)
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    for tool in (JOURNALD, shutil.which("journalctl")):
        if not tool or not os.path.exists(tool):
            pytest.skip("systemd-journald / journalctl not installed (Debian package systemd; `make test`)")
    mid = _machine_id()
    if mid is None:
        pytest.skip("no /etc/machine-id: journald names its storage after it")
    j = Journald(f"fsevtest{uuid.uuid4().hex[:12]}", mid, tmp_path / "journald.log")
    try:
        j.start()
        yield j
    finally:
        j.stop()


