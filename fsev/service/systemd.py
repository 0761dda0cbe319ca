"""systemd and journald, spoken directly: sd_notify(3) and journald's native protocol.

Why it is written this way:
- Standard library only. python3-systemd (the C binding) would be one more
  system package for a few lines of socket code, and both protocols are
  small, stable and documented: https://systemd.io/JOURNAL_NATIVE_PROTOCOL/
  and sd_notify(3).
- notify() never raises and returns False when there is no $NOTIFY_SOCKET:
  the same `fsev serve` runs under systemd, under another supervisor or in a
  terminal, and calls notify() unconditionally. It sends with a timeout
  rather than without blocking: READY=1 lost to a momentarily full socket
  would leave the unit "activating" until systemd kills it, while a stall is
  bounded (NOTIFY_TIMEOUT_S) and only ever happens when PID 1 is stuck.
- JournaldSink is the opposite trade: events are many and the sink is on the
  service's event path, so a full journald socket never blocks it. An event
  that cannot be sent is counted (`dropped`), never waited for: journald
  being slow must not slow the service or any listener (issue 13, point 4),
  and every event is in fsev's own journal anyway.
- One datagram per event on a connected SOCK_DGRAM socket, as sd_journal_send
  does; an event is a few hundred bytes, far below the datagram limit, so
  the memfd form of the protocol (for entries larger than a datagram) is not
  needed. The binary length form carries values that contain a newline
  (a path or command name can).
- No socket is not an error: containers and hosts without systemd have no
  journald. The sink checks once at start; if the socket appears later (or
  journald restarts and the connected socket goes stale), it reconnects, but
  at most once per retry interval, doubling up to RETRY_MAX_S, so a host
  without journald costs one failed connect(2) per interval, not per event.
- Only err and warn events go to the journal (`journalctl -p err` for the
  errors): info and thr events are routine and would flood the system log;
  they stay in fsev's own journal and streams.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import Any, Callable, Iterable

from fsev.events import Event, EventClass, EventType
from fsev.session.sinks import human_line

JOURNAL_SOCKET = "/run/systemd/journal/socket"
NOTIFY_TIMEOUT_S = 1.0
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
SYSLOG_IDENTIFIER = "fsev"

# syslog(3) severities, which journald's PRIORITY= uses. fsev's class names
# are the syslog names: err is LOG_ERR (a filesystem error or a read-only
# filesystem: data at risk on one filesystem, not the whole system unusable,
# which crit/alert/emerg mean), warn is LOG_WARNING. `journalctl -p err` shows
# 0..3, so it lists the err events and not the warn ones.
PRIORITY: dict[EventClass, int] = {EventClass.ERR: 3, EventClass.WARN: 4}

# One fixed MESSAGE_ID per event type, for `journalctl MESSAGE_ID=...`.
# Generated once (uuid4) and never to be changed: admins' queries and alert
# rules name them. A new EventType needs a new id here (and in docs/service.md);
# tests/unit/service/test_journald_encoding.py fails until it has one.
MESSAGE_IDS: dict[EventType, str] = {
    EventType.FS_ERROR: "1a12d5c57093468d81220d92565bdeae",
    EventType.UMOUNT: "99ac0fa68df44d1ca878955334ddce39",
    EventType.THRESHOLD: "f9ec3c86377c4fbd870633c47e7e93f1",
    EventType.LOSS: "996eaed443a34357b9909c5e5ec9673e",
    EventType.READ_ONLY: "460b043874a94179aa307ec2e102d95f",
    EventType.ENOSPC: "769c61ecebd14dd7b70b32fc681bfb54",
    EventType.BLOCK_IO_ERROR: "8aae4f6067ba4cc0946f5bea7d66af29",
    EventType.WB_ERROR: "cf013d86903e46758343af124dd46506",
    EventType.MOUNT: "1592e3522efd44d6a2ab053dd15dca2c",
    EventType.DEVICE_ERRORS: "b84c8488ab264153a2246bc097868fe6",
    EventType.SHUTDOWN: "dfdfe38e4b1a41bb9545d8fcc05593b5",
}


# --- sd_notify ---------------------------------------------------------------

def _notify_address(value: str | None) -> str | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: a path, or `@name` for the
    abstract namespace. (systemd 253's vsock: form is for VMs: not handled.)"""
    if not value or len(value) < 2:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    if value[0] == "/":
        return value
    return None


def notify(message: str) -> bool:
    """Send one sd_notify message ("READY=1\\nSTATUS=..."); True if it was sent."""
    addr = _notify_address(os.environ.get("NOTIFY_SOCKET"))
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(NOTIFY_TIMEOUT_S)
            s.sendto(message.encode("utf-8", "surrogateescape"), addr)
        return True
    except OSError:
        return False


