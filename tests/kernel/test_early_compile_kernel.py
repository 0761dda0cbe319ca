"""The start-up path with the early compile (fsev/kernel/early.py) on the real
kernel: a session that takes the program compiled on the thread attaches
every point a session compiling its own text attaches, and delivers a real
ext4 error with its fanotify detail; `fsev trace` leaves its text in the cache
and a second run of the same command line finds it the same."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import fsev
from fsev.events import EventClass, EventType
from fsev.kernel import early
from fsev.linux.mountinfo import MountTable
from fsev.probes.program import bpf_dir
from fsev.session.selection import resolve_mounts
from fsev.session.trace import TraceOptions, TraceSession
from fsev.testing.kernel_rig import FsevTrace, ext4, live_prog_ids

pytestmark = pytest.mark.root

ARGV = ["trace", "--json", "--events", "err", "(test_early_compile_kernel)"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "programs"
    monkeypatch.setenv("FSEV_CACHE_DIR", str(d))
    early.reset()
    yield d
    running = early.running_compile()
    if running is not None:  # a test that failed before its session took it
        running.wait()
        if running.program is not None:
            from fsev.kernel.loader import discard_program

            discard_program(running.program)
    early.reset()


def _begin() -> bool:
    return early.begin(ARGV, str(Path(fsev.__file__).resolve().parent), bpf_dir)


def _attached(s: TraceSession) -> set:
    probes = s._probes
    assert probes is not None
    b = probes.bpf
    return set(b.tracepoint_fds) | set(b.raw_tracepoint_fds) | set(probes._links)


def _fs_error(s: TraceSession, dev: str, timeout: float = 5.0):
    end = time.monotonic() + timeout
    for ev in s.events(poll_ms=20, until=end):
        if ev.type is EventType.FS_ERROR and ev.dev == dev:
            return ev
    return None


def test_a_session_on_the_early_program_attaches_every_point_and_delivers_a_real_ext4_error(cache):
    with ext4() as fs:
        opts = lambda: TraceOptions(mounts=resolve_mounts([fs.mount_point], MountTable.read()),  # noqa: E731
                                    classes=frozenset({EventClass.ERR}))
        assert not _begin()  # nothing compiled under this command line yet
        first = TraceSession(opts())
        try:
            first.start()
            assert first._probes is not None and not first._probes.compiled_early
            planned = _attached(first)
        finally:
            first.close()
        assert planned and len(list(cache.iterdir())) == 1  # the text, for the next run

        early.reset()
        assert _begin()  # the next run starts compiling that text at once
        s = TraceSession(opts())
        try:
            s.start()
            assert s._probes is not None and s._probes.compiled_early
            assert _attached(s) == planned
            fs.trigger_errors(1)
            ev = _fs_error(s, fs.dev)
            assert ev is not None, "no fs_error from the early-compiled program"
            assert ev.function == "trigger_test_error"
            assert ev.errno is not None and ev.extra.get("errno_source") == "fanotify"
        finally:
            s.close()


def test_fsev_trace_leaves_its_text_and_runs_on_it_again(tmp_path):
    cache = tmp_path / "programs"
    env = {"FSEV_CACHE_DIR": str(cache)}
    with ext4() as fs:
        args = ["--standalone", "--mount", fs.mount_point, "--events", "err"]
        with FsevTrace(args, env=env) as t:
            t.wait_attached()
            assert t.stop() == 0
        (entry,) = cache.iterdir()
        text, inode = entry.read_text(), entry.stat().st_ino
        assert "fsev load-time constants" in text
        with FsevTrace(args, env=env) as t:
            t.wait_attached()
            fs.trigger_errors(1)
            evs = t.wait_for(lambda e: any(x["type"] == "fs_error" for x in e))
            assert t.stop() == 0
        (err,) = [e for e in evs if e["type"] == "fs_error"]
        assert err["dev"] == fs.dev and err["function"] == "trigger_test_error" and err["errno"]
        # Its text was the cached one (so the early program was the one used): not written again.
        assert list(cache.iterdir()) == [entry] and entry.stat().st_ino == inode and entry.read_text() == text


def test_a_stale_text_is_compiled_early_but_never_used_and_leaves_nothing_loaded(cache):
    from fsev.kernel.loader import _prog_ids

    with ext4() as fs:
        opts = lambda: TraceOptions(mounts=resolve_mounts([fs.mount_point], MountTable.read()),  # noqa: E731
                                    classes=frozenset({EventClass.ERR}))
        _begin()
        first = TraceSession(opts())
        try:
            first.start()
        finally:
            first.close()
        (entry,) = cache.iterdir()
        entry.write_text(entry.read_text() + "\n/* a text this session does not build */\n")
        early.reset()
        assert _begin()
        running = early.running_compile()
        assert running is not None
        running.wait()
        assert running.program is not None
        stale = _prog_ids(fn.fd for fn in running.program.funcs.values())
        assert stale and stale <= live_prog_ids()  # compiled, loaded, attached
        s = TraceSession(opts())
        try:
            s.start()
            assert s._probes is not None and not s._probes.compiled_early
            fs.trigger_errors(1)
            ev = _fs_error(s, fs.dev)
            assert ev is not None and ev.errno is not None
        finally:
            s.close()
        assert not stale & live_prog_ids()  # the stale program was detached and freed
        assert "does not build" not in entry.read_text()  # the cache holds the session's text now
