"""The VM test's proof that its guest is what it claims to be: a stock
distribution kernel on which a bcc kprobe really attaches and fires.

Marked `kprobe`, so the VM runs it (vm/guest-init.sh: pytest -m kprobe). On a
kernel without kprobes (the CI host: shared/ENVIRONMENT.md) it skips; inside the
VM (FSEV_VM_GUEST=1) a missing kprobe is a failure, never a skip.
"""
import ctypes
import ctypes.util
import gzip
import os
import re
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.kprobe

IN_VM = os.environ.get("FSEV_VM_GUEST") == "1"
KPROBE_EVENTS = Path("/sys/kernel/tracing/kprobe_events")
# The kernel the project is built on: no kprobes, so never the one under test here.
HOST_KERNEL = re.compile(r"^6\.18\.|-fc-")


def _absent(reason):
    if IN_VM:
        pytest.fail(f"inside the VM: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def kprobe_kernel():
    if not KPROBE_EVENTS.exists():
        _absent(f"no {KPROBE_EVENTS}: this kernel has no kprobes (the VM test runs this on one that has)")


@pytest.fixture
def bcc_bpf():
    if os.geteuid() != 0:
        _absent("needs root to load BPF programs")
    try:
        from bcc import BPF
    except ImportError as e:
        _absent(f"bcc is not importable ({e}): Debian package python3-bpfcc")
    return BPF


def _kernel_config(release):
    boot = Path(f"/boot/config-{release}")
    if boot.exists():
        return boot.read_text()
    proc = Path("/proc/config.gz")
    return gzip.decompress(proc.read_bytes()).decode() if proc.exists() else ""


def test_kernel_is_a_distribution_kernel_with_kprobes():
    release = os.uname().release
    assert not HOST_KERNEL.search(release), f"{release} is the build host's kernel, not a stock one"
    if IN_VM:
        assert release.endswith("-cloud-amd64"), f"the VM should boot Debian's cloud kernel, got {release}"
    assert "CONFIG_KPROBES=y" in _kernel_config(release).splitlines(), f"CONFIG_KPROBES is not y for {release}"


def test_cleanup_mnt_is_traceable(bcc_bpf):
    # Listed in available_filter_functions (not inlined, not blacklisted): the
    # symbol fsev's mount-drop kprobe rung attaches to.
    assert bcc_bpf.get_kprobe_functions(rb"^cleanup_mnt$"), "cleanup_mnt is not traceable here"


HITS_BY_TGID = r"""
BPF_HASH(hits, u32, u64);

int on_cleanup_mnt(struct pt_regs *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    hits.increment(tgid);
    return 0;
}
"""


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def test_kprobe_on_cleanup_mnt_fires_on_tmpfs_umount(bcc_bpf):
    bpf = bcc_bpf(text=HITS_BY_TGID.encode())
    try:
        bpf.attach_kprobe(event=b"cleanup_mnt", fn_name=b"on_cleanup_mnt")
        assert bpf.num_open_kprobes() == 1
        hits = bpf[b"hits"]
        me = os.getpid()

        def ours():
            return {k.value: v.value for k, v in hits.items()}.get(me, 0)

        libc = _libc()
        with tempfile.TemporaryDirectory(prefix="fsev-smoke-") as where:
            target = where.encode()
            _check(libc.mount(b"tmpfs", target, b"tmpfs", 0, b"size=1m"), "mount tmpfs")
            try:
                assert ours() == 0, "cleanup_mnt counted for us before any umount"
            finally:
                # The umount's task work (__cleanup_mnt -> cleanup_mnt) runs in
                # this thread on the way back to user space: one hit for our tgid.
                _check(libc.umount2(target, 0), "umount tmpfs")
        assert ours() == 1, f"expected exactly one cleanup_mnt for pid {me}, saw {ours()}"
    finally:
        bpf.cleanup()