def _status(text: str) -> str:
    # STATUS= is one line of `systemctl status`: a newline would end the field.
    return "STATUS=" + " ".join(text.split("\n"))


def notify_ready(status: str) -> bool:
    """The probes are attached: the unit becomes active (`systemctl start` returns)."""
    return notify("READY=1\n" + _status(status))


def notify_status(status: str) -> bool:
    return notify(_status(status))


def notify_reloading() -> bool:
    """Before re-reading the config on SIGHUP; notify_ready() when done.
    MONOTONIC_USEC is what systemd >= 253 wants with RELOADING=1 (to order the
    reload against the SIGHUP it sent); 252 ignores the unknown field."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def notify_stopping() -> bool:
    return notify("STOPPING=1")


# --- journald's native protocol ---------------------------------------------

def _fsev_field(key: str) -> str:
    """FSEV_ and the key upper-cased, as a journal field name: A-Z, 0-9 and _
    only, at most 64 characters. (The prefix keeps it from starting with _,
    which marks journald's trusted fields, or with a digit.)"""
    name = "".join(c if ("A" <= c <= "Z" or "0" <= c <= "9" or c == "_") else "_" for c in key.upper())
    return ("FSEV_" + name)[:64]


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field: `NAME=value\\n`, or, when the value holds a newline, NAME,
    a newline, the value's length as 64-bit little endian, the value and a newline."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def encode_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields)


def _scalar_text(v: Any) -> str | None:
    if isinstance(v, bool):  # before int: JSON's spelling
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v) if not isinstance(v, float) else repr(v)
    if isinstance(v, list) and v and all(isinstance(x, str) and "," not in x for x in v):
        return ",".join(v)  # names (XFS's structures, a shutdown's reasons): FSEV_REASONS=log_io,force_umount
    return None  # other lists, dicts (extra keys): not a journal field


def entry_fields(ev: Event) -> list[tuple[str, str]]:
    """The journal entry of an err or warn event (docs/service.md lists the fields).

    FSEV_* is every non-null scalar key of the event's JSON line
    (docs/events.md), upper-cased: one rule, so a field added to the JSON is a
    journal field too. ERRNO= is journald's own field for the errno number.
    """
    out: list[tuple[str, str]] = [
        ("MESSAGE", human_line(ev).plain),
        ("PRIORITY", str(PRIORITY.get(ev.cls, 6))),
        ("MESSAGE_ID", MESSAGE_IDS[ev.type]),
        ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
    ]
    if ev.errno is not None:
        out.append(("ERRNO", str(ev.errno)))
    for key, v in ev.to_json_dict().items():
        text = _scalar_text(v)
        if text is not None:
            out.append((_fsev_field(key), text))
    return out


# send() failures that mean journald is gone (stopped, restarted: the socket
# file is a new one), as opposed to busy.
_GONE = frozenset({errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.ECONNRESET, errno.EPIPE})


class JournaldSink:
    """err and warn events to journald, one datagram each, never blocking.

    `active` says whether a journald socket is connected; `sent` and `dropped`
    count err/warn events delivered and not (socket full, absent, or gone).
    Not thread-safe: one caller, the service's event loop.
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.socket_path = socket_path
        self.sent = 0
        self.dropped = 0
        self._clock = clock
        self._sock: socket.socket | None = None
        self._retry_s = RETRY_FIRST_S
        self._next_try = 0.0
        self._closed = False
        self._connect()

    @property
    def active(self) -> bool:
        return self._sock is not None

    def _connect(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            self._next_try = self._clock() + self._retry_s
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
            return False
        self._sock = s
        self._retry_s = RETRY_FIRST_S
        return True

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # journald restarting: its new socket is usually there within a second.
        self._retry_s = RETRY_FIRST_S
        self._next_try = self._clock() + self._retry_s

    def emit(self, ev: Event) -> None:
        if ev.cls not in PRIORITY:
            return
        if self._sock is None:
            if self._closed or self._clock() < self._next_try or not self._connect():
                self.dropped += 1
                return
        data = encode_entry(entry_fields(ev))
        for attempt in (1, 2):
            assert self._sock is not None
            try:
                self._sock.send(data)
            except OSError as e:  # BlockingIOError (EAGAIN), ENOBUFS, EMSGSIZE, or journald gone
                if e.errno in _GONE:
                    self._disconnect()
                    # A restarted journald has its new socket at once, mostly: one
                    # immediate reconnect keeps this event; then the retry schedule.
                    if attempt == 1 and self._connect():
                        continue
                self.dropped += 1
                return
            self.sent += 1
            return

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
