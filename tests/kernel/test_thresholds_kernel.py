"""Free-space thresholds on the real kernel: tmpfs and ext4 in the kernel, others polled.

Each phase runs in its own process so that the pid an event names can be
checked: one writer down to below L1, another down to below L2, then `rm`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

import pytest

from fsev.testing.kernel_rig import FSEV, FsevTrace, ext4, fsev_prog_ids, live_prog_ids, run, tmpfs, unmount

pytestmark = pytest.mark.root

# Writes 64 KiB at a time into FILE until statfs says fewer than TARGET blocks
# are available, then prints the available blocks. PAUSE seconds between writes.
WRITER = r"""
import os, sys, time
path, target, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
mp = os.path.dirname(path)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
while os.statvfs(mp).f_bavail >= target:
    os.write(fd, b"x" * 65536)
    if pause:
        time.sleep(pause)
os.close(fd)
print(os.statvfs(mp).f_bavail)
"""


def write_until(path: str, target: int, pause: float = 0.0) -> tuple[int, int]:
    """(pid of the writer, available blocks when it stopped)."""
    p = subprocess.Popen([sys.executable, "-c", WRITER, path, str(target), str(pause)],
                         stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0
    return p.pid, int(out)


def thr_events(t: FsevTrace) -> list[dict]:
    return [e for e in t.events() if e["type"] == "threshold"]


def wait_thr(t: FsevTrace, n: int, timeout: float = 5) -> list[dict]:
    t.wait_for(lambda evs: len([e for e in evs if e["type"] == "threshold"]) >= n, timeout)
    return thr_events(t)


@contextlib.contextmanager
def overlay_on_tmpfs(size: str = "8m") -> Iterator[str]:
    """An overlay mount (another fs type, no kernel rung) whose upper dir is a small tmpfs."""
    with tmpfs(size) as upper:
        work = tempfile.mkdtemp(prefix="fsev-ovl-")
        lower, mp = os.path.join(work, "lower"), os.path.join(work, "mnt")
        os.mkdir(lower)
        os.mkdir(mp)
        os.mkdir(os.path.join(upper, "u"))
        os.mkdir(os.path.join(upper, "w"))
        try:
            run("mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={upper}/u,workdir={upper}/w", mp)
            yield mp
        finally:
            unmount(mp)
            with contextlib.suppress(OSError):
                os.rmdir(mp)
                os.rmdir(lower)
                os.rmdir(work)


def four_crossings(mp: str, rung: str, with_pids: bool = True, env: dict[str, str] | None = None,
                   slow: float = 1.0) -> list[str]:
    """--thr 1000,500 on mp: L1 down, L2 down, L2 up, L1 up, each confirmed.
    slow: timeouts scale (the VM test runs under emulation). Returns fsev's stderr lines."""
    f = os.path.join(mp, "fill")
    with FsevTrace(["--mount", mp, "--thr", "1000,500"], env=env) as t:
        t.wait_attached(timeout=60 * slow)
        assert any(f"thr {mp} " in l and rung in l for l in t.stderr_lines), t.stderr_lines
        w1, avail1 = write_until(f, 1000)
        assert avail1 < 1000
        evs = wait_thr(t, 1, 5 * slow)
        assert len(evs) == 1, evs
        w2, avail2 = write_until(f, 500)
        assert avail2 < 500
        evs = wait_thr(t, 2, 5 * slow)
        assert len(evs) == 2, evs
        rm = subprocess.Popen(["rm", f])
        assert rm.wait() == 0
        evs = wait_thr(t, 4, 5 * slow)
        time.sleep(0.5 * slow)  # room for a wrong fifth event
        assert t.stop() == 0
    evs = thr_events(t)
    assert [(e["level"], e["direction"]) for e in evs] == [("L1", "down"), ("L2", "down"), ("L2", "up"), ("L1", "up")]
    for e in evs:
        assert e["class"] == "thr" and e["rung"] == rung
        assert e["mount_point"] == mp
        lvl = e["level_blocks"]
        assert lvl == (1000 if e["level"] == "L1" else 500)
        assert e["avail_blocks"] <= lvl if e["direction"] == "down" else e["avail_blocks"] > lvl
    assert 500 < evs[0]["avail_blocks"] <= 1000
    if with_pids:
        assert [e["pid"] for e in evs] == [w1, w2, rm.pid, rm.pid]
        assert [e["comm"] for e in evs][2:] == ["rm", "rm"]
    else:
        assert all("pid" not in e for e in evs)  # polling cannot know who
    assert not any("Traceback" in l for l in t.stderr_lines)
    return t.stderr_lines


