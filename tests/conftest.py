import os

import pytest

# trace, top and record use a running `fsev serve` when there is one: a
# service on this machine (or one a test left) must not take the place of the
# standalone sessions the tests mean to run. Tests of the service give their
# own socket to the processes they start.
os.environ["FSEV_SOCKET"] = "/nonexistent/fsev-tests-standalone.sock"


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
