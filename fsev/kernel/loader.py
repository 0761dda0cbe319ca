"""The one module that imports bcc: compile, attach, poll, detach."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from fsev.errors import FsevError
from fsev.kernel import early, ringbuf, tp_btf
from fsev.kernel.closing import CloseGuard
from fsev.kernel.libc import libc
from fsev.kernel.records import PATH_LEN, RECORD_SIZE, THR_SLOTS, ThrState
from fsev.kernel.ringbuf import RingReader
from fsev.kernel.thr_slots import reset_gate, thr_slot_for

if TYPE_CHECKING:
    # A group of gated programs, switched together. For annotations only: at
    # run time the loader only hashes hooks, and needs nothing from fsev.points.
    from fsev.kernel.thr_slots import Hook

# The record sink returns True when its batch is full: the callback then
# returns -1 so libbpf stops consuming (that record is already copied) and
# ring_buffer_poll() comes back. Under a flood, libbpf would otherwise keep
# consuming for ever inside one poll, and nothing could stop or emit.
RecordSink = Callable[[bytes], bool]


# Every compile and every module teardown holds early.BCC_LOCK (bcc 0.26 is
# not safe to enter from two threads at once), and compiles with the same
# flags wherever it starts: early.compile_program.
compile_program = early.compile_program


def discard_program(b: Any) -> None:
    """Detach and free a compiled program nobody will use (fsev.kernel.early)."""
    with contextlib.suppress(Exception):
        ids = _prog_ids(fn.fd for fn in getattr(b, "funcs", {}).values())
        _detach_all(b, [])
        with early.BCC_LOCK:
            b.cleanup()
        _wait_freed(ids)


def bcc_available() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or a broken libbcc
        return False, f"{type(e).__name__}: {e}"
    return True, ""


class KernelProbes:
    """A compiled and attached fsev program; close() detaches everything.

    Programs named in `gated` are attached like the others (so a kernel that
    refuses one says so at start), and set_hook() detaches and re-attaches
    them by group later (fsev/thresholds/gate.py says when).

    close() may come from any thread while another is inside poll() or a
    table method: it waits for that call to end (waking a poll that waits for
    records) before it frees the ring buffer and the maps; calls after it do
    nothing (poll returns at once, drops() the last count read)."""

    def __init__(self, text: str, include_dir: Path, kprobes: list[tuple[str, str]], on_record: RecordSink,
                 ringbuf_bytes: int, batch: int = 4096,
                 raw_tps: list[tuple[str, str, str, int | None]] | None = None,
                 gated: Mapping[str, Hook] | None = None, runs: bool = False) -> None:
        ok, why = bcc_available()
        if not ok:
            raise FsevError(f"cannot import bcc ({why}); install python3-bpfcc (sudo make install)")

        # First: the failure paths below close() through it.
        self._guard = CloseGuard()
        self.compiled_early = False  # the program came from fsev.kernel.early's compile
        self._reader: RingReader | None = None
        self._drops = 0
        self._on_record = on_record
        # runs: on_record also takes runs of records with their headers, one
        # bytes object each (RingReader.read_runs), from fsev's own reader.
        self._runs = runs
        self._thr_slots: dict[int, int] = {}  # dev -> thr_state slot
        self._tables_known: dict[str, bool] = {}
        self._fds: list[int] = []  # tp_btf programs, closed by close()
        self._links: dict[str, int] = {}  # tp_btf program -> its link while attached
        self._gated = dict(gated or {})
        self._switches: dict[Hook, list[tuple[Callable[[], None], Callable[[], None]]]] = {}
        self._hooks_on: set[Hook] = set()
        self.notes: list[str] = []
        try:
            # Tracepoint programs (TRACEPOINT_PROBE) attach as bcc loads them.
            # The same text may have been compiling since the command began
            # (fsev/kernel/early.py): then that program, when it is done.
            got = early.take(text, include_dir, discard_program)
            self.compiled_early = got is not None
            self.bpf = got if got is not None else compile_program(text, include_dir)
        except Exception as e:
            raise FsevError(f"the kernel or bcc refused fsev's BPF program: {_one_line(e)} "
                            "(see `fsev doctor`; `fsev trace --print-bpf` shows the C)") from None
        try:
            for fn, prog in kprobes:
                if prog.startswith("kretp_"):  # return probes (fsev/points/read_only.py)
                    self.bpf.attach_kretprobe(event=fn, fn_name=prog)
                else:
                    self._attach_kprobe(fn, prog)
            for tp, typed, plain, btf_id in raw_tps or ():
                self._attach_raw_tp(tp, typed, plain, btf_id)
            self._batch = batch
            if ringbuf.supported() and not os.environ.get("FSEV_BCC_RINGBUF"):
                self._reader = RingReader(self.bpf["events"].map_fd, ringbuf_bytes)
            else:
                self.bpf["events"].open_ring_buffer(self._callback)
        except Exception as e:
            self.close()
            raise FsevError(f"attaching fsev's probes failed: {_one_line(e)}") from None
        early.compiled(text)  # the next run of this command line starts with it

    def _gate(self, prog: str, attach: Callable[[], None], detach: Callable[[], None]) -> None:
        hook = self._gated.get(prog)
        if hook is not None:
            self._switches.setdefault(hook, []).append((attach, detach))
            self._hooks_on.add(hook)

    def _attach_kprobe(self, fn: str, prog: str) -> None:
        self.bpf.attach_kprobe(event=fn, fn_name=prog)
        self._gate(prog, lambda: self.bpf.attach_kprobe(event=fn, fn_name=prog),
                   lambda: self.bpf.detach_kprobe(event=fn, fn_name=prog))

    def _attach_raw_tp(self, tp: str, typed: str, plain: str, btf_id: int | None) -> None:
        """The typed form as tp_btf (direct loads), else the plain one through
        bcc. No typed form (""): the plain one, and nothing to note."""
        if not typed:
            self._attach_plain(tp, plain)
            return
        if btf_id is None:
            why = f"kernel BTF has no btf_trace_{tp}"
        elif os.environ.get("FSEV_PLAIN_RAW_TP"):
            why = "FSEV_PLAIN_RAW_TP is set"
        else:
            try:
                prog = tp_btf.load(self.bpf.dump_func(typed.encode()), typed, btf_id)
                try:
                    link = tp_btf.attach(prog)
                except tp_btf.TpBtfError:
                    os.close(prog)
                    raise
                self._fds.append(prog)
                self._links[typed] = link
                self._gate(typed, lambda: self._links.__setitem__(typed, tp_btf.attach(prog)),
                           lambda: os.close(self._links.pop(typed)))
                return
            except tp_btf.TpBtfError as e:
                why = f"tp_btf refused: {e}"
        self._attach_plain(tp, plain)
        self.notes.append(f"raw tracepoint {tp} without BTF types ({why}): helper reads, slower")

    def _attach_plain(self, tp: str, plain: str) -> None:
        self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=plain.encode())
        self._gate(plain, lambda: self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=plain.encode()),
                   lambda: self.bpf.detach_raw_tracepoint(tp=tp.encode()))

    def gated_hooks(self) -> frozenset[Hook]:
        """The groups set_hook() can switch."""
        return frozenset(self._switches)

    @property
    def hooks_on(self) -> frozenset[Hook]:
        return frozenset(self._hooks_on)

    @property
    def closed(self) -> bool:
        return self._guard.closed

    def set_hook(self, hook: Hook, on: bool) -> None:
        """Attach (on) or detach a group of gated programs; FsevError if the
        kernel refuses (the group is then left detached). Nothing once closed."""
        with self._guard.call() as live:
            if live:
                self._set_hook(hook, on)

    def _set_hook(self, hook: Hook, on: bool) -> None:
        if (hook in self._hooks_on) == on:
            return
        done: list[Callable[[], None]] = []
        try:
            for attach, detach in self._switches.get(hook, []):
                (attach if on else detach)()
                done.append(detach)
        except Exception as e:
            for undo in done if on else []:
                with contextlib.suppress(Exception):
                    undo()
            self._hooks_on.discard(hook)
            raise FsevError(f"{'attaching' if on else 'detaching'} the {getattr(hook, 'value', hook)} hooks failed: "
                            f"{_one_line(e)}") from None
        if on:
            self._hooks_on.add(hook)
        else:
            self._hooks_on.discard(hook)

    def _callback(self, _ctx: object, data: int, size: int) -> int:
        # Copy out the raw bytes only: decoding happens past this boundary in
        # batches (fsev.kernel.records), and a ctypes object per record costs more.
        return -1 if self._on_record(ctypes.string_at(data, RECORD_SIZE if size >= RECORD_SIZE else size)) else 0

    # The table methods run under the guard too: after close() the maps' fds
    # are closed, and their numbers may already name someone else's files.
    def watch_devs(self, devs: dict[int, int]) -> None:
        """Make watched_devs exactly devs: kernel dev_t -> the classes watched
        there (FSEV_CLASS_BIT mask). New and changed keys are written before
        stale ones go, so a mount in both the old and the new set is never
        unwatched in between."""
        with self._guard.call() as live:
            if live:
                _replace(self.bpf["watched_devs"], {k: v for k, v in devs.items()})

    def watch_paths(self, paths: list[str]) -> None:
        """Make watched_paths (the umount path filter) exactly paths."""
        with self._guard.call() as live:
            if not live or not self._has_table("watched_paths"):
                return
            t = self.bpf["watched_paths"]
            want = {os.fsencode(p)[: PATH_LEN - 1] for p in paths}
            for p in want:
                k = t.Key()
                k.path = p
                t[k] = t.Leaf(1)
            for k in list(t.keys()):
                if bytes(k.path).rstrip(b"\0") not in want:
                    del t[k]

    def set_keys(self, table: str, keys: list[int]) -> None:
        """Make a u32 -> 1 hash the program filters with hold exactly keys, if it has it."""
        with self._guard.call() as live:
            if live and self._has_table(table):
                _replace(self.bpf[table], {k: 1 for k in keys})

    def table_items(self, table: str) -> list[tuple[int, object]]:
        """(u32 key, value struct) of a hash the program keeps state in; [] if absent or closed."""
        with self._guard.call() as live:
            if not live or not self._has_table(table):
                return []
            return [(k.value, v) for k, v in self.bpf[table].items()]

    def write_thr_state(self, dev: int, state: ThrState) -> None:
        """Set one watched superblock's threshold state (struct fsev_thr_state).

        The first write for a dev gives it a slot, maps dev -> slot, then bumps
        thr_epoch so that no CPU keeps a "not watched" verdict made before.
        Every write resets the gate (reset_gate): each CPU re-checks.
        Nothing once closed.
        """
        with self._guard.call() as live:
            if live:
                self._write_thr_state(dev, state)

    def _write_thr_state(self, dev: int, state: ThrState) -> None:
        t = self.bpf["thr_state"]
        leaf = t.Leaf()
        if ctypes.sizeof(leaf) != ctypes.sizeof(state):
            raise FsevError("struct fsev_thr_state differs between bpf/fsev.h and fsev/kernel/records.py")
        new = dev not in self._thr_slots
        if new:
            slot = thr_slot_for(state.kind, set(self._thr_slots.values()))
            if slot >= THR_SLOTS:
                raise FsevError(f"more than {THR_SLOTS} superblocks with kernel thresholds")
            self._thr_slots[dev] = slot
        slot = self._thr_slots[dev]
        ctypes.memmove(ctypes.addressof(leaf), ctypes.addressof(state), ctypes.sizeof(state))
        leaf.gate = reset_gate(t[t.Key(slot)].gate)
        t[t.Key(slot)] = leaf
        if new:
            slots = self.bpf["thr_slot"]
            slots[slots.Key(dev)] = slots.Leaf(slot)
            epoch = self.bpf["thr_epoch"]
            epoch[epoch.Key(0)] = epoch.Leaf(epoch[epoch.Key(0)].value + 1)

    def _has_table(self, name: str) -> bool:
        """Whether the program has this map. Remembered: bcc looks a missing
        name up again each time (about 1 ms), and the halves ask on every poll."""
        known = self._tables_known
        if name not in known:
            try:
                self.bpf[name]
                known[name] = True
            except KeyError:
                known[name] = False
        return known[name]

    def release_thr_state(self, dev: int) -> None:
        """A superblock no longer armed: its slot is emptied (no levels, so a
        check there finds nothing to do), unmapped and free for another; the
        epoch bump drops every CPU's cached verdict for it."""
        with self._guard.call() as live:
            if not live or dev not in self._thr_slots:
                return
            slot = self._thr_slots.pop(dev)
            t = self.bpf["thr_state"]
            t[t.Key(slot)] = t.Leaf()
            slots = self.bpf["thr_slot"]
            try:
                del slots[slots.Key(dev)]
            except KeyError:
                pass
            epoch = self.bpf["thr_epoch"]
            epoch[epoch.Key(0)] = epoch.Leaf(epoch[epoch.Key(0)].value + 1)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for records, then hand at most one batch to on_record.
        Returns at once when closed (also by close() from another thread)."""
        with self._guard.call() as live:
            if not live:
                return
            if self._reader is None:
                self.bpf.ring_buffer_poll(timeout_ms)
                return
            self._reader.wait(timeout_ms)
            self._drain()

    def drain(self) -> None:
        with self._guard.call() as live:
            if live:
                self._drain()

    def _drain(self) -> None:
        if self._reader is None:
            self.bpf.ring_buffer_consume()
            return
        batch: list[bytes] = []
        if self._runs:
            self._reader.read_runs(self._batch, batch, RECORD_SIZE)
        else:
            self._reader.read(self._batch, batch, RECORD_SIZE)
        for raw in batch:
            self._on_record(raw)

    def backlog(self) -> int:
        """Records waiting in the ring buffer, about (fsev's reader only; 0 with bcc's)."""
        reader = self._reader
        return reader.backlog() // ringbuf.stride(RECORD_SIZE) if reader is not None else 0

    def drops(self) -> int:
        """Records the kernel dropped so far; once closed, the last count read."""
        with self._guard.call() as live:
            if live:
                self._drops = int(sum(self.bpf["drops"][0]))
            return self._drops

    def wake(self) -> None:
        """Make a poll() in progress return now rather than at its timeout: a
        closer calls it before it waits for the consumer. (bcc's
        ring_buffer_poll cannot be woken: with FSEV_BCC_RINGBUF the wait is
        up to that poll's timeout.)"""
        reader = self._reader
        if reader is not None:
            reader.wake()

    def nudge(self) -> None:
        """Make a poll() in progress (or the next) return now, once: the
        consumer's thread has a request to handle."""
        reader = self._reader
        if reader is not None:
            reader.nudge()

    def wake_on(self, fd: int, events: int) -> bool:
        """Let poll() also return when fd is ready (epoll flags); False where
        the wait cannot take other fds (bcc's own ring_buffer_poll)."""
        reader = self._reader
        if reader is None:
            return False
        reader.wake_on(fd, events)
        return True

    def close(self) -> None:
        """Detach and free everything; from any thread, at any moment, more than once."""
        self.wake()
        self._guard.close(self._teardown)

    def _teardown(self) -> None:
        reader = self._reader
        if reader is not None:
            reader.close()
            self._reader = None
        b = getattr(self, "bpf", None)
        links = list(getattr(self, "_links", {}).values()) + list(reversed(getattr(self, "_fds", [])))
        self._fds = []
        self._links = {}
        if b is not None:
            ids = _prog_ids(fn.fd for fn in getattr(b, "funcs", {}).values())
            _detach_all(b, links)
            with early.BCC_LOCK:
                b.cleanup()
            self.bpf = None
            _wait_freed(ids)
        early.wait_discarded()


def _detach_all(b: object, fds: list[int]) -> None:
    """Close every attachment at once. Each close waits for the kernel to
    unregister its probe (about 70 ms here): one after another, as bcc's
    cleanup() does, eighteen tracepoints held fsev's exit for 1.3 s. Closing
    them on threads lets those waits overlap. What bcc would close again is
    taken out of its books (its detach for a tracepoint does nothing else)."""
    tps: dict = getattr(b, "tracepoint_fds", {})
    raws: dict = getattr(b, "raw_tracepoint_fds", {})
    todo = list(fds) + list(tps.values()) + list(raws.values())
    if not todo:
        return

    def close(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(todo))) as pool:
        list(pool.map(close, todo))
    tps.clear()
    raws.clear()


