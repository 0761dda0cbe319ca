"""The tests a VM guest runs, as pytest node ids, one per line on stdout:
every test marked `kprobe` (they need a kernel with kprobes, which the build
machines lack), and every test in the files vm/guest-tests lists (the
real-kernel tests whose outcome depends on the kernel, its BTF and its bcc).

Both sides use it: vm/run-tests.sh writes its output onto the guest's work
disk and the guest runs exactly those (vm/guest-init.sh); the host's
tests/vm/conftest.py expects each of them back from every guest, so a test a
guest never ran fails there.

    python vm/guest-selection.py        (the Python whose pytest collects)

FSEV_VM_GUEST_TESTS: paths to use instead of vm/guest-tests' (`all`: every
real-kernel test, `-m "kprobe or root"` under tests/; each costs the TCG
guests minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def collect(*args: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
           "--ignore=tests/vm", *args]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    # A module that fails to import lists no ids here; the guest reports it as
    # a collection error, which the host's test_no_other_guest_failures catches.
    return [l.strip() for l in r.stdout.splitlines() if "::" in l and not l.startswith((" ", "="))]


def listed() -> list[str]:
    env = os.environ.get("FSEV_VM_GUEST_TESTS", "").split()
    if env:
        return env
    lines = (REPO / "vm" / "guest-tests").read_text().splitlines()
    return [l.split("#", 1)[0].split()[0] for l in lines if l.split("#", 1)[0].strip()]


def selection() -> list[str]:
    ids = collect("-m", "kprobe", "tests")
    paths = listed()
    if paths == ["all"]:
        ids += collect("-m", "kprobe or root", "tests")
    else:
        ids += collect("-m", "not vm", *[p for p in paths if (REPO / p.split("::")[0]).exists()])
    return list(dict.fromkeys(ids))


if __name__ == "__main__":
    print("\n".join(selection()))
