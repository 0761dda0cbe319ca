"""close() against calls on other threads, without root: CloseGuard, and
RingReader over a memfd laid out like a BPF ring buffer map.

The real-kernel version (a flood of ext4 errors, fsev's own program) is
tests/kernel/test_ring_close.py. The RingReader tests run in a forked child: a
regression unmaps pages under a reader, and the SIGSEGV must fail the test,
not kill pytest.
"""

from __future__ import annotations

import mmap
import os
import random
import select
import struct
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Callable

import pytest

from fsev.kernel import ringbuf
from fsev.kernel.closing import CloseGuard
from fsev.kernel.ringbuf import EFD_CLOEXEC, HDR_SZ, PAGE, RingReader, eventfd


# -- CloseGuard ----------------------------------------------------------------
def test_calls_after_close_are_refused_and_teardown_runs_once():
    g = CloseGuard()
    torn: list[int] = []
    with g.call() as live:
        assert live
    g.close(lambda: torn.append(1))
    g.close(lambda: torn.append(2))
    with g.call() as live:
        assert not live
    assert torn == [1] and g.closed


def test_close_waits_for_a_call_on_another_thread():
    g = CloseGuard()
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def caller() -> None:
        with g.call() as live:
            assert live
            inside.set()
            release.wait(5)
            order.append("call ended")

    t = threading.Thread(target=caller)
    t.start()
    inside.wait(5)
    closer = threading.Thread(target=g.close, args=(lambda: order.append("teardown"),))
    closer.start()
    time.sleep(0.1)
    assert order == [] and closer.is_alive()  # still waiting for the call
    release.set()
    closer.join(5)
    t.join(5)
    assert order == ["call ended", "teardown"]


def test_close_from_inside_a_call_runs_teardown_as_the_outermost_call_ends():
    g = CloseGuard()
    order: list[str] = []
    with g.call():
        with g.call():
            g.close(lambda: order.append("teardown"))
            order.append("close returned")
            with g.call() as live:
                assert not live
        order.append("inner ended")
    assert order == ["close returned", "inner ended", "teardown"]


def test_a_second_close_waits_for_the_first_teardown():
    g = CloseGuard()
    started, finish = threading.Event(), threading.Event()
    done: list[str] = []

    def slow_teardown() -> None:
        started.set()
        finish.wait(5)
        done.append("teardown")

    first = threading.Thread(target=g.close, args=(slow_teardown,))
    first.start()
    started.wait(5)
    second = threading.Thread(target=lambda: (g.close(lambda: done.append("again")), done.append("second")))
    second.start()
    time.sleep(0.1)
    assert done == []
    finish.set()
    first.join(5)
    second.join(5)
    assert done == ["teardown", "second"]


# -- RingReader over a stand-in map ---------------------------------------------
SIZE = 4 * PAGE
REC = 24


class _Ring:
    """A memfd with a ring buffer map's layout (consumer page, producer page,
    data), written by the test as the kernel would write it. The data area is
    not mapped twice, so records are written without wrapping."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fsev-ring-stand-in")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * SIZE)
        self.notify = eventfd(0, EFD_CLOEXEC)  # what epoll watches for the memfd
        self.prod = 0

    def produce(self, n: int) -> None:
        for _i in range(n):
            off = 2 * PAGE + self.prod
            struct.pack_into("<II", self.mem, off, REC, 0)
            struct.pack_into("<Q", self.mem, off + HDR_SZ, self.prod)
            self.prod += HDR_SZ + REC
        struct.pack_into("<Q", self.mem, PAGE, self.prod)

    def reset(self) -> None:
        self.mem[: 2 * PAGE] = bytes(2 * PAGE)
        self.prod = 0

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)
        os.close(self.notify)


@pytest.fixture
def ring(monkeypatch):
    r = _Ring()

    class Epoll:
        """select.epoll, with the eventfd standing in for the memfd (which epoll refuses)."""

        def __init__(self) -> None:
            self.ep = select.epoll()

        def register(self, fd: int, mask: int) -> None:
            self.ep.register(r.notify if fd == r.fd else fd, mask)

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            return self.ep.poll(timeout)

        def close(self) -> None:
            self.ep.close()

    monkeypatch.setattr(ringbuf, "select", SimpleNamespace(epoll=Epoll, EPOLLIN=select.EPOLLIN))
    yield r
    r.close()


def in_child(body: Callable[[], None]) -> None:
    """Run body in a forked child; a failure or a signal fails the test."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the child died of signal {os.WTERMSIG(status)} (11: SIGSEGV)"
    assert os.WEXITSTATUS(status) == 0, "the child failed (its traceback is in the captured stderr)"


def test_after_close_nothing_is_read_and_nothing_waits(ring):
    def body() -> None:
        r = RingReader(ring.fd, SIZE)
        ring.produce(3)
        out: list[bytes] = []
        assert r.pending() and r.read(10, out, REC) == 3
        assert [struct.unpack_from("<Q", b)[0] for b in out] == [0, 32, 64]
        ring.produce(2)
        r.close()
        r.close()
        assert r.closed and not r.pending() and r.read(10, out, REC) == 0
        t0 = time.monotonic()
        r.wait(10_000)
        assert time.monotonic() - t0 < 0.5
        r.wake()  # harmless once closed

    in_child(body)