def test_tmpfs_four_crossings_in_order_with_the_pids_that_caused_them():
    with tmpfs("8m") as mp:
        stderr = four_crossings(mp, "raw_tracepoint")
    assert not any("without BTF types" in l for l in stderr), stderr  # tp_btf loads here


def test_tmpfs_plain_raw_tracepoints_where_tp_btf_is_refused():
    """FSEV_PLAIN_RAW_TP: the programs of a kernel that refuses tp_btf (helper reads)."""
    with tmpfs("8m") as mp:
        stderr = four_crossings(mp, "raw_tracepoint", env={"FSEV_PLAIN_RAW_TP": "1"})
    notes = [l for l in stderr if "without BTF types" in l]
    assert len(notes) == 2 and "mm_lru_insertion" in notes[0], stderr


def test_tmpfs_programs_are_btf_typed_here():
    """The per-page tmpfs programs load as tp_btf (fsev/kernel/tp_btf.py): direct loads."""
    with tmpfs("8m") as mp:
        with FsevTrace(["--mount", mp, "--thr", "1000"]) as t:
            t.wait_attached()
            progs = [json.loads(run("bpftool", "-j", "prog", "show", "id", str(i)).stdout)
                     for i in fsev_prog_ids(t.proc.pid)]
            assert t.stop() == 0
    typed = {p["name"]: p["type"] for p in progs if p["name"].startswith("thr_")}
    assert typed == {"thr_lru_typed": "tracing", "thr_delete_type": "tracing"}, typed  # names cut at 15


def test_each_watched_superblock_reports_its_own_crossings():
    """Two tmpfs (the per-CPU verdict cache keyed by superblock and s_dev, no
    mapping key) and an ext4 (its inode key) at once; the tmpfs programs also
    see the ext4's page cache and must leave it alone."""
    with tmpfs("8m") as a, tmpfs("8m") as b, ext4(size_mb=32) as e:
        mps = [a, e.mount_point, b]
        with FsevTrace(["--mount", a, "--mount", b, "--mount", e.mount_point, "--thr", "1000"]) as t:
            t.wait_attached()
            pids = []
            for n, mp in enumerate(mps, 1):
                pid, avail = write_until(os.path.join(mp, "fill"), 1000)
                assert avail < 1000
                pids.append(pid)
                assert len(wait_thr(t, n)) == n
            time.sleep(0.3)  # room for a wrong extra event
            assert t.stop() == 0
    evs = thr_events(t)
    assert [(e["mount_point"], e["pid"], e["level"], e["direction"]) for e in evs] == [
        (mp, pid, "L1", "down") for mp, pid in zip(mps, pids)]


