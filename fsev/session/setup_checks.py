"""Pre-flight checks shared by `trace`, `top` and `doctor`: BTF, tracefs, headers, bcc.

Each check returns a Check; `require()` turns a failed one into a FsevError
with a fix hint, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from fsev.errors import FsevError


def btf_path() -> str:
    return os.environ.get("FSEV_BTF_PATH", "/sys/kernel/btf/vmlinux")


def tracefs_path() -> str:
    return os.environ.get("FSEV_TRACEFS", "/sys/kernel/tracing")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_btf() -> Check:
    p = btf_path()
    if os.path.exists(p):
        return Check("btf", True, p)
    return Check("btf", False, f"kernel BTF not found at {p}",
                 "fsev reads kernel structs only at BTF offsets: use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_tracefs(mount_if_missing: bool = False) -> Check:
    p = tracefs_path()
    if os.path.isdir(os.path.join(p, "events")):
        return Check("tracefs", True, p)
    if mount_if_missing:
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", p], capture_output=True, text=True)
        if r.returncode == 0 and os.path.isdir(os.path.join(p, "events")):
            return Check("tracefs", True, f"{p} (mounted by fsev)")
        why = " ".join((r.stderr or "mount failed").split())
        return Check("tracefs", False, f"tracefs is not mounted at {p} and mounting it failed: {why}",
                     f"mount it: mount -t tracefs nodev {p}")
    return Check("tracefs", False, f"tracefs is not mounted at {p}", f"mount -t tracefs nodev {p}")


def check_headers() -> Check:
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if not os.path.exists(build):
        return Check("headers", False, f"no kernel headers at {build} (bcc needs a headers tree)",
                     "sudo make install (installs matching headers or Debian's newest as a stand-in)")
    real = os.path.realpath(build)
    kind = "matching" if release in real else "stand-in"
    note = "" if kind == "matching" else " (safe: fsev takes no struct layout from headers, only BTF offsets)"
    return Check("headers", True, f"{kind}: {build} -> {real}{note}")


def check_bcc() -> Check:
    from fsev.kernel.loader import bcc_available

    ok, why = bcc_available()
    if ok:
        import bcc

        return Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} from {os.path.dirname(bcc.__file__)}")
    return Check("bcc", False, f"bcc is not importable: {why}",
                 "install Debian's python3-bpfcc and use a venv made with --system-site-packages (sudo make install)")


def require(*checks: Check) -> None:
    for c in checks:
        if not c.ok:
            raise FsevError(f"{c.detail}; fix: {c.fix}" if c.fix else c.detail)
