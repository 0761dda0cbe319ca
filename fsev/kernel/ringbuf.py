"""A BPF ring buffer consumer in Python, reading the map's mmap directly.

Why not bcc's open_ring_buffer(): it calls back into Python through ctypes once
per record, which costs more than decoding the record does; a flood of errors
then outruns fsev far below the 250 000 records/s it is built to keep up with.
Reading the shared pages directly takes a bytes copy per record and nothing
else. The layout and protocol are the kernel's (kernel/bpf/ringbuf.c) and
libbpf's (ringbuf.c): a consumer-position page (read-write), then a
producer-position page and the data area mapped twice (read-only), so a record
that wraps around is contiguous.

Memory ordering: libbpf reads producer_pos and each header with acquire loads
and writes consumer_pos with a release store. On x86-64 (TSO) plain loads and
stores give exactly that, so this reader is used only there; other
architectures use bcc's callback consumer.

Closing: close() may come from another thread while one is inside read() or
wait(); unmapping pages that read() is dereferencing kills the process with
SIGSEGV. A lock held by each read() (once per batch, not per record) and by
close() orders the two; after close, read() and pending() touch no memory, and
wait() returns at once.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import sys
import threading

from fsev.kernel.libc import libc

if sys.version_info >= (3, 10):
    from os import EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfd_read, eventfd_write  # novermin
else:  # Python 3.9 (Debian 11) has no os.eventfd: the same syscall through libc
    EFD_CLOEXEC, EFD_NONBLOCK = os.O_CLOEXEC, os.O_NONBLOCK

    def eventfd(initval: int, flags: int = EFD_CLOEXEC) -> int:
        fd = libc().eventfd(initval, flags)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return int(fd)

    def eventfd_read(fd: int) -> int:
        return int.from_bytes(os.read(fd, 8), sys.byteorder)

    def eventfd_write(fd: int, value: int) -> None:
        os.write(fd, value.to_bytes(8, sys.byteorder))

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SZ = 8
PAGE = mmap.PAGESIZE

_libc = libc()
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def stride(record_size: int) -> int:
    """Bytes from one record's header to the next's, for records of record_size."""
    return (record_size + HDR_SZ + 7) & ~7


def supported() -> bool:
    return platform.machine() in ("x86_64", "amd64")


def _map(fd: int, length: int, prot: int, offset: int) -> int:
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the ring buffer: {os.strerror(err)}")
    return int(addr)


class RingReader:
    """Positions and headers are read and written through ctypes scalars over
    the mapping: one aligned 8- or 4-byte load or store each. (The struct
    module's little-endian codes move bytes one at a time; a torn
    consumer_pos makes the kernel see a full ring and drop records, and a torn
    producer_pos could send the reader past what was written.)"""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % PAGE:
            raise ValueError(f"ring buffer size {size} is not a power-of-two number of pages")
        self.size = size
        self.mask = size - 1
        self._cons_addr = _map(map_fd, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        self._prod_len = PAGE + 2 * size
        try:
            self._prod_addr = _map(map_fd, self._prod_len, mmap.PROT_READ, PAGE)
        except OSError:
            _libc.munmap(self._cons_addr, PAGE)
            raise
        self._cons = ctypes.c_uint64.from_address(self._cons_addr)
        self._prod = ctypes.c_uint64.from_address(self._prod_addr)
        self._data = self._prod_addr + PAGE
        # Header words of the (double-mapped) data area, as u32s.
        self._words = (ctypes.c_uint32 * (2 * size // 4)).from_address(self._data)
        self._lock = threading.Lock()  # held over every access to the mapping, and by close()
        self._idle = threading.Condition(self._lock)  # notified as a wait() leaves epoll
        self._waiting = 0
        self._closed = False
        # close() (and wake()) write to this eventfd so that a wait() in epoll
        # returns at once instead of at its timeout. Never read: once written,
        # every later wait() returns at once too, which is what a closing reader wants.
        self._wake = -1
        # nudge() writes this one, and wait() reads it back: one early return,
        # for a request the consumer's thread must handle soon (fsev serve's
        # configuration changes).
        self._nudge = -1
        try:
            self._wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
            self._nudge = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
            self._epoll = select.epoll()
            self._epoll.register(map_fd, select.EPOLLIN)
            self._epoll.register(self._wake, select.EPOLLIN)
            self._epoll.register(self._nudge, select.EPOLLIN)
        except OSError:
            for fd in (self._wake, self._nudge):
                if fd >= 0:
                    os.close(fd)
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, PAGE)
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, timeout_ms: int) -> None:
        """Block until the kernel signals new data (or the timeout, wake(), close())."""
        with self._lock:
            if self._closed or self._cons.value < self._prod.value:
                return
            self._waiting += 1
        try:
            # Outside the lock: close() must not wait out the timeout. It does
            # not close the epoll before this call has left it (_waiting).
            self._epoll.poll(timeout_ms / 1000.0)
        except InterruptedError:
            pass
        finally:
            with self._lock:
                self._waiting -= 1
                self._idle.notify_all()
                if not self._closed:
                    try:
                        eventfd_read(self._nudge)
                    except BlockingIOError:
                        pass

    def nudge(self) -> None:
        """Make a wait() in progress, or the next one, return now; once."""
        with self._lock:
            if not self._closed:
                eventfd_write(self._nudge, 1)

    def wake_on(self, fd: int, events: int) -> None:
        """Let wait() also return when fd is ready for events (epoll flags):
        the mount table's POLLPRI, for one. The caller keeps fd open until
        close() and then closes it itself."""
        with self._lock:
            if not self._closed:
                self._epoll.register(fd, events)

    def wake(self) -> None:
        """Make a wait() in progress, and every later one, return now: the first
        step of closing, for a closer that must first let a consumer leave."""
        with self._lock:
            if not self._closed:
                eventfd_write(self._wake, 1)

    def pending(self) -> bool:
        with self._lock:
            return not self._closed and self._cons.value < self._prod.value

    def backlog(self) -> int:
        """Bytes the kernel has written that this reader has not consumed (0 once closed)."""
        with self._lock:
            return 0 if self._closed else int(self._prod.value - self._cons.value)

    def read(self, limit: int, out: list[bytes], record_size: int) -> int:
        """Append up to `limit` records (each cut to record_size bytes) to out;
        0 once closed."""
        with self._lock:
            if self._closed:
                return 0
            return self._read(limit, out, record_size)

    def _read(self, limit: int, out: list[bytes], record_size: int) -> int:
        cons_v, prod_v, words, data, mask = self._cons, self._prod, self._words, self._data, self.mask
        string_at = ctypes.string_at
        append = out.append
        cons = cons_v.value
        prod = prod_v.value
        n = 0
        while cons < prod and n < limit:
            off = cons & mask
            length = words[off >> 2]
            if length & BUSY_BIT:
                break  # the producer is still writing this record
            body = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                append(string_at(data + off + HDR_SZ, body if body < record_size else record_size))
                n += 1
            cons += (body + HDR_SZ + 7) & ~7
            if cons >= prod:
                prod = prod_v.value
        cons_v.value = cons  # x86-64: a plain store is a release store
        return n

    def read_runs(self, limit: int, out: list[bytes], record_size: int) -> int:
        """Like read(), but a run of consecutive records that are each exactly
        record_size long comes out as one bytes object: each record in it with
        its 8-byte header, at a stride of stride(record_size). One copy per run
        instead of one per record (fsev.kernel.records decodes a run with one
        iter_unpack). A record of another length, cut or padded to nothing,
        comes out alone, without its header, as read() gives it (len() tells
        the two apart: a run is a whole number of strides, and a stride is
        longer than record_size). 0 once closed."""
        with self._lock:
            if self._closed:
                return 0
            return self._read_runs(limit, out, record_size)

    def _read_runs(self, limit: int, out: list[bytes], record_size: int) -> int:
        cons_v, prod_v, words, data, mask = self._cons, self._prod, self._words, self._data, self.mask
        string_at = ctypes.string_at
        append = out.append
        step = stride(record_size)
        wstep = step >> 2
        cons = cons_v.value
        prod = prod_v.value
        n = 0
        while cons < prod and n < limit:
            off = cons & mask
            # The headers where a run of full-size records would have them,
            # loaded in one slice (in C) before the run is copied: on x86-64
            # (TSO) loads are not reordered with older loads, so a header
            # seen committed means its record's bytes are seen too, as in
            # read(). A run never wraps: the data area is mapped twice.
            k = min(limit - n, (prod - cons) // step)
            if k > 0:
                first = off >> 2
                heads = words[first:first + k * wstep:wstep]
                if heads.count(record_size) != k:
                    k = next(i for i, h in enumerate(heads) if h != record_size)
                if k:
                    append(string_at(data + off, k * step))
                    cons += k * step
                    n += k
                    if cons >= prod:
                        prod = prod_v.value
                    continue
            # Not a committed full-size record: busy, discarded or of another length.
            length = words[off >> 2]
            if length & BUSY_BIT:
                break  # the producer is still writing this record
            body = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                append(string_at(data + off + HDR_SZ, body if body < record_size else record_size))
                n += 1
            cons += (body + HDR_SZ + 7) & ~7
            if cons >= prod:
                prod = prod_v.value
        cons_v.value = cons  # x86-64: a plain store is a release store
        return n

    def close(self) -> None:
        """Unmap the ring; safe from any thread, at any moment, more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _libc.munmap(self._prod_addr, self._prod_len)
            _libc.munmap(self._cons_addr, PAGE)
            self._prod_addr = self._cons_addr = self._data = 0
            eventfd_write(self._wake, 1)
            # A wait() still in epoll.poll() would be polling a closed (or
            # reused) fd number if the epoll were closed under it.
            self._idle.wait_for(lambda: self._waiting == 0)
            self._epoll.close()
            os.close(self._wake)
            os.close(self._nudge)
