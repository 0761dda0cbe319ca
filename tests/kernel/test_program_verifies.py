"""Every rung's program compiles and passes this kernel's verifier, even the
kprobe ones this kernel cannot attach (loading needs no kprobe support).
Return probes (kretp_*) are BPF_PROG_TYPE_KPROBE programs too."""

from __future__ import annotations

import dataclasses

import pytest
from support.kernels import fake_kernel

from fsev.kernel.early import cflags
from fsev.kernel.records import RecordClass
from fsev.points.registry import BTF_MODULES, kprobe_attachments, plan_probes, source
from fsev.probes.program import ProgramConfig, bpf_dir
from fsev.session.trace import kernel_facts

pytestmark = pytest.mark.root

ALL = frozenset({RecordClass.INFO, RecordClass.WARN, RecordClass.ERR, RecordClass.THR})
KPROBE_FACTS = fake_kernel(
    release="any", kprobes=True,
    kprobe_functions=frozenset({"__ext4_error", "__ext4_error_inode", "__ext4_error_file", "__ext4_std_error",
                                "cleanup_mnt",
                                # health: read-only, ENOSPC, block I/O, writeback
                                "ext4_handle_error", "reconfigure_super", "security_inode_create",
                                "security_inode_mkdir", "blk_update_request", "__filemap_set_wb_err",
                                # btrfs errors and transaction aborts
                                "__btrfs_handle_fs_error", "__btrfs_abort_transaction",
                                "btrfs_dev_stat_inc_and_print",
                                # 7.0+: fserror_report (fsev/points/fserror.py)
                                "fserror_report"}),
    # the ENOSPC kprobe rung pairs its kprobes with the raw sys_exit; no
    # block/filemap tracepoints, so those points plan their kprobe rungs
    tracepoints=frozenset({"raw_syscalls:sys_exit"}),
    ext4_emergency_ro_bit=3,
    ext4_shutdown_bit=1,
    ext4_aborted_bit=1,
)
EVENT_POINT_KPROBES = {"kp_ext4_handle_error", "kretp_ext4_handle_error",
                       "kp_reconfigure_super", "kretp_reconfigure_super",
                  "kp_security_inode_create", "kp_security_inode_mkdir", "kp_blk_update_request",
                  "kp___filemap_set_wb_err", "kp___btrfs_handle_fs_error", "kp___btrfs_abort_transaction",
                  "kp_btrfs_dev_stat_inc_and_print", "kp_fserror_report"}


def _offsets(plan, cfg) -> dict[str, int]:
    """Offsets from this kernel's BTF. The made-up kernel reads ext4 flag bits
    this one may lack (EXT4_MF_FS_ABORTED went in 6.6): a bit number is not
    a memory offset, so any one will do for the verifier."""
    from fsev.kernel.btf import resolve
    from fsev.points.registry import required_offsets

    specs = required_offsets(plan, cfg)
    got = resolve(specs, modules=BTF_MODULES)
    missing = [s for s in specs if got[s] is None and not s.startswith("enum:")]
    assert not missing, missing
    return {s: (1 if got[s] is None else int(got[s])) for s in specs}


@pytest.mark.parametrize("watch_all", [True, False])
def test_kprobe_programs_pass_the_verifier(watch_all):
    from bcc import BPF

    # A module this kernel has without BTF (btrfs on 5.10) has no kprobe rung
    # to build: its structs cannot be read (the plan gives way to its log lines).
    no_btf = kernel_facts().modules_without_btf
    plan = plan_probes(dataclasses.replace(KPROBE_FACTS, modules_without_btf=no_btf))
    want = {n for n in EVENT_POINT_KPROBES if "btrfs" not in n} if "btrfs" in no_btf else EVENT_POINT_KPROBES
    cfg = ProgramConfig(classes=ALL, watch_all=watch_all)
    b = BPF(text=source(plan, cfg, _offsets(plan, cfg)).encode(), cflags=cflags(bpf_dir()))
    try:
        names = [prog for _, prog in kprobe_attachments(plan, cfg)]
        assert len(names) == 5 + len(want) and want <= set(names), names
        for name in names:
            fn = b.load_func(name.encode(), BPF.KPROBE)
            assert fn.fd >= 0
    finally:
        b.cleanup()
