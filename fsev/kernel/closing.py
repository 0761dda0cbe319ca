"""Closing an object while another thread is still calling into it.

A consumer thread sits in TraceSession.events() → KernelProbes.poll() while
another thread may close the session; close() frees what those calls
dereference (ring-buffer pages, bcc's ring buffer, map and inotify fds, whose
numbers the kernel hands out again at once). A CloseGuard orders the two:
each call runs inside `with guard.call() as live:` and, once close() has
begun, gets live=False and must touch nothing; close() runs its teardown only
when no other thread is inside a call.
"""

from __future__ import annotations

import threading
from typing import Callable

Teardown = Callable[[], None]


class CloseGuard:
    def __init__(self) -> None:
        # Calls take the plain lock (a call is one ring-buffer poll: cheap
        # matters); close() waits on the condition over the same lock.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        # thread id -> calls it is inside (calls nest: poll() drains)
        self._inside: dict[int, int] = {}
        self._closing = False
        self._done = False
        self._deferred: Teardown | None = None

    @property
    def closed(self) -> bool:
        """close() has begun: calls from now on are refused."""
        return self._closing

    def call(self) -> "_Call":
        return _Call(self)

    def _enter(self) -> bool:
        me = threading.get_ident()
        with self._lock:
            if self._closing:
                return False
            inside = self._inside
            inside[me] = inside.get(me, 0) + 1
            return True

    def _leave(self) -> None:
        me = threading.get_ident()
        teardown = None
        with self._lock:
            depth = self._inside[me] - 1
            if depth:
                self._inside[me] = depth
                return
            del self._inside[me]
            if self._closing:
                # This thread closed from inside its own call (a callback, a
                # signal handler): its teardown had to wait for the call to end.
                teardown, self._deferred = self._deferred, None
                self._cv.notify_all()  # a closer waits for the calls to end
        if teardown is not None:
            self._finish(teardown)

    def close(self, teardown: Teardown) -> None:
        """Refuse new calls, wait for the other threads' calls to end, then run
        teardown (once, whoever closes first). Called from inside a call on
        this thread, it cannot wait for itself: teardown then runs as that call
        ends, and close() returns before it."""
        me = threading.get_ident()
        with self._cv:
            if self._closing:
                # A second close waits for the first one's teardown, unless this
                # thread is inside a call that teardown is waiting for.
                if me not in self._inside:
                    self._cv.wait_for(lambda: self._done)
                return
            self._closing = True
            self._cv.wait_for(lambda: all(t == me for t in self._inside))
            if me in self._inside:
                self._deferred = teardown
                return
        self._finish(teardown)

    def _finish(self, teardown: Teardown) -> None:
        try:
            teardown()
        finally:
            with self._cv:
                self._done = True
                self._cv.notify_all()


class _Call:
    """One call under a guard: `with guard.call() as live`. A class, not a
    contextlib generator: it is entered once per ring-buffer poll."""

    __slots__ = ("_guard", "_live")

    def __init__(self, guard: CloseGuard) -> None:
        self._guard = guard
        self._live = False

    def __enter__(self) -> bool:
        self._live = self._guard._enter()
        return self._live

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._guard._leave()
