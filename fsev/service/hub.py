"""The service's socket: every listener served from its own bounded queue.

Two threads meet here. The session's thread calls publish() with each event
and its JSON line (made once, whatever the number of listeners): for each
listener whose filter and namespace take it, the line goes on that
listener's queue, or, if the queue is full, is counted lost for it. It never
blocks and never writes to a socket. The hub's own thread accepts clients,
reads their one request, and writes each queue to its socket without
blocking; a listener that reads slowly only fills its own queue.

As the watch_queue series asks, a full queue is marked overrun, never waited
on: the listener gets a `loss` event with the exact count (and the range of
sequence numbers it missed) as soon as its queue has room again. One that
reads nothing for listener_timeout while its queue is full, sends anything
after its request, or hangs up is dropped; the service goes on.

Control requests (config, show, status) run in a thread each: applying a
configuration waits for the session's thread, and the hub must not.
"""

from __future__ import annotations

import collections
import os
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.json_line import event_json
from fsev.service.access import Peer, Visibility, may_listen, peer_of
from fsev.service.protocol import MAX_REQUEST_BYTES, ListenFilter, ProtocolError, decode, encode

REQUEST_TIMEOUT_S = 5.0  # a client that connects and says nothing for this long is dropped
SEND_CHUNK = 256 * 1024
# The hub's longest wait: for the timeouts of clients that say nothing or read
# nothing; loss reports and queued events wake it at once.
TICK_S = 1.0
_LOSS = EventType.LOSS


