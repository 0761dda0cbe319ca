"""The event points against the real kernel: read-only transitions, ENOSPC,
mount topology (the FUSE-backed block I/O scenario is test_block_io_fuse.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.topology_scenario import _rung_for, check_topology, topology_scenario

from fsev.testing.kernel_rig import FsevTrace, ext4, run, tmpfs

pytestmark = pytest.mark.root


def _of(evs: list[dict], typ: str) -> list[dict]:
    return [e for e in evs if e["type"] == typ]


# -- read-only ------------------------------------------------------------------

def test_corruption_with_errors_remount_ro_gives_an_error_then_a_linked_read_only_event():
    with ext4(options="errors=remount-ro", corrupt_dir=True) as fs:
        with FsevTrace(["--mount", fs.mount_point]) as t:
            t.wait_attached()
            reader = subprocess.Popen(["ls", os.path.join(fs.mount_point, "d")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader.wait()
            t.wait_for(lambda e: _of(e, "read_only"))
            time.sleep(0.5)  # room for a duplicate to show up
            assert t.stop() == 0
        with open("/proc/self/mountinfo") as f:
            assert "emergency_ro" in f.read()  # 6.12+: what the event must have seen
        assert os.statvfs(fs.mount_point).f_flag & os.ST_RDONLY == 0  # ...and statfs does not
    evs = [e for e in t.events() if e["type"] != "loss"]
    errors, ros = _of(evs, "fs_error"), _of(evs, "read_only")
    assert len(errors) == 1 and len(ros) == 1, evs
    err, ro = errors[0], ros[0]
    assert err["function"] == "htree_dirblock_to_tree" and err["pid"] == reader.pid
    assert err["errno"] == 74 and err["errno_name"] == "EBADMSG"  # EFSBADCRC: the block's checksum
    assert err["inode"] == 12  # the directory, the first inode mkfs leaves free
    assert err["errno_source"] in ("fanotify", "sysfs", "kprobe") and err["inode_source"] == err["errno_source"]
    assert ro["class"] == "err" and ro["read_only"] is True and ro["cause"] == "error"
    assert ro["flag"] == "emergency_ro" and ro["caused_by_seq"] == err["seq"] and ro["seq"] > err["seq"]
    assert ro["mount_point"] == fs.mount_point and ro["dev"] == fs.dev
    assert ro["rung"] == _rung_for(t, "read_only")


def test_admin_remount_read_only_and_back_is_info_not_err():
    with ext4() as fs:
        with FsevTrace(["--mount", fs.mount_point]) as t:
            t.wait_attached()
            remount = subprocess.Popen(["mount", "-o", "remount,ro", fs.mount_point])
            assert remount.wait() == 0
            t.wait_for(lambda e: _of(e, "read_only"))
            run("mount", "-o", "remount,rw", fs.mount_point)
            t.wait_for(lambda e: len(_of(e, "read_only")) >= 2)
            time.sleep(0.3)
            assert t.stop() == 0
    ros = _of(t.events(), "read_only")
    assert [(e["class"], e["read_only"], e["cause"]) for e in ros] == [
        ("info", True, "remount"), ("info", False, "remount")], ros
    assert ros[0]["mount_point"] == fs.mount_point and ros[0]["flag"] == "sb_rdonly"
    assert ros[0]["pid"] == remount.pid and ros[0]["comm"] == "mount"
    assert not [e for e in t.events() if e["class"] == "err"]


# -- ENOSPC -----------------------------------------------------------------------

STORM = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
failed = 0
for _ in range(int(sys.argv[2])):
    try:
        os.write(fd, b"x")
    except OSError as e:
        assert e.errno == 28, e
        failed += 1
print(failed)
"""


def test_dd_until_full_gives_one_warn_and_a_storm_gives_bounded_events_with_an_exact_count():
    with tmpfs(size="64k") as mp:
        with FsevTrace(["--mount", mp, "--events", "warn"]) as t:
            t.wait_attached()
            dd = subprocess.Popen(["dd", "if=/dev/zero", f"of={mp}/fill", "bs=4096", "count=64"],
                                  stderr=subprocess.DEVNULL)
            assert dd.wait() != 0  # it ran out of space
            t.wait_for(lambda e: len(e) >= 1)
            time.sleep(1.3)  # a quiet second: the next failure starts a new storm
            first = [e for e in t.events() if e["type"] == "enospc"]
            start = time.monotonic()
            storm = subprocess.run([sys.executable, "-c", STORM, f"{mp}/fill", "10000"], capture_output=True,
                                   text=True, check=True)
            took = time.monotonic() - start
            assert storm.stdout.strip() == "10000"
            t.wait_for(lambda e: sum(x.get("count", 0) for x in e) >= 10001, timeout=5)
            assert t.stop() == 0
    assert len(first) == 1, first
    e = first[0]
    assert (e["class"], e["type"], e["pid"], e["comm"], e["call"], e["errno"]) == ("warn", "enospc", dd.pid, "dd",
                                                                                  "write", 28)
    assert e["mount_point"] == mp and e["count"] == 1 and e["space"] == "data"
    storm_evs = [x for x in t.events() if x["type"] == "enospc"][1:]
    assert sum(x["count"] for x in storm_evs) == 10000  # exact
    assert len(storm_evs) <= 2 + int(took) + 2  # one event, then one count a second
    assert storm_evs[0]["comm"] == "python3" or storm_evs[0]["comm"].startswith("python")
    assert storm_evs[-1]["storm"] is True and storm_evs[-1]["count_total"] == 10001


def test_mkdir_on_a_full_tmpfs_names_the_mount_from_the_path():
    with tmpfs(size="64k") as mp:
        run("mount", "-o", "remount,nr_inodes=2", mp)  # the root and one more
        with FsevTrace(["--mount", mp, "--events", "warn"]) as t:
            t.wait_attached()
            os.mkdir(os.path.join(mp, "a"))
            with pytest.raises(OSError) as got:
                os.mkdir(os.path.join(mp, "b"))
            assert got.value.errno == 28
            t.wait_for(lambda e: len(e) >= 1)
            assert t.stop() == 0
    (e,) = [x for x in t.events() if x["type"] == "enospc"]
    assert e["call"] in ("mkdir", "mkdirat") and e["space"] == "metadata"
    assert e["path"] == os.path.join(mp, "b") and e["mount_point"] == mp and e["pid"] == os.getpid()


# -- mount topology ------------------------------------------------------------------





def test_mount_bind_move_remount_umount_and_namespace_teardown():
    evs, paths, rung = topology_scenario()
    inside = check_topology(evs, paths, rung)
    if rung != "fanotify":
        pytest.skip(f"mount_topology rung {rung}: namespace teardown is seen on the fanotify rung (6.15+)")
    ns_dir = paths[3]
    assert [(e["type"], e["mount_point"]) for e in inside] == [("mount", ns_dir), ("umount", ns_dir)], inside
    assert inside[1]["cause"] == "namespace_teardown" and inside[1]["fs_type"] == "tmpfs"
    assert inside[1]["class"] == "info"
    if inside[1]["rung"] == "fanotify":  # fsev marked the namespace in time (the rule)
        # the same mount: its unique id, when the mount event had fanotify's attach too
        assert inside[0].get("mnt_id_unique", inside[1]["mnt_id_unique"]) == inside[1]["mnt_id_unique"]
    else:  # it was gone before fsev could mark it (a busy machine): no task left in it
        assert inside[1]["rung"] == "polled"
