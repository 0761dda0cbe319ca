"""A real `fsev serve` for tests and benchmarks: its own config file, socket
and journal in a temporary directory, ended by PID, everything removed after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from fsev.testing.kernel_rig import FSEV, FsevTrace


@dataclass
class FsevServe:
    """`fsev serve --config DIR/fsev.conf --socket DIR/fsev.sock`."""

    workdir: str
    config_text: str
    proc: subprocess.Popen[str] | None = None
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "fsev.conf")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.workdir, "fsev.sock")

    @property
    def journal_path(self) -> str:
        return os.path.join(self.workdir, "flight.fsev")

    @property
    def env(self) -> dict[str, str]:
        """For listeners and `fsev config`: this service's socket."""
        return {**os.environ, "FSEV_SOCKET": self.socket_path}

    def write_config(self, text: str) -> None:
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self, timeout: float = 60) -> "FsevServe":
        self.stderr_lines = []
        self.proc = subprocess.Popen([FSEV, "serve", "--config", self.config_path, "--socket", self.socket_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        self.wait_log("serving on", timeout)
        return self

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr_lines.append(line)

    def wait_log(self, text: str, timeout: float = 10) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.stderr_lines):
                if text in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.1)  # let the pump take the last lines
                break
            time.sleep(0.02)
        raise AssertionError(f"fsev serve never said {text!r}:\n" + "".join(self.stderr_lines))

    def fsev(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """An fsev command against this service (config, replay, ...)."""
        return subprocess.run([FSEV, *args], capture_output=True, text=True, timeout=timeout, env=self.env)

    def config(self, *lines: str) -> subprocess.CompletedProcess[str]:
        return self.fsev("config", *lines)

    def listener(self, *args: str, **kw: Any) -> FsevTrace:
        """A running `fsev trace --json ARGS` attached to this service."""
        t = FsevTrace(list(args), env={"FSEV_SOCKET": self.socket_path}, **kw)
        t.wait_attached()
        return t

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def fsev_serve(config_text: str, start: bool = True) -> Iterator[FsevServe]:
    """A service with its own directory (config, socket, journal): killed by
    PID and the directory removed at the end, also when the test fails.
    `journal` and `journald` lines the config does not set are filled in: the
    journal in that directory, journald off (tests of journald say so)."""
    work = tempfile.mkdtemp(prefix="fsev-serve-")
    os.chmod(work, 0o755)  # non-root listeners reach the socket in it
    svc = FsevServe(work, config_text)
    text = config_text
    if "journal " not in text:
        text = f"journal {svc.journal_path}\n" + text
    if "journald " not in text:
        text = "journald off\n" + text
    svc.write_config(text)
    try:
        if start:
            svc.start()
        yield svc
    finally:
        svc.kill()
        shutil.rmtree(work, ignore_errors=True)