class Control(Protocol):
    """What the daemon answers (fsev/service/daemon.py)."""

    def hello(self) -> dict[str, Any]: ...
    def configure(self, text: str, peer: Peer) -> dict[str, Any]: ...
    def show(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


@dataclass
class Listener:
    sock: socket.socket
    peer: Peer
    filter: ListenFilter
    name: str
    cap: int
    visibility: Visibility | None  # None: root, sees every mount
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    out: bytes = b""  # a line (or lines) the socket took only part of
    lost: int = 0  # dropped since the last loss report
    lost_total: int = 0
    lost_first_seq: int | None = None
    lost_last_seq: int | None = None
    delivered: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    writing: bool = False  # registered for EVENT_WRITE

    def takes(self, ev: Event) -> bool:
        return self.filter.matches(ev) and (self.visibility is None or self.visibility.sees(ev))


@dataclass
class _Pending:
    """A connection whose request line has not all arrived yet."""

    sock: socket.socket
    peer: Peer
    since: float
    data: bytes = b""


class Hub:
    def __init__(self, path: str, control: Control, clock: Clock, queue_cap: int, timeout_s: float,
                 group: str | None, log: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.control = control
        self.clock = clock
        self.queue_cap = queue_cap
        self.timeout_s = timeout_s
        self.group = group
        self._log = log or (lambda msg: print(f"fsev serve: {msg}", file=sys.stderr, flush=True))
        self._lock = threading.Lock()  # the listener list and every queue
        self._listeners: list[Listener] = []
        self._pending: dict[int, _Pending] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._server: socket.socket | None = None
        self.dropped_listeners = 0
        # Every listener's losses, also of listeners since dropped (fsev_events_lost_total{stage="listener"}).
        self.lost_total = 0

    # -- life --------------------------------------------------------------
    def start(self, server: socket.socket) -> None:
        """Serve on a bound, listening socket (the daemon made it and owns its path)."""
        server.setblocking(False)
        self._server = server
        self._sel.register(server, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="fsev-hub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and hang up on everyone; what is queued is not sent."""
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for lst in listeners:
            lst.sock.close()
        for p in self._pending.values():
            p.sock.close()
        self._pending.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def set_policy(self, queue_cap: int, timeout_s: float, group: str | None) -> None:
        """A new configuration: for listeners from now on (queues keep their lines)."""
        self.queue_cap, self.timeout_s, self.group = queue_cap, timeout_s, group

    @property
    def listeners(self) -> list[Listener]:
        with self._lock:
            return list(self._listeners)

    # -- the session's side ----------------------------------------------------
    def publish(self, batch: list[tuple[Event, bytes]]) -> None:
        """Queue each event for every listener that takes it. Never blocks."""
        if not self._listeners or not batch:
            return
        woke = False
        with self._lock:
            for lst in self._listeners:
                q = lst.queue
                was_empty = not q and not lst.out
                for ev, line in batch:
                    if not lst.takes(ev):
                        continue
                    if ev.type is _LOSS:
                        # A loss report is never itself lost: its count is
                        # what makes the listener's accounting exact. They are
                        # few (one per LOSS_CHECK_S at most), so the cap holds.
                        q.append(line)
                        continue
                    if len(q) >= lst.cap:
                        self._count_lost(lst, ev)
                        continue
                    if lst.lost:
                        q.append(self._loss_line(lst))
                        if len(q) >= lst.cap:
                            self._count_lost(lst, ev)
                            continue
                    q.append(line)
                if was_empty and q:
                    woke = True
        if woke:
            self._wake()

    def mounts_changed(self) -> None:
        """The mount table changed: namespaces' views are read again."""
        with self._lock:
            for lst in self._listeners:
                if lst.visibility is not None:
                    lst.visibility.stale()

    def _count_lost(self, lst: Listener, ev: Event) -> None:
        self.lost_total += 1
        lst.lost += 1
        lst.lost_total += 1
        if lst.lost_first_seq is None:
            lst.lost_first_seq = ev.seq
        lst.lost_last_seq = ev.seq

    def _loss_line(self, lst: Listener) -> bytes:
        """The listener's own loss report: its count, and the seqs it missed."""
        ev = self.clock.user_event(cls=EventClass.WARN, type=EventType.LOSS, rung="listener", lost=lst.lost,
                                   lost_total=lst.lost_total)
        ev.extra["first_seq"] = lst.lost_first_seq
        ev.extra["last_seq"] = lst.lost_last_seq
        lst.lost = 0
        lst.lost_first_seq = lst.lost_last_seq = None
        return event_json(ev).encode() + b"\n"

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (the pipe is full) or closed

    # -- the hub's thread ------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            try:
                ready = self._sel.select(self._tick())
            except OSError:
                return
            for key, mask in ready:
                tag = key.data
                if tag == "accept":
                    self._accept()
                elif tag == "wake":
                    self._drain_wake()
                elif isinstance(tag, Listener):
                    if mask & selectors.EVENT_READ:
                        self._listener_readable(tag)
                    if mask & selectors.EVENT_WRITE and tag in self._listeners:
                        self._flush(tag)
                elif isinstance(tag, _Pending):
                    self._pending_readable(tag)
            with self._lock:
                listeners = list(self._listeners)
            now = time.monotonic()
            for lst in listeners:
                if (lst.queue or lst.out) and not lst.writing:
                    self._flush(lst)
                elif lst.lost and not lst.queue:
                    with self._lock:  # room again, nothing new: report the loss now
                        lst.queue.append(self._loss_line(lst))
                    self._flush(lst)
                if lst.writing and now - lst.last_progress > self.timeout_s:
                    self._drop(lst, f"read nothing for {self.timeout_s:g}s")
            for p in list(self._pending.values()):
                if now - p.since > REQUEST_TIMEOUT_S:
                    self._close_pending(p)

    def _tick(self) -> float | None:
        """How long the hub may wait: forever when no timeout can run out (no
        request half read, no listener with unsent lines or an unreported
        loss), so an idle service costs no wake-ups here."""
        if self._pending or any(x.writing or x.lost for x in self._listeners):
            return TICK_S
        return None

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._log(f"accept: {e}")
                return
            sock.setblocking(False)
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            p = _Pending(sock, peer, time.monotonic())
            self._pending[sock.fileno()] = p
            self._sel.register(sock, selectors.EVENT_READ, p)

    def _close_pending(self, p: _Pending) -> None:
        self._pending.pop(p.sock.fileno(), None)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _pending_readable(self, p: _Pending) -> None:
        got = _recv(p.sock, 65536)
        if got is None:
            return
        if not got:
            self._close_pending(p)
            return
        p.data += got
        if b"\n" not in p.data:
            if len(p.data) > MAX_REQUEST_BYTES:
                self._refuse(p, "request too long")
            return
        line, _, rest = p.data.partition(b"\n")
        try:
            req = decode(line)
            op = req.get("op")
            if op == "listen":
                if rest:
                    raise ProtocolError("a listener sends nothing after its request")
                self._start_listener(p, req)
            elif op in ("config", "show", "status"):
                why = may_listen(p.peer, self.group)  # who may listen may read; config itself wants root
                if why is not None:
                    raise ProtocolError(why)
                self._pending.pop(p.sock.fileno(), None)
                self._sel.unregister(p.sock)
                threading.Thread(target=self._control, args=(p, req), name=f"fsev-control {op}", daemon=True).start()
            else:
                raise ProtocolError(f"unknown request {op!r}")
        except ProtocolError as e:
            self._refuse(p, str(e))

    def _refuse(self, p: _Pending, why: str) -> None:
        try:
            p.sock.send(encode({"ok": False, "error": why}))
        except OSError:
            pass
        self._close_pending(p)

    def _control(self, p: _Pending, req: dict[str, Any]) -> None:
        """One control request, in its own thread; the reply, then hang up."""
        try:
            op = req["op"]
            if op == "config":
                text = req.get("text")
                reply = (self.control.configure(text, p.peer) if isinstance(text, str)
                         else {"ok": False, "error": "config: no text"})
            elif op == "show":
                reply = self.control.show()
            else:
                reply = self.control.status()
        except Exception as e:  # a bug here must not take the service down with it
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        try:
            p.sock.setblocking(True)
            p.sock.settimeout(REQUEST_TIMEOUT_S)
            p.sock.sendall(encode(reply))
        except OSError:
            pass
        finally:
            p.sock.close()

    def _start_listener(self, p: _Pending, req: dict[str, Any]) -> None:
        why = may_listen(p.peer, self.group)
        if why is not None:
            self._refuse(p, why)
            return
        flt = ListenFilter.from_json(req.get("filter"))
        name = str(req.get("name") or "listener")[:64]
        vis = None if p.peer.root else Visibility(p.peer.pid)
        lst = Listener(p.sock, p.peer, flt, name, self.queue_cap, vis)
        self._pending.pop(p.sock.fileno(), None)
        self._sel.modify(p.sock, selectors.EVENT_READ, lst)
        hello = encode({"ok": True, "hello": self.control.hello()})
        with self._lock:
            lst.out = hello  # before any event: the hello is the first line
            self._listeners.append(lst)
        self._flush(lst)

    def _listener_readable(self, lst: Listener) -> None:
        got = _recv(lst.sock, 4096)
        if got is not None:
            self._drop(lst, "sent data after its request" if got else None)

    def _flush(self, lst: Listener) -> None:
        """Write what the socket takes now; register for EVENT_WRITE if more waits."""
        while True:
            if not lst.out:
                with self._lock:
                    if not lst.queue:
                        break
                    parts: list[bytes] = []
                    size = 0
                    while lst.queue and size < SEND_CHUNK:
                        line = lst.queue.popleft()
                        parts.append(line)
                        size += len(line)
                    lst.delivered += len(parts)
                lst.out = b"".join(parts)
            try:
                n = lst.sock.send(lst.out)
            except BlockingIOError:
                break
            except OSError:
                self._drop(lst, None)
                return
            lst.out = lst.out[n:]
            lst.last_progress = time.monotonic()
        want_write = bool(lst.out)
        if want_write != lst.writing:
            lst.writing = want_write
            if not want_write:
                lst.last_progress = time.monotonic()
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            try:
                self._sel.modify(lst.sock, mask, lst)
            except (KeyError, ValueError, OSError):
                pass

    def _drop(self, lst: Listener, why: str | None) -> None:
        with self._lock:
            if lst not in self._listeners:
                return
            self._listeners.remove(lst)
        try:
            self._sel.unregister(lst.sock)
        except (KeyError, ValueError):
            pass
        lst.sock.close()
        if why is not None:
            self.dropped_listeners += 1
            self._log(f"dropped listener {lst.name} ({lst.peer.describe()}): {why}")

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": x.name, "pid": x.peer.pid, "uid": x.peer.uid, "queued": len(x.queue),
                     "delivered": x.delivered, "lost": x.lost_total, "filter": x.filter.to_json()}
                    for x in self._listeners]


def _recv(sock: socket.socket, size: int) -> bytes | None:
    """What a non-blocking socket has: None if nothing yet, b"" once it is closed or broken."""
    try:
        return sock.recv(size)
    except BlockingIOError:
        return None
    except OSError:
        return b""
