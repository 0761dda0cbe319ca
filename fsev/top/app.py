"""`fsev top`'s loop: session events, periodic snapshots, keys, and a Live screen.

One thread does the work: it polls the session in short ticks, applies events
to the model, reads keys from the TTY (cbreak mode, select with no wait) and
redraws. Only statfs runs on a helper thread, because a hung mount (a dead NFS
server, a stuck FUSE daemon) can block statfs forever: then its row goes stale
and the screen stays alive.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from rich.console import Console
from rich.live import Live

from fsev.events import EventType
from fsev.linux.memory import shed_compiler_memory
from fsev.linux.mountinfo import Mount
from fsev.top.fs_snapshot import Ext4ErrorState, FsStats, read_ext4_errors, read_statfs
from fsev.top.model import TopModel
from fsev.top.view import render

TICK_S = 0.1  # keys, snapshots and timers are looked at this often
POLL_MS = 100
MIN_FRAME_S = 0.25  # at most 4 frames a second, the first one at once
IDLE_FRAME_S = 1.0  # ages and uptime move even when nothing happens
SNAPSHOT_S = 2.0  # statfs and ext4's error counters
ONCE_WINDOW_S = 0.5  # --once: how long events are collected before the snapshot
_QUIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# -- the terminal ----------------------------------------------------------------
def split_keys(data: str) -> list[str]:
    """Key presses in a chunk read from the TTY; an escape sequence (arrow keys) stays one item."""
    out: list[str] = []
    i = 0
    while i < len(data):
        c = data[i]
        if c == "\x1b" and i + 1 < len(data) and data[i + 1] in "[O":
            j = i + 2
            while j < len(data) and not ("\x40" <= data[j] <= "\x7e"):
                j += 1
            out.append(data[i : j + 1])
            i = j + 1
            continue
        out.append(c)
        i += 1
    return out


class Keyboard:
    """The TTY in cbreak mode (no echo, no line buffering, signals kept), read without blocking."""

    EOF = "\x04"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list | None = None

    def __enter__(self) -> "Keyboard":
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def keys(self) -> list[str]:
        out: list[str] = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 256)
            if not data:  # the terminal hung up
                return out + [self.EOF]
            out += split_keys(data.decode("utf-8", "replace"))
        return out


# -- snapshots ---------------------------------------------------------------------
@dataclass
class Snapshot:
    mounts: list[Mount]
    stats: dict[int, FsStats | None] = field(default_factory=dict)
    ext4: dict[str, Ext4ErrorState] = field(default_factory=dict)


def take_snapshot(mounts: list[Mount], want: set[int]) -> Snapshot:
    snap = Snapshot(mounts)
    for m in mounts:
        if m.mnt_id not in want:
            continue
        snap.stats[m.mnt_id] = read_statfs(m.mount_point)
        if m.dev not in snap.ext4:
            es = read_ext4_errors(m)
            if es is not None:
                snap.ext4[m.dev] = es
    return snap


def wanted_ids(model: TopModel, mounts: list[Mount]) -> set[int]:
    """Mounts the table shows and statfs can see (statfs of a covered mount point sees the top one)."""
    top = {m.mount_point: m.mnt_id for m in mounts}
    return {m.mnt_id for m in mounts if model.wants(m) and top[m.mount_point] == m.mnt_id}


class SnapshotPoller(threading.Thread):
    def __init__(self, interval: float = SNAPSHOT_S) -> None:
        super().__init__(name="fsev-top-statfs", daemon=True)
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._request: tuple[list[Mount], set[int]] | None = None
        self._result: Snapshot | None = None
        self._stop = False

    def request(self, mounts: list[Mount], want: set[int]) -> None:
        with self._lock:
            self._request = (mounts, want)
        self._wake.set()

    def take(self, timeout: float = 0.0) -> Snapshot | None:
        if timeout and not self._ready.wait(timeout):
            return None
        with self._lock:
            snap, self._result = self._result, None
            self._ready.clear()
        return snap

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def run(self) -> None:
        while not self._stop:
            with self._lock:
                req = self._request
            if req is not None:
                snap = take_snapshot(*req)
                with self._lock:
                    self._result = snap
                self._ready.set()
            self._wake.wait(self.interval)
            self._wake.clear()


# -- the app -----------------------------------------------------------------------
if TYPE_CHECKING:
    from fsev.session.sinks import EventSink


class TopApp:
    """Drives a TraceSession (not yet started) into a TopModel and onto the screen."""

    # session: a TraceSession, or a JournalSession standing in for one (fsev/top/review.py).
    def __init__(self, session: Any, model: TopModel, console: Console | None = None,
                 recorder: "EventSink | None" = None) -> None:
        self.session = session
        self.recorder = recorder  # `fsev top --record FILE`: every event also goes to the journal
        self.model = model
        self.console = console or Console(highlight=False)
        self.poller = SnapshotPoller()
        self._quit = False
        self._resized = False
        self._last_frame = 0.0
        self._shown_version = -1
        self._shown: list = []
        self._min_frame_s = MIN_FRAME_S
        self._generation = -1

    def _now(self) -> float:
        """The screen's clock (fsev.top.review's ReviewApp: the journal's)."""
        return time.time()

    def load_history(self) -> None:
        """ext4's recorded error state, read before the probes attach."""
        seen: set[str] = set()
        for m in self.session.table:
            if self.model.wants(m) and m.dev not in seen:
                seen.add(m.dev)
                es = read_ext4_errors(m)
                if es is not None:
                    self.model.load_history(m, es)

    def _on_quit_signal(self, *_: object) -> None:
        self._quit = True
        self.session.stop()

    def _on_winch(self, *_: object) -> None:
        self._resized = True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        old = {s: signal.signal(s, self._on_quit_signal) for s in _QUIT_SIGNALS}
        old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._on_winch)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _start(self) -> None:
        self.load_history()
        self.session.start()
        self.model.started = time.time()  # uptime counts from attached, not from compiling
        shed_compiler_memory()  # LLVM is done: ~100 MB of RSS goes back
        self.poller.start()
        self._request_snapshot()
        snap = self.poller.take(timeout=1.0)  # a hung statfs must not hold up the start
        if snap is not None:
            self.model.update_mounts(snap.mounts, snap.stats, snap.ext4)

    def _request_snapshot(self) -> None:
        mounts = list(self.session.table)
        self._generation = self.session.table.generation
        self.poller.request(mounts, wanted_ids(self.model, mounts))

    def _pump(self, until: float, live: Live | None) -> None:
        thr_seen = False
        for ev in self.session.events(poll_ms=POLL_MS, until=until):
            if self.recorder is not None:
                self.recorder.emit(ev)
            self.model.apply(ev, self._now())
            thr_seen = thr_seen or ev.type is EventType.THRESHOLD
            if live is not None and time.monotonic() - self._last_frame >= self._min_frame_s:
                self._frame(live)
        self.model.set_drops(self.session.lost_total)
        self._refresh_mounts(thr_seen)

    def _refresh_mounts(self, thr_seen: bool) -> None:
        """After a tick's events: ask for a snapshot when it is due, take one that is ready."""
        if thr_seen or self.session.table.generation != self._generation:
            # a mount came or went, or a level was crossed: the usage bars
            # should not wait for the timer to agree with the event
            self._request_snapshot()
        snap = self.poller.take()
        if snap is not None:
            self.model.update_mounts(snap.mounts, snap.stats, snap.ext4)

    def _terminal_size(self) -> tuple[int, int]:
        """The terminal's own size, asked afresh each frame so that resizes follow.

        rich would prefer COLUMNS/LINES from the environment; those are right for
        --once into a pipe but freeze a live screen at a stale size.
        """
        try:
            size = os.get_terminal_size(self.console.file.fileno())
            return size.columns, size.lines
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return self.console.size

    def _frame(self, live: Live) -> None:
        """Draw, unless the screen would look exactly as it does (idle: most seconds)."""
        w, h = self.console.size = self._terminal_size()
        frame = render(self.model, w, h, self._now())
        if self._resized or frame.renderables != self._shown:  # Text compares text and styles
            t0 = time.monotonic()
            live.update(frame, refresh=True)
            # A slow terminal (ssh) blocks the write; the events wait meanwhile.
            # Spend at most a fifth of the time drawing.
            self._min_frame_s = max(MIN_FRAME_S, 5 * (time.monotonic() - t0))
            self._shown = frame.renderables
        self._last_frame = time.monotonic()
        self._shown_version = self.model.version
        self._resized = False

    def _attach(self, stack: contextlib.ExitStack) -> None:
        """Start the session with its teardown on the stack. Unwound in reverse:
        (screen, terminal,) statfs thread, probes, journal, and only then the
        signal handlers, so a second Ctrl-C cannot cut the detaching short."""
        stack.enter_context(self._signals())
        if self.recorder is not None:
            stack.callback(self.recorder.close)
        stack.callback(self.session.close)
        stack.callback(self.poller.stop)
        self._start()

    def run(self, tty_fd: int | None = None) -> int:
        """The live screen until q, Ctrl-C, SIGTERM or SIGHUP. The session is always closed."""
        fd = sys.stdin.fileno() if tty_fd is None else tty_fd
        with contextlib.ExitStack() as stack:
            self._attach(stack)
            if self._quit:
                return 0
            kb = stack.enter_context(Keyboard(fd))
            live = stack.enter_context(Live(
                console=self.console, screen=True, auto_refresh=False,
                redirect_stdout=False, redirect_stderr=False,
            ))
            self._frame(live)
            while not self._quit and not self.session.stopping:
                self._pump(time.monotonic() + TICK_S, live)
                for k in kb.keys():
                    if k == Keyboard.EOF or self.model.key(k):
                        self._quit = True
                since = time.monotonic() - self._last_frame
                changed = self.model.version != self._shown_version
                if (self._resized or (changed and since >= self._min_frame_s)
                        or since >= max(IDLE_FRAME_S, self._min_frame_s)):
                    self._frame(live)
        return 0

    def _collect(self, window: float) -> None:
        """--once: the events the snapshot shows."""
        self._pump(time.monotonic() + window, None)

    def run_once(self, window: float = ONCE_WINDOW_S) -> int:
        """One snapshot of the screen on stdout (no TTY needed)."""
        with contextlib.ExitStack() as stack:
            self._attach(stack)
            self._collect(window)
            self.console.print(render(self.model, self.console.width, None, self._now()))
        return 0