def test_a_writer_busy_while_fsev_arms_is_seen(monkeypatch):
    """The programs run before user space writes the thresholds, so a CPU may
    cache "not watched" for the superblock; the epoch user space bumps after
    adding a slot must drop that verdict. Here the writer starts once the
    programs are attached and writes for 0.5 s before the thresholds are."""
    from fsev.events import EventType
    from fsev.kernel.loader import KernelProbes
    from fsev.linux.mountinfo import MountTable
    from fsev.points.registry import plan_probes
    from fsev.session.trace import TraceOptions, TraceSession, kernel_facts
    from fsev.thresholds.arming import arm_thresholds
    from fsev.thresholds.levels import parse_thr

    # One 4 KiB page per write, without pause, on one CPU: few other pages pass
    # that CPU's programs to displace its cached verdict.
    writer: list[subprocess.Popen] = []
    real_write = KernelProbes.write_thr_state

    def late_write(self, dev, state):
        writer.append(subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-c", WRITER.replace("65536", "4096"), os.path.join(mp, "fill"),
             "10000", "0"], stdout=subprocess.PIPE, text=True))
        time.sleep(0.5)
        real_write(self, dev, state)

    monkeypatch.setattr(KernelProbes, "write_thr_state", late_write)
    with tmpfs("1g") as mp:
        m = MountTable.read().by_mount_point(mp)
        session = TraceSession(TraceOptions(mounts=[m], thresholds=arm_thresholds(
            plan_probes(kernel_facts()), [m], parse_thr("10000"))))
        crossings = []
        try:
            session.start()
            [w] = writer
            assert os.statvfs(mp).f_bavail > 10000 and w.poll() is None  # still writing
            for ev in session.events(until=time.monotonic() + 30):
                if ev.type is EventType.THRESHOLD:
                    crossings.append(ev)
                    session.stop()
            w.communicate(timeout=60)
        finally:
            session.close()
            for w in writer:
                if w.poll() is None:
                    w.kill()
                    w.wait()
    # (Not the pid: pinned to one CPU, the writer is often preempted holding a
    # folio's lock while another task drains that CPU's LRU batch.)
    assert [(c.level, c.direction) for c in crossings] == [("L1", "down")]
    assert crossings[0].avail_blocks <= 10000


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_per_page_hooks_attach_only_near_a_level(kind, monkeypatch):
    """Far from its levels a mount has no per-page program attached (any costs
    the writer the kernel's dispatch). A writer within the rate bound
    (FSEV_THR_RATE here) meets the hook attached at L1 and is named; just
    below L1 the hooks stay (a level is crossed back and forth); once `rm`
    has taken the mount far above L1 again, they go."""
    from fsev.events import EventType
    from fsev.linux.mountinfo import MountTable
    from fsev.points.registry import plan_probes
    from fsev.session.trace import TraceOptions, TraceSession, kernel_facts
    from fsev.thresholds.arming import arm_thresholds
    from fsev.thresholds.gate import Hook
    from fsev.thresholds.levels import parse_thr

    monkeypatch.setenv("FSEV_THR_RATE", str(128 << 20))
    charge = Hook.SHMEM_CHARGE if kind == "tmpfs" else Hook.EXT4_CHARGE
    ctx = tmpfs("256m") if kind == "tmpfs" else ext4(size_mb=256)
    with ctx as fs:
        mp = fs if kind == "tmpfs" else fs.mount_point
        l1 = os.statvfs(mp).f_bavail - 25_000  # ~100 MiB to write
        m = MountTable.read().by_mount_point(mp)
        session = TraceSession(TraceOptions(mounts=[m], thresholds=arm_thresholds(
            plan_probes(kernel_facts()), [m], parse_thr(f"{l1},{l1 // 8}"))))
        switches: list[tuple[float, Hook, bool]] = []
        crossings: list = []
        consumer: threading.Thread | None = None

        def wait(cond, timeout: float = 5.0) -> None:
            deadline = time.monotonic() + timeout
            while not cond() and time.monotonic() < deadline:
                time.sleep(0.01)

        try:
            session.start()
            probes = session._probes
            assert probes is not None and charge in probes.gated_hooks()
            assert probes.hooks_on == frozenset()  # far from both levels
            real = probes.set_hook

            def spy(hook, on):
                switches.append((time.monotonic(), hook, on))
                real(hook, on)

            probes.set_hook = spy
            consumer = threading.Thread(target=lambda: crossings.extend(
                e for e in session.events(until=time.monotonic() + 60) if e.type is EventType.THRESHOLD), daemon=True)
            consumer.start()
            f = os.path.join(mp, "fill")
            w = subprocess.Popen([sys.executable, "-c", WRITER.replace("65536", "1048576"), f, str(l1), "0.01"],
                                 stdout=subprocess.PIPE, text=True)
            out, _ = w.communicate(timeout=120)
            assert w.returncode == 0 and int(out) < l1
            wait(lambda: len(crossings) >= 1)
            time.sleep(0.3)  # a slow gate statfs or two
            near = probes.hooks_on
            rm = subprocess.Popen(["rm", f])
            assert rm.wait() == 0
            wait(lambda: len(crossings) >= 2)
            wait(lambda: probes.hooks_on == frozenset(), timeout=2.0)
            far = probes.hooks_on
        finally:
            # The consumer leaves events() before the session is torn down
            # (close() is safe against it anyway: tests/kernel/test_ring_close.py).
            session.stop()
            if consumer is not None:
                consumer.join(10)
            session.close()
    assert consumer is not None and not consumer.is_alive(), "events() did not end after stop()"
    assert [(c.level, c.direction, c.pid) for c in crossings] == [("L1", "down", w.pid), ("L1", "up", rm.pid)]
    attached = [t for t, h, on in switches if h is charge and on]
    assert attached and attached[0] < crossings[0].ts_ns / 1e9, switches  # before the crossing was confirmed
    assert charge in near and (Hook.SHMEM_FREE in near) == (kind == "tmpfs"), (near, switches)
    assert far == frozenset(), (far, switches)


