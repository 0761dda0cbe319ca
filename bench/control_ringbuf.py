"""Control for bench_top's load run: the smallest bcc ring-buffer consumer.

Same tracepoint (ext4:ext4_error), same record size (208 bytes), same ring
(256 pages), bcc's own consumer, no decoding, no screen. Reserve failures it
counts belong to the kernel and the machine, not to fsev. (A bench script,
not part of the package: fsev itself imports bcc in fsev.kernel.loader only.)

    python control_ringbuf.py DEV SECONDS   # DEV: kernel dev_t (major << 20 | minor)
prints "ready", then after SECONDS: "<delivered> <drops>".
"""

import sys
import time

from bcc import BPF

PROGRAM = """
BPF_RINGBUF_OUTPUT(events, 256);
BPF_PERCPU_ARRAY(drops, u64, 1);
TRACEPOINT_PROBE(ext4, ext4_error) {
    if (args->dev != WATCHED_DEV)
        return 0;
    u64 *r = events.ringbuf_reserve(208);
    if (!r) {
        u32 zero = 0;
        u64 *n = drops.lookup(&zero);
        if (n)
            (*n)++;
        return 0;
    }
    r[0] = bpf_ktime_get_ns();
    events.ringbuf_submit(r, 0);
    return 0;
}
"""


def main() -> None:
    dev, seconds = int(sys.argv[1]), float(sys.argv[2])
    b = BPF(text=PROGRAM, cflags=[f"-DWATCHED_DEV={dev}"])
    got = [0]

    def on_record(ctx, data, size):  # noqa: ANN001
        got[0] += 1
        return 0

    b["events"].open_ring_buffer(on_record)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        b.ring_buffer_poll(100)
    b.ring_buffer_consume()
    print(got[0], sum(b["drops"][0]), flush=True)
    b.cleanup()


if __name__ == "__main__":
    main()
