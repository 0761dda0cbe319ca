"""BTF-typed raw tracepoint programs (tp_btf), which bcc cannot load.

bcc compiles the C and hands over a function's bytecode, its map references
already turned into file descriptors; this module loads that bytecode as
BPF_PROG_TYPE_TRACING with expected_attach_type BPF_TRACE_RAW_TP (what libbpf
calls SEC("tp_btf/...")) and attaches it with BPF_RAW_TRACEPOINT_OPEN, through
bpf(2). The verifier then knows each tracepoint argument's type from vmlinux
BTF, so the program may load through those pointers directly: one instruction
instead of a bpf_probe_read_kernel call (bpf/thr_tmpfs.bpf.c uses it on the
per-page tmpfs path). Needs Linux 5.5+ and vmlinux BTF; callers fall back to a
plain raw tracepoint when loading fails.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

from fsev.kernel.libc import libc

# bpf(2) by architecture (include/uapi/asm-generic/unistd.h and arch tables).
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "ppc64": 361, "s390x": 351}
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23

# union bpf_attr for BPF_PROG_LOAD, through attach_btf_id (include/uapi/linux/bpf.h):
# prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
# prog_flags, prog_name[16], prog_ifindex, expected_attach_type, prog_btf_fd,
# func_info_rec_size, func_info, func_info_cnt, line_info_rec_size, line_info,
# line_info_cnt, attach_btf_id. Zeros after it: the kernel requires that of
# any bytes it does not know, so one size fits older and newer kernels.
_PROG_LOAD = struct.Struct("<IIQQIIQII16sIIIIQIIQII")
_ATTR_SIZE = 128
_LOG_SIZE = 1 << 16

_libc = libc()


class TpBtfError(Exception):
    """Why a tp_btf program did not load or attach: one line for a person."""


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise TpBtfError(f"bpf(2) number unknown on {platform.machine()}")
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _load(insns: bytes, name: str, btf_id: int, license: bytes, log_level: int) -> tuple[int, str]:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(_LOG_SIZE if log_level else 1)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _PROG_LOAD.pack_into(
        attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
        log_level, len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0, 0, 0,
        name.encode()[:15], 0, BPF_TRACE_RAW_TP, 0, 0, 0, 0, 0, 0, 0, btf_id,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr), ""
    except OSError as e:
        lines = log.value.decode(errors="replace").strip().splitlines()
        last = [l for l in lines if not l.startswith(("processed ", "verification time", "stack depth"))][-1:]
        return -1, f"{e.strerror}" + (f" ({last[0]})" if last else "")


def load(insns: bytes, name: str, btf_id: int, license: bytes = b"GPL") -> int:
    """Load insns as a tp_btf program for the tracepoint whose btf_trace_ typedef
    has id btf_id in vmlinux BTF. Returns its fd; TpBtfError says why not (with
    the verifier's last line)."""
    if len(insns) % 8 or not insns:
        raise TpBtfError(f"{name}: {len(insns)} bytes of bytecode")
    fd, _ = _load(insns, name, btf_id, license, 0)
    if fd >= 0:
        return fd
    _, why = _load(insns, name, btf_id, license, 1)  # again, for the verifier's log
    raise TpBtfError(f"{name}: {why}")


def attach(prog_fd: int) -> int:
    """Attach a loaded tp_btf program (to the tracepoint it was loaded for).
    Returns the link fd: closing it (and the program's) detaches."""
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<QI", attr, 0, 0, prog_fd)
    try:
        return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    except OSError as e:
        raise TpBtfError(f"attach: {e.strerror}") from None
