"""journald's native protocol as fsev.service.systemd writes it, read back by an
independent parser of https://systemd.io/JOURNAL_NATIVE_PROTOCOL/, and
JournaldSink against a socket the test binds (a stand-in journald: no root)."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

import pytest
from support.journal_data import fs_error, loss, umount

from fsev.events import INTERNAL_TYPES, Event, EventClass, EventType
from fsev.service.systemd import (
    MESSAGE_IDS,
    PRIORITY,
    RETRY_FIRST_S,
    JournaldSink,
    encode_entry,
    encode_field,
    entry_fields,
)
from fsev.session.sinks import human_line

REPO = Path(__file__).resolve().parents[3]


def parse_entry(data: bytes) -> dict[str, bytes]:
    """The protocol's reader side: KEY=value lines, or KEY, newline, u64 LE length, value, newline."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v
            i = nl + 1
        else:
            (n,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 9
            out[line.decode()] = data[start:start + n]
            assert data[start + n:start + n + 1] == b"\n"
            i = start + n + 1
    return out


def block_io(i: int = 1) -> Event:
    return Event(seq=i, ts_ns=5, wall_time=1_700_000_000.5, cls=EventClass.ERR, type=EventType.BLOCK_IO_ERROR,
                 rung="tracepoint", dev="7:0", mount_point="/mnt/a", fs_type="ext4", errno=5, block=4242)


def threshold(i: int = 1) -> Event:
    return Event(seq=i, ts_ns=6, wall_time=1_700_000_000.6, cls=EventClass.THR, type=EventType.THRESHOLD,
                 rung="polled", mount_point="/mnt/t", avail_blocks=10, level="L1", level_blocks=20,
                 direction="down")


def test_a_plain_value_is_one_line():
    assert encode_field("MESSAGE", "hello world") == b"MESSAGE=hello world\n"


def test_a_value_with_newlines_takes_the_binary_form():
    got = encode_field("FSEV_PATH", "/mnt/a\nb\n")
    assert got == b"FSEV_PATH\n" + struct.pack("<Q", 9) + b"/mnt/a\nb\n" + b"\n"
    assert parse_entry(got) == {"FSEV_PATH": b"/mnt/a\nb\n"}


def test_undecodable_file_names_go_out_as_their_bytes():
    name = b"/mnt/\xff".decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    assert parse_entry(encode_field("FSEV_PATH", name)) == {"FSEV_PATH": b"/mnt/\xff"}


def test_an_entry_round_trips_with_mixed_forms():
    fields = [("A", "1"), ("B", "x\ny"), ("C", ""), ("D", "=\n=")]
    assert parse_entry(encode_entry(fields)) == {"A": b"1", "B": b"x\ny", "C": b"", "D": b"=\n="}


def test_an_err_event_has_message_priority_id_and_fsev_fields():
    ev = fs_error(7, errno=117, inode=12, block=99, comm="bad\nname")
    got = parse_entry(encode_entry(entry_fields(ev)))
    assert got["MESSAGE"].decode() == human_line(ev).plain  # what `fsev trace` prints
    assert got["PRIORITY"] == b"3"
    assert got["MESSAGE_ID"].decode() == MESSAGE_IDS[EventType.FS_ERROR]
    assert got["SYSLOG_IDENTIFIER"] == b"fsev"
    assert got["ERRNO"] == b"117"
    want = {"FSEV_SEQ": b"7", "FSEV_CLASS": b"err", "FSEV_TYPE": b"fs_error", "FSEV_RUNG": b"tracepoint",
            "FSEV_DEV": b"7:0", "FSEV_MOUNT_POINT": b"/mnt/a", "FSEV_FS_TYPE": b"ext4",
            "FSEV_SOURCE": b"/dev/loop0", "FSEV_FUNCTION": b"trigger_test_error", "FSEV_LINE": b"129",
            "FSEV_ERRNO": b"117", "FSEV_ERRNO_NAME": b"EUCLEAN", "FSEV_INODE": b"12", "FSEV_BLOCK": b"99",
            "FSEV_PID": b"100", "FSEV_COMM": b"bad\nname", "FSEV_MNT_ID": b"40"}
    assert {k: got[k] for k in want} == want
    # every non-null scalar key of the JSON line, and nothing else under FSEV_
    assert {k for k in got if k.startswith("FSEV_")} == {"FSEV_" + k.upper() for k in ev.to_json_dict()}


def test_field_names_are_journal_names():
    ev = loss(3, lost=5, total=9)
    ev.extra = {"odd-key.x": "v", "_under": 1, "nested": {"a": 1}, "flag": True}
    got = parse_entry(encode_entry(entry_fields(ev)))
    assert got["PRIORITY"] == b"4"
    assert got["FSEV_ODD_KEY_X"] == b"v" and got["FSEV__UNDER"] == b"1" and got["FSEV_FLAG"] == b"true"
    assert "FSEV_NESTED" not in got
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", k) for k in got), list(got)


def test_one_fixed_message_id_per_event_type():
    assert set(MESSAGE_IDS) == set(EventType) - INTERNAL_TYPES  # those never reach a sink
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in MESSAGE_IDS.values())
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert PRIORITY == {EventClass.ERR: 3, EventClass.WARN: 4}


