"""A real `fsev top` on a real terminal: tmux on a private socket, keys in, screen out.

The tmux server is this test's own (`-L`), so killing it touches no one else's
sessions; fsev is the child of the pane's shell, found by its parent PID, and
ended by that PID if it outlives the test.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable

from fsev.testing.kernel_rig import FSEV, fsev_prog_ids


class TmuxTop:
    """`fsev top ARGS` in a 200x50 tmux pane, run by a shell as a user's would be.

    The shell records fsev's exit status in a file (tmux itself marks a pane
    dead when its pty closes, sometimes before it has the status), and traps
    INT/TERM/HUP with a no-op so that a Ctrl-C reaches fsev, not the shell.
    """

    def __init__(self, *args: str, width: int = 200, height: int = 50, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.sock = f"fsev-top-test-{os.getpid()}-{time.monotonic_ns()}"
        self.args = args
        self.width, self.height = width, height
        self.shell_pid: int | None = None
        self.pid: int | None = None
        self.prog_ids: set[int] = set()
        self.dir = tempfile.mkdtemp(prefix="fsev-top-tmux-")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.rc_path = os.path.join(self.dir, "rc")

    def tmux(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args],
                           capture_output=True, text=True, check=check, timeout=30)
        return r.stdout

    def __enter__(self) -> "TmuxTop":
        fsev = " ".join(shlex.quote(a) for a in (FSEV, "top", *self.args))
        rc = shlex.quote(self.rc_path)
        cmd = (f"trap : INT TERM HUP; {fsev} 2>{shlex.quote(self.stderr_path)}; "
               f"echo $? > {rc}.tmp; mv {rc}.tmp {rc}")
        env = [a for k, v in self.env.items() for a in ("-e", f"{k}={v}")]
        self.tmux("new-session", "-d", "-s", "top", "-x", str(self.width), "-y", str(self.height), *env, cmd)
        self.shell_pid = int(self.tmux("display", "-p", "-t", "top", "#{pane_pid}").strip())
        end = time.monotonic() + 10
        while self.pid is None and time.monotonic() < end:
            self.pid = _child_of(self.shell_pid)
            time.sleep(0.01)
        assert self.pid is not None, "fsev top did not start"
        return self

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top", check=False)

    def wait_screen(self, pred: Callable[[str], bool], timeout: float = 15) -> str:
        """A settled screen that satisfies pred: the same on two captures, so not
        caught halfway through fsev drawing a frame."""
        end = time.monotonic() + timeout
        s = self.screen()
        while time.monotonic() < end:
            if pred(s):
                time.sleep(0.05)
                again = self.screen()
                if again == s:
                    return s
                s = again
                continue
            time.sleep(0.1)
            s = self.screen()
        raise AssertionError(f"screen never matched; last screen:\n{s}\nstderr:\n{self.stderr()}")

    def wait_attached(self, timeout: float = 60) -> str:
        s = self.wait_screen(lambda s: s.startswith("fsev top") and "MOUNT" in s, timeout)
        assert self.pid is not None
        self.prog_ids = fsev_prog_ids(self.pid)
        assert self.prog_ids, "fsev top holds no BPF program while running"
        return s

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def exit_status(self, timeout: float = 20) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(self.rc_path):
                with open(self.rc_path) as f:
                    return int(f.read())
            time.sleep(0.05)
        raise AssertionError(f"fsev top did not exit; screen:\n{self.screen()}\nstderr:\n{self.stderr()}")

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.alive():
                os.kill(self.pid, signal.SIGTERM)  # type: ignore[arg-type]
                end = time.monotonic() + 10
                while self.alive() and time.monotonic() < end:
                    time.sleep(0.05)
                if self.alive():
                    os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass
        finally:
            self.tmux("kill-server", check=False)
            shutil.rmtree(self.dir, ignore_errors=True)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _child_of(ppid: int) -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and int(st[1]) == ppid:
                return int(name)
    return None
