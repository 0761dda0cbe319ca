"""`fsev trace` against the real kernel: ext4 errors and unmounts."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from fsev.testing.kernel_rig import FSEV, FsevTrace, ext4, fsev_prog_ids, live_prog_ids, run, tmpfs

pytestmark = pytest.mark.root


def _rung_for(trace: FsevTrace, point: str) -> str:
    line = next(l for l in trace.stderr_lines if l.startswith(f"fsev: {point}: "))
    return line.split(": ")[2].split()[0]


def test_corrupted_ext4_directory_gives_one_fs_error_for_the_watched_mount_only():
    with ext4(corrupt_dir=True) as watched, ext4(corrupt_dir=True) as other:
        with FsevTrace(["--mount", watched.mount_point]) as t:
            t.wait_attached()
            # The same corruption on a mount that is not watched must not cross.
            subprocess.run(["ls", os.path.join(other.mount_point, "d")], capture_output=True)
            reader = subprocess.Popen(["ls", os.path.join(watched.mount_point, "d")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader.wait()
            evs = t.wait_for(lambda e: len(e) >= 1)
            time.sleep(0.3)  # room for a wrong extra event to show up
            assert t.stop() == 0
        evs = [e for e in t.events() if e["type"] != "loss"]
        assert len(evs) == 1, evs
        e = evs[0]
        assert e["class"] == "err" and e["type"] == "fs_error"
        assert e["function"] == "htree_dirblock_to_tree"
        assert e["line"] > 0
        assert e["dev"] == watched.dev
        assert e["mount_point"] == watched.mount_point
        assert e["fs_type"] == "ext4"
        assert e["source"] == watched.loop
        assert e["pid"] == reader.pid and e["tgid"] == reader.pid
        assert e["comm"] == "ls"
        assert e["rung"] == _rung_for(t, "ext4_error")
        assert e["seq"] == 1 and e["ts_ns"] > 0 and abs(e["wall_time"] - time.time()) < 60


def test_umount_of_watched_tmpfs_gives_one_info_umount_event():
    with tmpfs() as mp, tmpfs() as other:
        with FsevTrace(["--mount", mp]) as t:
            t.wait_attached()
            run("umount", other)
            p = subprocess.run(["umount", mp])
            assert p.returncode == 0
            t.wait_for(lambda e: len(e) >= 1)
            time.sleep(0.3)
            assert t.stop() == 0
        evs = t.events()
        assert [(e["class"], e["type"], e["mount_point"]) for e in evs] == [("info", "umount", mp)]
        assert evs[0]["fs_type"] == "tmpfs"
        assert evs[0]["comm"] == "umount"


def test_lazy_umount_of_busy_mount_reported_when_last_user_lets_go():
    """Tracepoint rung: the umount(2) record is held until inotify's IN_UNMOUNT
    says the superblock is gone; the kprobe rung sees cleanup_mnt itself."""
    with tmpfs() as mp:
        with FsevTrace(["--mount", mp]) as t:
            t.wait_attached()
            busy = subprocess.Popen(["sleep", "30"], cwd=mp)
            try:
                run("umount", "-l", mp)
                time.sleep(0.5)
                assert [e for e in t.events() if e["type"] == "umount"] == [], "reported before the last user let go"
            finally:
                busy.kill()
                busy.wait()
            t.wait_for(lambda e: any(x["type"] == "umount" for x in e))
            time.sleep(0.3)
            assert t.stop() == 0
        drops = [e for e in t.events() if e["type"] == "umount"]
        assert len(drops) == 1, drops
        assert drops[0]["mount_point"] == mp and drops[0]["class"] == "info"
        assert drops[0]["rung"] == _rung_for(t, "mount_drop")
        if drops[0]["rung"] == "tracepoint":
            assert drops[0]["lazy"] is True  # umount(2) said MNT_DETACH; cleanup_mnt cannot tell


def test_events_filter_by_class_in_the_kernel():
    """--events err: an unmount (info) never crosses."""
    with tmpfs() as mp:
        with FsevTrace(["--mount", mp, "--events", "err"]) as t:
            t.wait_attached()
            run("umount", mp)
            time.sleep(0.5)
            assert t.stop() == 0
        assert t.events() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_unloads_every_program(sig):
    with tmpfs() as mp:
        with FsevTrace(["--mount", mp]) as t:
            t.wait_attached()
            ids = fsev_prog_ids(t.proc.pid)
            assert ids, "fsev holds no BPF program while tracing"
            assert t.stop(sig) == 0
        assert not (ids & live_prog_ids()), "fsev programs still loaded after exit"
        assert not any("Traceback" in l for l in t.stderr_lines)


def test_count_and_duration_end_the_stream():
    with ext4() as fs:
        with FsevTrace(["--mount", fs.mount_point, "--count", "3"]) as t:
            t.wait_attached()
            fs.trigger_errors(5)
            assert t.proc.wait(10) == 0
        assert len([e for e in t.events() if e["type"] == "fs_error"]) == 3
        start = time.monotonic()
        with FsevTrace(["--mount", fs.mount_point, "--duration", "1"]) as t:
            t.wait_attached()
            assert t.proc.wait(10) == 0
        assert time.monotonic() - start < 10


def test_dry_run_attaches_and_exits_zero():
    r = run(os.environ.get("FSEV", "") or FSEV, "trace", "--dry-run", check=False)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stderr and "attached in" in r.stderr


def test_print_bpf_shows_the_final_c_with_btf_free_tracepoint_rung():
    from fsev.testing.kernel_rig import FSEV

    r = run(FSEV, "trace", "--print-bpf", "--events", "err", check=False)
    assert r.returncode == 0, r.stderr
    assert "#define FSEV_EXT4_ERROR_TRACEPOINT 1" in r.stdout
    assert "#define FSEV_MOUNT_DROP_TRACEPOINT 0" in r.stdout  # info not asked for
    assert "TRACEPOINT_PROBE(ext4, ext4_error)" in r.stdout
