import os

import pytest


def _kprobes() -> bool:
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type") or os.path.exists(
        "/sys/kernel/tracing/kprobe_events"
    )


def pytest_collection_modifyitems(config, items):
    """root: needs root and the real kernel; kprobe: needs a kernel with kprobes
    (this CI kernel has none: those tests run inside the VM test, tests/vm)."""
    skip_root = pytest.mark.skip(reason="needs root and the real kernel (run: sudo make test)")
    skip_kp = pytest.mark.skip(reason="kernel without kprobes: runs in the stock-kernel VM (tests/vm)")
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(skip_root)
        if "kprobe" in item.keywords and not _kprobes():
            item.add_marker(skip_kp)
