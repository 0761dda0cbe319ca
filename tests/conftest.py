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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Inside a VM guest (FSEV_VM_GUEST=1) a skip is a failure unless its
    reason is a lack that guest's kernel really has (tests/support/guests.py):
    there the kernel is known, so any other skip hides a missing feature."""
    outcome = yield
    rep = outcome.get_result()
    from support.guests import IN_GUEST, RELEASE, skip_allowed

    if not (IN_GUEST and rep.skipped) or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    if skip_allowed(reason):
        return
    rep.outcome = "failed"
    rep.longrepr = (f"skipped inside the VM guest {RELEASE or '?'}, whose kernel should have what this test "
                    f"needs: {reason} (tests/support/guests.py lists the skips each guest may take)")


def pytest_runtest_logreport(report):
    """Inside a VM guest, a failure's text goes to the serial console at once:
    a guest stopped at its time limit writes no junit and no summary."""
    from support.guests import IN_GUEST

    if IN_GUEST and report.failed:
        import sys

        sys.stderr.write(f"\n--- fsev-vm failure: {report.nodeid} ({report.when}) ---\n"
                         f"{report.longreprtext[-4000:]}\n--- end ---\n")
