"""The crash-prone half of tests/kernel/test_ring_close.py: close while a consumer reads.

Run as a child process, so that a SIGSEGV (a ring buffer unmapped under a
reader) fails that test with the child's return code instead of killing pytest
and its fixtures' cleanup. The caller floods the ext4 at DEV with real errors
the whole time. Prints one JSON object: what each kind of round saw.

    python ring_close_child.py DEV MOUNT_POINT READER_ROUNDS PROBES_ROUNDS SESSION_ROUNDS
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

# Records of a fixed size from one tracepoint: the ring is refilled by the
# flood faster than a reader empties it, so a close lands inside read() often.
PROG = r"""
struct rec { u64 ts; u32 dev; u32 cpu; char pad[48]; };
BPF_RINGBUF_OUTPUT(events, RING_PAGES);
BPF_PERCPU_ARRAY(drops, u64, 1);  /* what KernelProbes.drops() reads */
TRACEPOINT_PROBE(ext4, ext4_error) {
    if (args->dev != WATCHED_DEV)
        return 0;
    struct rec r = {};
    r.ts = bpf_ktime_get_ns();
    r.dev = args->dev;
    r.cpu = bpf_get_smp_processor_id();
    events.ringbuf_output(&r, sizeof(r), 0);
    return 0;
}
"""
RING_PAGES = 64
REC_SIZE = 64
JOIN_S = 5.0  # a consumer not gone this long after close() counts as stuck
CLOSE_AT_ONCE_EVERY = 10  # of the reader rounds: these close before the consumer has read (or even started)


@dataclass
class Rounds:
    rounds: int = 0
    rounds_with_records: int = 0
    records: int = 0
    stuck: int = 0
    max_close_s: float = 0.0  # close() itself: it waits for the consumer's call in progress
    max_join_s: float = 0.0  # from close() returning to the consumer having left
    errors: list[str] = field(default_factory=list)


def close_while_consuming(rounds: Rounds, i: int, at_once: bool, consume: Callable[[threading.Event, list[int]], None],
                          close: Callable[[], None]) -> None:
    """One round: a consumer thread, close() from here at a random moment
    after its first record (at_once: without waiting for anything)."""
    got = [0]
    first = threading.Event()

    def run() -> None:
        try:
            consume(first, got)
        except BaseException as e:  # noqa: BLE001 - every error is a failure to report
            rounds.errors.append(f"round {i}: consumer: {type(e).__name__}: {e}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if not at_once:
        if not first.wait(5):
            rounds.errors.append(f"round {i}: no record within 5 s")
        time.sleep(random.uniform(0, 0.004))
    t0 = time.monotonic()
    try:
        close()
    except BaseException as e:  # noqa: BLE001
        rounds.errors.append(f"round {i}: close: {type(e).__name__}: {e}")
    rounds.max_close_s = max(rounds.max_close_s, time.monotonic() - t0)
    t0 = time.monotonic()
    t.join(JOIN_S)
    rounds.max_join_s = max(rounds.max_join_s, time.monotonic() - t0)
    rounds.rounds += 1
    rounds.stuck += t.is_alive()
    rounds.records += got[0]
    rounds.rounds_with_records += got[0] > 0


def reader_rounds(dev: int, n: int) -> Rounds:
    """RingReader opened and closed n times over one compiled program's ring."""
    from bcc import BPF

    from fsev.kernel.ringbuf import PAGE, RingReader

    rounds = Rounds()
    b = BPF(text=PROG.encode(), cflags=[f"-DWATCHED_DEV={dev}", f"-DRING_PAGES={RING_PAGES}"])
    try:
        fd = b["events"].map_fd
        for i in range(n):
            r = RingReader(fd, RING_PAGES * PAGE)
            closed = threading.Event()

            def consume(first: threading.Event, got: list[int], r: RingReader = r,
                        closed: threading.Event = closed) -> None:
                # Goes on past close(): reads and waits after it must return at
                # once without touching the unmapped pages.
                while not closed.is_set():
                    r.wait(50)
                    out: list[bytes] = []
                    got[0] += r.read(4096, out, REC_SIZE)
                    if out:
                        _, rec_dev = struct.unpack_from("<QI", out[-1])
                        if rec_dev != dev:
                            raise AssertionError(f"record of dev {rec_dev:#x}, not {dev:#x}: not a record")
                        first.set()

            def close(r: RingReader = r, closed: threading.Event = closed) -> None:
                r.close()
                closed.set()

            close_while_consuming(rounds, i, i % CLOSE_AT_ONCE_EVERY == 0, consume, close)
    finally:
        b.cleanup()
    return rounds