def test_a_stale_cached_mapping_never_hides_a_crossing():
    """With one tmpfs watched, each CPU caches the last mapping seen on it. Its
    file deleted, the inode's memory may serve a file of another tmpfs: that
    mapping then spends the watched share (an early check, which verifies the
    superblock and drops the key), never hides the watched tmpfs's pages."""
    with tmpfs("8m") as mp, tmpfs("64m") as other:
        with FsevTrace(["--mount", mp, "--thr", "1000,500"]) as t:
            t.wait_attached()
            for _ in range(3):
                f = os.path.join(mp, "gone")
                with open(f, "wb") as out:
                    out.write(b"x" * (1 << 20))
                os.unlink(f)
                for i in range(200):  # inodes of another tmpfs, maybe at the same address
                    with open(os.path.join(other, f"f{i}"), "wb") as out:
                        out.write(b"y" * 65536)
                for i in range(200):
                    os.unlink(os.path.join(other, f"f{i}"))
            pid, avail = write_until(os.path.join(mp, "fill"), 500)
            assert avail < 500
            wait_thr(t, 2)
            time.sleep(0.3)
            assert t.stop() == 0
    assert [(e["level"], e["direction"], e["pid"]) for e in thr_events(t)] == [("L1", "down", pid), ("L2", "down", pid)]


@pytest.mark.kprobe
def test_tmpfs_four_crossings_on_the_kprobe_rung():
    """In the stock-kernel VM: shmem's accounting functions of that kernel (6.1:
    shmem_alloc_and_acct_folio / shmem_recalc_inode) carry the tmpfs rung, its
    inode the cached key."""
    from fsev.points.registry import plan_probes
    from fsev.session.trace import kernel_facts

    rung = plan_probes(kernel_facts()).rung("thr_tmpfs")
    if rung is None or rung.kind.value != "kprobe":  # Debian 11's 5.10: no pair fsev knows
        pytest.skip(f"no tmpfs kprobe rung on this kernel: {'; '.join(rung.skipped if rung else ())}")
    with tmpfs("8m") as mp:
        four_crossings(mp, "kprobe", slow=6)


def test_ext4_four_crossings_in_order_with_the_pids_that_caused_them():
    with ext4(size_mb=32) as fs:
        four_crossings(fs.mount_point, "raw_tracepoint")


def test_other_fs_type_falls_back_to_statfs_polling_and_still_reports_crossings():
    with overlay_on_tmpfs("8m") as mp:
        four_crossings(mp, "polled", with_pids=False)