def test_close_and_wake_release_a_waiting_reader(ring):
    def body() -> None:
        for end in ("wake", "close"):
            r = RingReader(ring.fd, SIZE)
            left: list[float] = []
            t = threading.Thread(target=lambda r=r, left=left: (r.wait(10_000), left.append(time.monotonic())))
            t.start()
            time.sleep(0.1)  # in epoll by now
            t0 = time.monotonic()
            (r.wake if end == "wake" else r.close)()
            t.join(5)
            assert left and left[0] - t0 < 0.5, end
            r.close()

    in_child(body)


def test_close_at_any_moment_of_reading(ring):
    """One record per read() keeps the reader inside read() nearly all the time."""

    def body() -> None:
        counts = [0]
        for i in range(200):
            ring.reset()
            ring.produce(SIZE // (HDR_SZ + REC) - 1)
            r = RingReader(ring.fd, SIZE)
            stop = threading.Event()

            def consume(r: RingReader = r, stop: threading.Event = stop) -> None:
                out: list[bytes] = []
                while not stop.is_set():
                    r.wait(50)
                    counts[0] += r.read(1, out, REC)

            t = threading.Thread(target=consume)
            t.start()
            time.sleep(random.uniform(0, 0.002))
            r.close()
            stop.set()
            t.join(5)
            assert not t.is_alive(), i
        assert counts[0] > 0

    in_child(body)


# -- read_runs: runs of full-size records in one copy each ------------------------
def _put(ring: _Ring, length: int, tag: int, body: int = REC) -> int:
    """One record at the producer position: header word `length` (with any
    busy/discard bits), `tag` as its first 8 bytes, `body` bytes long. Its
    header's offset in the memfd."""
    off = 2 * PAGE + ring.prod
    struct.pack_into("<II", ring.mem, off, length, 0)
    struct.pack_into("<Q", ring.mem, off + HDR_SZ, tag)
    ring.prod += (HDR_SZ + body + 7) & ~7
    struct.pack_into("<Q", ring.mem, PAGE, ring.prod)
    return off


def _tags(items: list[bytes]) -> list[object]:
    """Each run as the list of its records' tags; each lone record as its tag."""
    step = ringbuf.stride(REC)
    out: list[object] = []
    for b in items:
        if len(b) % step == 0:
            out.append([struct.unpack_from("<Q", b, i + HDR_SZ)[0] for i in range(0, len(b), step)])
        else:
            out.append(struct.unpack_from("<Q", b)[0])
    return out


def test_read_runs_copies_runs_and_leaves_busy_discarded_and_odd_records_as_read_does(ring):
    def body() -> None:
        r = RingReader(ring.fd, SIZE)
        for t in (1, 2, 3):
            _put(ring, REC, t)
        _put(ring, REC | ringbuf.DISCARD_BIT, 4)  # discarded: skipped
        _put(ring, REC, 5)
        _put(ring, 16, 6, body=16)  # another length: alone, without its header
        _put(ring, REC, 7)
        busy = _put(ring, REC | ringbuf.BUSY_BIT, 8)  # still being written: the read stops here
        _put(ring, REC, 9)
        out: list[bytes] = []
        assert r.read_runs(100, out, REC) == 6
        assert _tags(out) == [[1, 2, 3], [5], 6, [7]]
        # The busy one commits: the next read starts at it, and the limit holds.
        struct.pack_into("<I", ring.mem, busy, REC)
        out = []
        assert r.read_runs(1, out, REC) == 1 and _tags(out) == [[8]]
        out = []
        assert r.read_runs(100, out, REC) == 1 and _tags(out) == [[9]]
        assert not r.pending() and r.read_runs(100, out, REC) == 0
        r.close()
        assert r.read_runs(100, out, REC) == 0

    in_child(body)


def test_read_runs_gives_what_read_gives(ring):
    """The same ring read both ways: the same records, in the same order."""

    def body() -> None:
        rnd = random.Random(7)
        layout = [rnd.choice(["full"] * 6 + ["discard", "odd"]) for _ in range(200)]

        def fill() -> None:
            ring.reset()
            for i, kind in enumerate(layout):
                if kind == "full":
                    _put(ring, REC, i)
                elif kind == "discard":
                    _put(ring, REC | ringbuf.DISCARD_BIT, i)
                else:
                    _put(ring, 8, i, body=8)

        fill()
        r = RingReader(ring.fd, SIZE)
        plain: list[bytes] = []
        while r.read(rnd.randint(1, 50), plain, REC):
            pass
        r.close()
        fill()
        r = RingReader(ring.fd, SIZE)
        runs: list[bytes] = []
        while r.read_runs(rnd.randint(1, 50), runs, REC):
            pass
        r.close()
        flat: list[int] = []
        for t in _tags(runs):
            flat += t if isinstance(t, list) else [t]
        assert flat == [struct.unpack_from("<Q", b)[0] for b in plain]
        assert flat == [i for i, k in enumerate(layout) if k != "discard"]

    in_child(body)