# Programs on faultable tracepoints (sys_enter/sys_exit since 6.13) are freed
# an RCU tasks-trace grace period after they are detached: wait for that, so
# that no program of fsev is loaded once it has exited.
FREE_WAIT_S = 3.0
_NR_BPF = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}
_BPF_PROG_GET_FD_BY_ID = 13


def _prog_ids(fds: Iterable[int]) -> set[int]:
    ids: set[int] = set()
    for fd in fds:
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                ids |= {int(l.split()[1]) for l in f if l.startswith("prog_id:")}
        except (OSError, ValueError, IndexError):
            continue
    return ids


def _prog_loaded(libc: ctypes.CDLL, nr: int, prog_id: int) -> bool:
    attr = ctypes.create_string_buffer(ctypes.c_uint32(prog_id).value.to_bytes(4, "little"), 16)
    fd = libc.syscall(nr, _BPF_PROG_GET_FD_BY_ID, attr, 16)
    if fd >= 0:
        os.close(fd)
        return True
    return False


def _wait_freed(ids: set[int]) -> None:
    nr = _NR_BPF.get(os.uname().machine)
    if not ids or nr is None:
        return
    c = libc()
    deadline = time.monotonic() + FREE_WAIT_S
    while ids and time.monotonic() < deadline:
        ids = {i for i in ids if _prog_loaded(c, nr, i)}
        if ids:
            time.sleep(0.02)


def _replace(t: Any, want: dict[int, int]) -> None:  # t: a bcc hash of u32 -> u8
    """Write want's keys, then delete the others: never a moment without a wanted key."""
    for k, v in want.items():
        t[t.Key(k)] = t.Leaf(v)
    for key in list(t.keys()):
        if key.value not in want:
            del t[key]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__
