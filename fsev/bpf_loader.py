"""The one module that imports bcc: compile, attach, poll, detach."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable

from .errors import FsevError
from .records import PATH_LEN, RECORD_SIZE, Record, ThrState

RecordSink = Callable[[Record], None]


def bcc_available() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or a broken libbcc
        return False, f"{type(e).__name__}: {e}"
    return True, ""


class KernelProbes:
    """A compiled and attached fsev program; close() detaches everything."""

    def __init__(self, text: str, include_dir: Path, kprobes: list[tuple[str, str]], on_record: RecordSink) -> None:
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
                self.bpf.attach_kprobe(event=fn, fn_name=prog)
            self.bpf["events"].open_ring_buffer(self._callback)
        except Exception as e:
            self.close()
            raise FsevError(f"attaching fsev's probes failed: {_one_line(e)}") from None

    def _callback(self, _ctx: object, data: int, size: int) -> int:
        rec = Record()
        ctypes.memmove(ctypes.addressof(rec), data, min(size, RECORD_SIZE))
        self._on_record(rec)
        return 0

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

    def write_thr_state(self, dev: int, state: ThrState) -> None:
        """Set one watched superblock's threshold state (struct fsev_thr_state)."""
        t = self.bpf["thr_state"]
        leaf = t.Leaf()
        if ctypes.sizeof(leaf) != ctypes.sizeof(state):
            raise FsevError("struct fsev_thr_state differs between bpf/fsev.h and fsev/records.py")
        ctypes.memmove(ctypes.addressof(leaf), ctypes.addressof(state), ctypes.sizeof(state))
        t[t.Key(dev)] = leaf

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self.bpf.ring_buffer_consume()

    def drops(self) -> int:
        return int(sum(self.bpf["drops"][0]))

    def close(self) -> None:
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