def test_docs_list_every_message_id():
    text = (REPO / "docs" / "service.md").read_text()
    missing = [f"{t.value} {i}" for t, i in MESSAGE_IDS.items() if f"`{t.value}`" not in text or i not in text]
    assert not missing, missing


# --- JournaldSink, with the test as journald ---------------------------------

@pytest.fixture
def journal_socket(tmp_path):
    path = str(tmp_path / "socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_sink_sends_err_and_warn_and_ignores_the_rest(journal_socket):
    path, server = journal_socket
    sink = JournaldSink(path)
    assert sink.active
    for ev in (fs_error(1), umount(2), threshold(3), loss(4, lost=1, total=1), block_io(5)):
        sink.emit(ev)
    got = [parse_entry(server.recv(65536)) for _ in range(3)]
    assert [(g["FSEV_TYPE"], g["PRIORITY"]) for g in got] == [
        (b"fs_error", b"3"), (b"loss", b"4"), (b"block_io_error", b"3")]
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.recv(65536)
    assert (sink.sent, sink.dropped) == (3, 0)
    sink.close()
    assert not sink.active


def test_a_full_socket_never_blocks_and_counts_what_it_dropped(journal_socket):
    path, _server = journal_socket  # never read
    sink = JournaldSink(path)
    n = 20000
    for i in range(n):
        sink.emit(fs_error(i))
    assert sink.dropped > 0, "the socket never filled up"
    assert sink.sent + sink.dropped == n
    assert sink.active  # full is not gone


def test_no_socket_at_start_is_inactive_then_reconnects_on_a_schedule(tmp_path):
    path = str(tmp_path / "socket")
    now = [100.0]
    sink = JournaldSink(path, clock=lambda: now[0])
    assert not sink.active
    sink.emit(fs_error(1))
    sink.emit(umount(2))  # not err/warn: not counted
    assert (sink.sent, sink.dropped) == (0, 1)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)  # journald appears
    server.settimeout(2)
    try:
        sink.emit(fs_error(2))  # before the retry time: no connect
        assert not sink.active and sink.dropped == 2
        now[0] += RETRY_FIRST_S
        sink.emit(fs_error(3))
        assert sink.active and sink.sent == 1
        assert parse_entry(server.recv(65536))["FSEV_SEQ"] == b"3"
    finally:
        server.close()


def test_retries_back_off_while_there_is_no_socket(tmp_path):
    now = [0.0]
    sink = JournaldSink(str(tmp_path / "none"), clock=lambda: now[0])
    tries = []
    real = sink._connect

    def counting() -> bool:
        tries.append(now[0])
        return real()

    sink._connect = counting  # type: ignore[method-assign]
    for _ in range(200):  # one event every 0.5 s for 100 s
        now[0] += 0.5
        sink.emit(fs_error(1))
    assert sink.dropped == 200
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert len(tries) < 12 and gaps == sorted(gaps), tries


def test_journald_restarting_loses_no_event_when_its_socket_is_back(journal_socket, tmp_path):
    path, server = journal_socket
    sink = JournaldSink(path)
    sink.emit(fs_error(1))
    assert server.recv(65536)
    server.close()
    Path(path).unlink()
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(path)  # the new journald's socket, at the same path
    again.settimeout(2)
    try:
        sink.emit(fs_error(2))
        assert parse_entry(again.recv(65536))["FSEV_SEQ"] == b"2"
        assert (sink.sent, sink.dropped) == (2, 0)
    finally:
        again.close()


def test_lists_of_names_are_comma_joined_fields():
    ev = Event(4, 1, 1.7e9, EventClass.ERR, EventType.SHUTDOWN, "raw_tracepoint", dev="7:1", fs_type="xfs",
               extra={"reasons": ["log_io", "force_umount"], "file": "fs/xfs/xfs_fsops.c", "odd": [1, 2]})
    fields = dict(entry_fields(ev))
    assert fields["FSEV_REASONS"] == "log_io,force_umount" and fields["FSEV_TYPE"] == "shutdown"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS[EventType.SHUTDOWN] and fields["PRIORITY"] == "3"
    assert "FSEV_ODD" not in fields
