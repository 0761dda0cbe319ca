"""The `fsev top` loop without root: a fake session, a pseudo-terminal for the keys."""

from __future__ import annotations

import io
import os
import pty
import signal
import subprocess
import termios
import threading
import time

import pytest
from rich.console import Console
from support.top_data import MOUNTINFO, ev, model, mounts

from fsev.linux.mountinfo import MountTable
from fsev.testing.kernel_rig import FSEV
from fsev.top.app import Keyboard, TopApp, split_keys


class FakeSession:
    """What TopApp uses of a TraceSession; events come from a list, released over time."""

    def __init__(self, events=(), per_tick: int = 1) -> None:
        self.table = MountTable(mounts(MOUNTINFO))
        self.pending = list(events)
        self.per_tick = per_tick
        self.started = self.closed = self._stop = False
        self.lost_total = 0

    def start(self) -> None:
        self.started = True

    def events(self, poll_ms: int = 100, until: float | None = None):
        while not self._stop and time.monotonic() < (until or 0):
            batch, self.pending = self.pending[: self.per_tick], self.pending[self.per_tick :]
            yield from batch
            time.sleep(min(poll_ms / 1000, max(0.0, (until or 0) - time.monotonic())))

    def stop(self) -> None:
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def close(self) -> None:
        self.closed = True


class FrameCountingConsole(Console):
    def __init__(self) -> None:
        super().__init__(file=io.StringIO(), force_terminal=True, color_system=None, width=120, height=30,
                         highlight=False)
        self.frames = 0

    def print(self, *a, **kw):  # Live draws each frame through print
        self.frames += 1
        super().print(*a, **kw)


@pytest.fixture
def tty():
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_split_keys_keeps_escape_sequences_whole():
    assert split_keys("q/err\r") == ["q", "/", "e", "r", "r", "\r"]
    assert split_keys("\x1b[A\x1b[1;5Cx\x1b") == ["\x1b[A", "\x1b[1;5C", "x", "\x1b"]


def test_keyboard_cbreak_then_restored(tty):
    master, slave = tty
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON and before[3] & termios.ECHO
    with Keyboard(slave) as kb:
        mode = termios.tcgetattr(slave)
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
        assert mode[3] & termios.ISIG  # Ctrl-C still raises SIGINT
        assert kb.keys() == []
        os.write(master, b"p?")
        time.sleep(0.05)
        assert kb.keys() == ["p", "?"]
    assert termios.tcgetattr(slave) == before


def test_q_quits_closes_session_restores_terminal(tty):
    master, slave = tty
    before = termios.tcgetattr(slave)
    session = FakeSession([ev(line=i) for i in range(5)])
    console = FrameCountingConsole()
    app = TopApp(session, model(), console)
    threading.Timer(0.8, os.write, (master, b"q")).start()
    t0 = time.monotonic()
    assert app.run(tty_fd=slave) == 0
    assert time.monotonic() - t0 < 3
    assert session.started and session.closed
    assert termios.tcgetattr(slave) == before
    assert app.model.total == 5
    out = console.file.getvalue()
    assert "\x1b[?1049h" in out and "\x1b[?1049l" in out  # alternate screen entered and left
    assert "trigger_test_error:4" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_quits_cleanly(tty, sig):
    master, slave = tty
    session = FakeSession()
    app = TopApp(session, model(), FrameCountingConsole())
    before = signal.getsignal(sig)
    threading.Timer(0.5, os.kill, (os.getpid(), sig)).start()
    assert app.run(tty_fd=slave) == 0
    assert session.closed and session.stopping
    assert signal.getsignal(sig) is before


def test_frames_at_most_four_a_second_under_a_stream(tty):
    master, slave = tty
    session = FakeSession([ev(line=i) for i in range(3000)], per_tick=100)  # ~1000 events/s
    console = FrameCountingConsole()
    app = TopApp(session, model(), console)
    threading.Timer(2.0, os.write, (master, b"q")).start()
    app.run(tty_fd=slave)
    assert app.model.total >= 1500
    assert 5 <= console.frames <= 2 * 4 + 3, console.frames  # first frame, ≤ 4 Hz, last


def test_first_event_is_drawn_at_once(tty):
    master, slave = tty

    class Late(FakeSession):
        def events(self, poll_ms=100, until=None):
            if time.monotonic() - t0 > 1.2 and not self.pending and not getattr(self, "sent", False):
                self.sent = True
                self.pending = [ev(function="late_one")]
            yield from super().events(poll_ms, until)

    console = FrameCountingConsole()
    app = TopApp(Late(), model(), console)
    seen: list[float] = []

    def watch() -> None:
        while "late_one" not in console.file.getvalue() and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        seen.append(time.monotonic())
        os.write(master, b"q")

    t0 = time.monotonic()
    threading.Thread(target=watch, daemon=True).start()
    app.run(tty_fd=slave)
    assert seen and seen[0] - t0 < 1.2 + 0.35  # within a tick of the event, not at the next idle frame


def test_once_prints_one_snapshot_without_a_tty():
    console = Console(file=io.StringIO(), width=150, highlight=False)
    session = FakeSession([ev()])
    app = TopApp(session, model(), console)
    assert app.run_once(window=0.2) == 0
    out = console.file.getvalue()
    assert session.closed
    assert "\x1b" not in out  # not a terminal: plain text
    assert out.startswith("fsev top") and "/srv/data" in out and "trigger_test_error:129" in out


def test_cli_without_tty_prints_one_line_hint_and_exits_2():
    r = subprocess.run([FSEV, "top"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("fsev: top needs a terminal: use `fsev top --once` for one snapshot, "
                                "or `fsev trace` for a stream")
    assert r.stdout == ""


def test_cli_rejects_unknown_sort():
    r = subprocess.run([FSEV, "top", "--once", "--sort", "size"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown --sort 'size'" in r.stderr and "severity, usage" in r.stderr