def test_size_and_percent_forms_arm_the_same_block_levels():
    """tmpfs size=8m is 2048 blocks of 4 KiB: 1000 blocks = 4000K = 48.828125%."""
    with tmpfs("8m") as mp:
        lines = []
        for form in ("1000,500", "4000K,2000K", "48.828125%,24.4140625%"):
            r = run(FSEV, "trace", "--dry-run", "--mount", mp, "--thr", form, check=False)
            assert r.returncode == 0, r.stderr
            [line] = [l for l in r.stderr.splitlines() if l.startswith(f"fsev: thr {mp} ")]
            lines.append(line)
        assert len(set(lines)) == 1 and "L1 1000, L2 500 blocks of 4096 bytes" in lines[0]


def test_crossing_reported_within_10ms_of_the_write():
    with tmpfs("8m") as mp:
        f = os.path.join(mp, "fill")
        with FsevTrace(["--mount", mp, "--thr", "1000"]) as t:
            t.wait_attached()
            with open(f, "wb", buffering=0) as out:
                while os.statvfs(mp).f_bavail >= 1000:
                    out.write(b"x" * 65536)
                crossed = time.time()
            evs = wait_thr(t, 1)
            assert t.stop() == 0
        assert len(evs) == 1
        assert evs[0]["wall_time"] - crossed < 0.010, evs[0]["wall_time"] - crossed


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_kernel_estimate_stays_within_the_band_of_statfs(kind):
    """Checks the kernel arithmetic itself (BTF offsets, the ext4_statfs formula):
    every hint's counter estimate is within the band of statfs read while the
    writer pauses."""
    from fsev.linux.mountinfo import MountTable
    from fsev.points.registry import plan_probes
    from fsev.session.trace import TraceOptions, TraceSession, kernel_facts
    from fsev.thresholds.arming import arm_thresholds
    from fsev.thresholds.levels import parse_thr

    ctx = tmpfs("8m") if kind == "tmpfs" else ext4(size_mb=32)
    with ctx as fs:
        mp = fs if kind == "tmpfs" else fs.mount_point
        m = MountTable.read().by_mount_point(mp)
        armed = arm_thresholds(plan_probes(kernel_facts()), [m], parse_thr("1000,500"))
        session = TraceSession(TraceOptions(mounts=[m], thresholds=armed))
        seen: list[tuple[int, int, bool]] = []
        try:
            session.start()
            assert session._thr is not None
            real_hint = session._thr.on_hint

            def spy(ev, now=None):
                seen.append((ev.avail_blocks, os.statvfs(mp).f_bavail, bool(ev.extra.get("settle"))))
                real_hint(ev, now)

            session._thr.on_hint = spy
            crossings = []
            consumer = threading.Thread(
                target=lambda: crossings.extend(session.events(until=time.monotonic() + 30)), daemon=True)
            consumer.start()
            write_until(os.path.join(mp, "fill"), 450, pause=0.02)
            time.sleep(0.2)
            session.stop()
            consumer.join(10)
        finally:
            session.close()
    band = armed[0].band
    estimates = [(a, s) for a, s, settle in seen if not settle]
    assert estimates, "no hint from the kernel"
    worst = max(abs(a - s) for a, s in estimates)
    assert worst <= band, (worst, band, estimates)
    assert [(c.level, c.direction) for c in crossings] == [("L1", "down"), ("L2", "down")]


def test_thr_state_mirror_matches_what_bcc_compiles():
    from bcc import BPF

    from fsev.kernel.records import ThrState
    from fsev.probes.program import bpf_dir

    b = BPF(text='#include "fsev.h"\nBPF_HASH(thr, u32, struct fsev_thr_state, 1);\n',
            cflags=[f"-I{bpf_dir()}"])
    try:
        leaf = b["thr"].Leaf
        assert [f[0] for f in leaf._fields_] == [f[0] for f in ThrState._fields_]
        for name, _ in ThrState._fields_:
            assert getattr(leaf, name).offset == getattr(ThrState, name).offset, name
        assert __import__("ctypes").sizeof(leaf) == __import__("ctypes").sizeof(ThrState)
    finally:
        b.cleanup()


