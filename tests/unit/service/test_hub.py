"""The hub's queues and protocol over real Unix sockets (no kernel: events are made here)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Any, Iterator

import pytest

from fsev.events import Event, EventClass, EventType
from fsev.events.clock import Clock
from fsev.events.json_line import event_json
from fsev.service.access import Peer
from fsev.service.hub import Hub
from fsev.service.protocol import ListenFilter, encode


class Answers:
    """The daemon's side of the control requests, for the hub alone."""

    def __init__(self) -> None:
        self.configured: list[str] = []

    def hello(self) -> dict[str, Any]:
        return {"version": "test", "pid": os.getpid()}

    def configure(self, text: str, peer: Peer) -> dict[str, Any]:
        self.configured.append(text)
        return {"ok": True, "config": text}

    def show(self) -> dict[str, Any]:
        return {"ok": True, "config": "* err\n"}

    def status(self) -> dict[str, Any]:
        return {"ok": True, "status": {}}


@pytest.fixture
def hub() -> Iterator[tuple[Hub, str]]:
    d = tempfile.mkdtemp(prefix="fsev-hub-")
    path = os.path.join(d, "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    h = Hub(path, Answers(), Clock(), queue_cap=16, timeout_s=5.0, group=None, log=lambda m: None)
    h.start(server)
    try:
        yield h, path
    finally:
        h.close()
        server.close()
        os.unlink(path)
        os.rmdir(d)


def fs_error(seq: int, mount: str = "/mnt/a", dev: str = "7:0") -> Event:
    return Event(seq=seq, ts_ns=seq, wall_time=1.0 + seq, cls=EventClass.ERR, type=EventType.FS_ERROR,
                 rung="tracepoint", dev=dev, mount_point=mount, function="f", line=1)


def publish(h: Hub, events: list[Event]) -> None:
    h.publish([(ev, event_json(ev).encode() + b"\n") for ev in events])


class Conn:
    """A client socket and the reader of its lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def line(self) -> dict[str, Any]:
        return json.loads(self.file.readline())

    def lines(self, n: int) -> list[dict[str, Any]]:
        return [self.line() for _ in range(n)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def connect(path: str, flt: ListenFilter | None = None) -> tuple[Conn, dict[str, Any]]:
    c = Conn(path)
    c.sock.sendall(encode({"op": "listen", "filter": (flt or ListenFilter()).to_json(), "name": "t"}))
    return c, c.line()


def wait_listeners(h: Hub, n: int) -> None:
    end = time.monotonic() + 5
    while len(h.listeners) != n and time.monotonic() < end:
        time.sleep(0.01)
    assert len(h.listeners) == n


def test_a_listener_gets_hello_then_exactly_its_filter(hub: tuple[Hub, str]) -> None:
    h, path = hub
    a, hello = connect(path, ListenFilter(mount_points=frozenset({"/mnt/a"})))
    b, _ = connect(path, ListenFilter(classes=frozenset({EventClass.INFO})))
    assert hello == {"ok": True, "hello": {"version": "test", "pid": os.getpid()}}
    wait_listeners(h, 2)
    publish(h, [fs_error(1), fs_error(2, mount="/mnt/b", dev="7:1"), fs_error(3)])
    got = a.lines(2)
    assert [e["seq"] for e in got] == [1, 3]
    b.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):  # TimeoutError from Python 3.10
        b.sock.recv(1)  # b asked for info only
    a.close()
    b.close()


def test_a_full_queue_is_counted_and_reported_exactly_once_it_drains(hub: tuple[Hub, str]) -> None:
    h, path = hub
    slow, _ = connect(path)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast, _ = connect(path)
    wait_listeners(h, 2)
    n = 5000
    got_fast: list[dict[str, Any]] = []
    for i in range(0, n, 10):  # the fast one keeps up (10 < its queue of 16); the slow one reads nothing
        publish(h, [fs_error(seq) for seq in range(i + 1, i + 11)])
        got_fast += fast.lines(10)
    assert [e["seq"] for e in got_fast] == list(range(1, n + 1))
    delivered: list[int] = []
    lost = 0
    while len(delivered) + lost < n:
        e = slow.line()
        if e["type"] == "loss":
            assert e["rung"] == "listener" and e["lost"] > 0
            assert e["first_seq"] <= e["last_seq"]
            lost += e["lost"]
        else:
            delivered.append(e["seq"])
    assert len(delivered) + lost == n
    assert lost > 0 and delivered == sorted(delivered)
    assert h.listeners[0].lost_total == lost
    assert h.lost_total == lost  # the hub's running total (fsev_events_lost_total{stage="listener"})


def test_garbage_is_refused_and_the_hub_goes_on(hub: tuple[Hub, str]) -> None:
    h, path = hub
    s = Conn(path)
    s.sock.sendall(b"\x00\xffnot json\n")
    assert s.line() == {"ok": False, "error": "not a JSON line"}
    s.close()
    chatty, _ = connect(path)
    wait_listeners(h, 1)
    chatty.sock.sendall(b"more\n")  # a listener sends nothing after its request
    wait_listeners(h, 0)
    ok, _ = connect(path)
    wait_listeners(h, 1)
    publish(h, [fs_error(7)])
    assert ok.line()["seq"] == 7


def test_control_requests_get_their_reply(hub: tuple[Hub, str]) -> None:
    _, path = hub
    s = Conn(path)
    s.sock.sendall(encode({"op": "show"}))
    assert s.line() == {"ok": True, "config": "* err\n"}
    s.close()