def probes_rounds(dev: int, n: int) -> dict[str, Rounds]:
    """KernelProbes (one small program, compiled each time) closed while a
    thread is in poll(): half with fsev's reader, half with bcc's callback
    consumer (FSEV_BCC_RINGBUF), whose ring bcc frees in cleanup()."""
    from fsev.kernel.loader import KernelProbes
    from fsev.kernel.ringbuf import PAGE
    from fsev.probes.program import bpf_dir

    text = f"#define WATCHED_DEV {dev}\n#define RING_PAGES {RING_PAGES}\n{PROG}"
    out = {"probes_reader": Rounds(), "probes_bcc": Rounds()}
    for i in range(n):
        kind = "probes_bcc" if i % 2 else "probes_reader"
        with _env("FSEV_BCC_RINGBUF", "1" if kind == "probes_bcc" else None):
            seen = [0]

            def on_record(raw: bytes, seen: list[int] = seen) -> bool:
                seen[0] += 1
                return seen[0] % 4096 == 0  # a full batch: bcc's poll comes back

            p = KernelProbes(text, bpf_dir(), [], on_record, RING_PAGES * PAGE)

        def consume(first: threading.Event, got: list[int], p: KernelProbes = p, seen: list[int] = seen) -> None:
            while not p.closed:
                p.poll(50)
                p.drops()
                got[0] = seen[0]
                if got[0]:
                    first.set()
            p.poll(50)  # after close: no-ops, at once
            p.drain()
            p.drops()

        close_while_consuming(out[kind], i, False, consume, p.close)
    return out


class _env:
    """An environment variable set (or unset: None) for a with block."""

    def __init__(self, name: str, value: str | None) -> None:
        self.name, self.value = name, value

    def __enter__(self) -> None:
        self.old = os.environ.get(self.name)
        self._set(self.value)

    def __exit__(self, *exc: object) -> None:
        self._set(self.old)

    def _set(self, value: str | None) -> None:
        if value is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = value


def session_rounds(mount_point: str, n: int) -> dict[str, Rounds]:
    """Whole TraceSessions (fsev's program, compiled each time), half with
    fsev's reader and half with bcc's callback consumer (FSEV_BCC_RINGBUF)."""
    from fsev.events import EventClass, EventType
    from fsev.linux.mountinfo import MountTable
    from fsev.session.trace import TraceOptions, TraceSession, kernel_facts

    facts = kernel_facts()
    m = MountTable.read().by_mount_point(mount_point)
    assert m is not None
    out = {"session_reader": Rounds(), "session_bcc": Rounds()}
    for i in range(n):
        kind = "session_bcc" if i % 2 else "session_reader"
        s = TraceSession(TraceOptions(mounts=[m], classes=frozenset({EventClass.ERR})), facts=facts)
        with _env("FSEV_BCC_RINGBUF", "1" if kind == "session_bcc" else None):
            s.start()

        def consume(first: threading.Event, got: list[int], s: TraceSession = s) -> None:
            for ev in s.events(poll_ms=50):
                if ev.type is EventType.FS_ERROR:
                    got[0] += 1
                    first.set()
            for _ in s.events():  # a closed session neither restarts nor fails
                raise AssertionError("events() of a closed session yielded")

        close_while_consuming(out[kind], i, i < 2, consume, s.close)  # the first of each kind: at once
    return out


def main() -> None:
    dev, mount_point = int(sys.argv[1]), sys.argv[2]
    n_reader, n_probes, n_session = (int(a) for a in sys.argv[3:6])
    result: dict[str, object] = {}
    t0 = time.monotonic()
    result["reader"] = asdict(reader_rounds(dev, n_reader))
    t1 = time.monotonic()
    result.update({k: asdict(v) for k, v in probes_rounds(dev, n_probes).items()})
    t2 = time.monotonic()
    result.update({k: asdict(v) for k, v in session_rounds(mount_point, n_session).items()})
    result["seconds"] = {"reader": round(t1 - t0, 2), "probes": round(t2 - t1, 2),
                         "session": round(time.monotonic() - t2, 2)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
