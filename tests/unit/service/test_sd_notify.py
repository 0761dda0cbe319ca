"""sd_notify over a real AF_UNIX datagram socket that the test binds as
$NOTIFY_SOCKET, as systemd does for a Type=notify unit."""

from __future__ import annotations

import os
import socket
import time

import pytest

from fsev.service.systemd import notify, notify_ready, notify_reloading, notify_status, notify_stopping


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def test_a_path_socket_receives_the_message(notify_socket):
    assert notify("READY=1\nSTATUS=ext4_error: tracepoint") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=ext4_error: tracepoint"


def test_an_abstract_socket_receives_the_message(monkeypatch):
    name = f"fsev-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert notify("STOPPING=1") is True
        assert s.recv(4096) == b"STOPPING=1"
    finally:
        s.close()


@pytest.mark.parametrize("value", [None, "", "@", "relative/path", "vsock:2:999"])
def test_no_usable_socket_is_false(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_a_socket_path_nobody_listens_on_is_false(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False


def test_the_service_messages(notify_socket):
    assert notify_ready("rungs: a\nb")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=rungs: a b"  # STATUS= is one line
    assert notify_status("watching 3 mounts")
    assert notify_socket.recv(4096) == b"STATUS=watching 3 mounts"
    before = time.monotonic_ns() // 1000
    assert notify_reloading()
    head, usec = notify_socket.recv(4096).decode().split("\n")
    assert head == "RELOADING=1" and usec.startswith("MONOTONIC_USEC=")
    assert before <= int(usec.split("=")[1]) <= time.monotonic_ns() // 1000
    assert notify_stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
