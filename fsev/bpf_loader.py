"""The one module that imports bcc: compile, attach, poll, detach."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable

from .errors import FsevError
from . import ringbuf
from .records import PATH_LEN, RECORD_SIZE, ThrState
from .ringbuf import RingReader

# The record sink returns True when its batch is full: the callback then
# returns -1 so libbpf stops consuming (that record is already copied) and
# ring_buffer_poll() comes back. Under a flood, libbpf would otherwise keep
# consuming for ever inside one poll, and nothing could stop or emit.
RecordSink = Callable[[bytes], bool]


def bcc_available() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or a broken libbcc
        return False, f"{type(e).__name__}: {e}"
    return True, ""


class KernelProbes:
    """A compiled and attached fsev program; close() detaches everything."""

    def __init__(self, text: str, include_dir: Path, kprobes: list[tuple[str, str]], on_record: RecordSink,
                 ringbuf_bytes: int, batch: int = 4096) -> None:
        ok, why = bcc_available()
        if not ok:
            raise FsevError(f"cannot import bcc ({why}); install python3-bpfcc (sudo make install)")
        from bcc import BPF

        self._on_record = on_record
        try:
            # Tracepoint programs (TRACEPOINT_PROBE) attach as bcc loads them.
            self.bpf = BPF(text=text.encode(), cflags=[f"-I{include_dir}", "-Wno-unused-function"])
        except Exception as e:
            raise FsevError(f"the kernel or bcc refused fsev's BPF program: {_one_line(e)} "
                            "(see `fsev doctor`; `fsev trace --print-bpf` shows the C)") from None
        try:
            for fn, prog in kprobes:
                if prog.startswith("kretp_"):  # return probes (fsev/program_health.py)
                    self.bpf.attach_kretprobe(event=fn, fn_name=prog)
                else:
                    self.bpf.attach_kprobe(event=fn, fn_name=prog)
            self._reader: RingReader | None = None
            self._batch = batch
            if ringbuf.supported() and not os.environ.get("FSEV_BCC_RINGBUF"):
                self._reader = RingReader(self.bpf["events"].map_fd, ringbuf_bytes)
            else:
                self.bpf["events"].open_ring_buffer(self._callback)
        except Exception as e:
            self.close()
            raise FsevError(f"attaching fsev's probes failed: {_one_line(e)}") from None

    def _callback(self, _ctx: object, data: int, size: int) -> int:
        # Copy out the raw bytes only: decoding happens past this boundary in
        # batches (fsev.decode), and a ctypes object per record costs more.
        return -1 if self._on_record(ctypes.string_at(data, RECORD_SIZE if size >= RECORD_SIZE else size)) else 0

    def watch_devs(self, devs: list[int]) -> None:
        t = self.bpf["watched_devs"]
        for d in devs:
            t[t.Key(d)] = t.Leaf(1)

    def watch_paths(self, paths: list[str]) -> None:
        if not _has_table(self.bpf, "watched_paths"):
            return
        t = self.bpf["watched_paths"]
        for p in paths:
            k = t.Key()
            k.path = os.fsencode(p)[: PATH_LEN - 1]
            t[k] = t.Leaf(1)

    def set_keys(self, table: str, keys: list[int]) -> None:
        """Put u32 keys (value 1) in a hash the program filters with, if it has it."""
        if not _has_table(self.bpf, table):
            return
        t = self.bpf[table]
        for k in keys:
            t[t.Key(k)] = t.Leaf(1)

    def table_items(self, table: str) -> list[tuple[int, object]]:
        """(u32 key, value struct) of a hash the program keeps state in; [] if absent."""
        if not _has_table(self.bpf, table):
            return []
        return [(k.value, v) for k, v in self.bpf[table].items()]

    def write_thr_state(self, dev: int, state: ThrState) -> None:
        """Set one watched superblock's threshold state (struct fsev_thr_state)."""
        t = self.bpf["thr_state"]
        leaf = t.Leaf()
        if ctypes.sizeof(leaf) != ctypes.sizeof(state):
            raise FsevError("struct fsev_thr_state differs between bpf/fsev.h and fsev/records.py")
        ctypes.memmove(ctypes.addressof(leaf), ctypes.addressof(state), ctypes.sizeof(state))
        t[t.Key(dev)] = leaf

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for records, then hand at most one batch to on_record."""
        if self._reader is None:
            self.bpf.ring_buffer_poll(timeout_ms)
            return
        self._reader.wait(timeout_ms)
        self.drain()

    def drain(self) -> None:
        if self._reader is None:
            self.bpf.ring_buffer_consume()
            return
        batch: list[bytes] = []
        self._reader.read(self._batch, batch, RECORD_SIZE)
        for raw in batch:
            self._on_record(raw)

    def drops(self) -> int:
        return int(sum(self.bpf["drops"][0]))

    def close(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
            self._reader = None
        b = getattr(self, "bpf", None)
        if b is not None:
            b.cleanup()
            self.bpf = None  # type: ignore[assignment]


def _has_table(bpf: object, name: str) -> bool:
    try:
        bpf[name]  # type: ignore[index]
        return True
    except KeyError:
        return False


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__
