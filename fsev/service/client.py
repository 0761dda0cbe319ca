"""The other end of the service's socket: listeners (trace, top, record) and `fsev config`.

ServiceSession stands where a TraceSession is expected: the same start(),
events(), stop(), close(), plan, table and lost_total, fed by the service
instead of the kernel. Attaching costs a connect and one reply, so a
listener is ready in a fraction of the compile and attach a standalone
session needs. It imports nothing of bcc or the probe points.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any, Callable, Iterator

from fsev.errors import FsevError
from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount, MountTable
from fsev.probes.ladder import Plan, Rung, RungKind
from fsev.service.protocol import DEFAULT_SOCKET, ListenFilter, ProtocolError, decode, encode

CONNECT_TIMEOUT_S = 2.0
_MOUNT_TYPES = (EventType.MOUNT, EventType.UMOUNT)


def socket_path() -> str:
    """The service's socket: $FSEV_SOCKET, else the one the unit uses."""
    return os.environ.get("FSEV_SOCKET") or DEFAULT_SOCKET


def connect(path: str) -> socket.socket | None:
    """A connection to a running service; None when none runs there (no socket,
    or a stale one nobody accepts on). Other failures (a socket root only may
    use) are errors: the service is there, and the user should hear why."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as e:
        sock.close()
        if e.errno == errno.EACCES:
            raise FsevError(f"{path}: permission denied: the service's socket is for root "
                            "(or the group its socket_group names)") from None
        raise FsevError(f"{path}: {e.strerror or e}") from None
    return sock


def _read_reply(sock: socket.socket, buf: bytearray, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FsevError("the service did not answer in time")
        sock.settimeout(left)
        try:
            got = sock.recv(65536)
        except socket.timeout:  # TimeoutError from Python 3.10; not before
            continue
        if not got:
            raise FsevError("the service closed the connection without an answer")
        buf += got
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    try:
        return decode(line)
    except ProtocolError as e:
        raise FsevError(f"the service's answer: {e}") from None


def request(obj: dict[str, Any], path: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """One control request (config, show, status) and its reply."""
    path = path or socket_path()
    sock = connect(path)
    if sock is None:
        raise FsevError(f"no fsev service at {path}: start it (systemctl start fsev, or fsev serve)")
    with sock:
        sock.sendall(encode(obj))
        reply = _read_reply(sock, bytearray(), timeout)
    if not reply.get("ok"):
        raise FsevError(str(reply.get("error") or "the service refused"))
    return reply


def plan_from(hello: dict[str, Any]) -> Plan:
    rungs = []
    for name, kind, targets, skipped in hello.get("plan", []):
        try:
            k = RungKind(kind)
        except ValueError:
            k = RungKind.NONE
        rungs.append(Rung(name, k, tuple(targets), skipped=tuple(skipped)))
    return Plan(tuple(rungs))


def listen_filter(mounts: list[Mount], classes: frozenset[EventClass]) -> ListenFilter:
    return ListenFilter(classes=frozenset(classes), mount_points=frozenset(m.mount_point for m in mounts),
                        devs=frozenset(m.dev for m in mounts))


class ServiceSession:
    """A listener: the service's events for one filter, as a TraceSession would give them."""

    def __init__(self, sock: socket.socket, flt: ListenFilter, name: str) -> None:
        self._sock = sock
        self.filter = flt
        self.name = name
        self.table = MountTable.read()
        self.hello: dict[str, Any] = {}
        self.plan = Plan(())
        self.attach_notes: list[str] = []
        self._buf = bytearray()
        self._stop = False
        self._closed = False
        self.lost_total = 0
        self.started_at = time.time()

    def start(self) -> None:
        if self.hello:
            return
        self._sock.sendall(encode({"op": "listen", "filter": self.filter.to_json(), "name": self.name}))
        reply = _read_reply(self._sock, self._buf, CONNECT_TIMEOUT_S)
        if not reply.get("ok"):
            raise FsevError(f"the service refused: {reply.get('error')}")
        self.hello = reply.get("hello") or {}
        self.plan = plan_from(self.hello)
        self._sock.setblocking(False)

    @property
    def stopping(self) -> bool:
        return self._stop

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        self._stop = True
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> "ServiceSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, poll_ms: int = 100, until: float | None = None, last: bool = False,
               before_wait: Callable[[], None] | None = None) -> Iterator[Event]:
        """As TraceSession.events (before_wait: before each wait for the service's next lines)."""
        if self._closed:
            return
        self.start()
        while not self._stop:
            wait = poll_ms / 1000
            if until is not None:
                wait = min(wait, until - time.monotonic())
                if wait <= 0:
                    return
            yield from self._lines()
            if b"\n" in self._buf:
                continue
            if before_wait is not None:
                before_wait()
            try:
                ready, _, _ = select.select([self._sock], [], [], max(wait, 0))
            except (OSError, ValueError):
                return  # closed by another thread
            if not ready:
                continue
            try:
                got = self._sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                got = b""
            if not got:
                yield from self._lines()
                raise FsevError("the service went away (stopped or restarted)")
            self._buf += got

    def _lines(self) -> Iterator[Event]:
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            try:
                ev = Event.from_json_dict(decode(line))
            except (ProtocolError, ValueError, KeyError, TypeError):
                continue  # a type this fsev does not know (a newer service)
            if ev.type is EventType.LOSS and ev.lost:
                self.lost_total += ev.lost
            elif ev.type in _MOUNT_TYPES:
                self.table.refresh()
            yield ev