def test_no_program_left_after_a_threshold_trace():
    with tmpfs("8m") as mp, ext4() as fs:
        with FsevTrace(["--mount", mp, "--mount", fs.mount_point, "--thr", "10%"]) as t:
            t.wait_attached()
            ids = fsev_prog_ids(t.proc.pid)
            assert len(ids) >= 7  # the error/umount programs plus 2 tmpfs and 5 ext4 threshold programs
            assert t.stop() == 0
        assert not (ids & live_prog_ids())


# ---- bad input: one line, exit 2, no traceback ---------------------------

def _bad(args: list[str], want: str, env: dict[str, str] | None = None) -> None:
    r = run(FSEV, "trace", *args, check=False, env={**os.environ, **(env or {})})
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsev: "), r.stderr
    assert want in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_bad_thr_input_is_one_line_and_exit_2():
    with tmpfs("8m") as mp, tmpfs("0") as unlimited:
        _bad(["--mount", mp, "--thr", "500,1000"], "L2 (1000) exceeds L1 (500)")
        _bad(["--mount", mp, "--thr", "1M,50%"], "must not exceed L1")
        _bad(["--mount", mp, "--thr", "3000"], "more than the filesystem has (2048 blocks")
        _bad(["--mount", mp, "--thr", "9m"], "more than the filesystem has")
        _bad(["--thr", "1000"], "--thr needs --mount")
        _bad(["--mount", mp, "--thr", "lots"], "bad threshold level 'lots'")
        _bad(["--mount", mp, "--thr", "10,abc"], "bad threshold level 'abc'")
        _bad(["--mount", mp, "--thr", "1000", "--thr-hysteresis", "x"], "bad --thr-hysteresis")
        _bad(["--mount", mp, "--thr-hysteresis", "10"], "--thr-hysteresis needs --thr")
        _bad(["--mount", mp, "--thr", "1000", "--events", "err"], "leave out thr")
        _bad(["--mount", unlimited, "--thr", "10%"], "tmpfs without a size limit")
        _bad(["--mount", mp, "--thr", "1000"], "FSEV_THR_RATE must be a positive number of bytes per second, not '4G'",
             env={"FSEV_THR_RATE": "4G"})


@pytest.mark.parametrize("funcs", [
    {"shmem_inode_acct_blocks", "shmem_inode_unacct_blocks"},  # 6.6+
    {"shmem_alloc_and_acct_folio", "shmem_recalc_inode"},  # Debian 12's 6.1
])
def test_tmpfs_kprobe_rung_programs_pass_the_verifier_here(funcs):
    """No kprobes to attach here, but the programs of that rung load (verify)."""
    from bcc import BPF
    from support.kernels import fake_kernel

    from fsev.kernel.btf import resolve
    from fsev.kernel.early import cflags
    from fsev.kernel.records import RecordClass
    from fsev.points.registry import ALL_TRACEPOINTS, ProbePoint, plan_probes, required_offsets, source
    from fsev.probes.program import ProgramConfig, bpf_dir

    facts = fake_kernel(release="x", kprobes=True, kprobe_functions=frozenset(funcs),
                        tracepoints=frozenset(ALL_TRACEPOINTS))
    plan = plan_probes(facts)
    cfg = ProgramConfig(classes=frozenset({RecordClass.THR}), watch_all=False,
                        thr_points=frozenset({ProbePoint.THR_TMPFS}))
    offsets = {s: int(v) for s, v in resolve(required_offsets(plan, cfg)).items()}
    b = BPF(text=source(plan, cfg, offsets), cflags=cflags(bpf_dir()))
    try:
        for fn in ("kp_thr_shmem_acct", "kp_thr_shmem_unacct"):
            b.load_func(fn, BPF.KPROBE)
    finally:
        b.cleanup()
