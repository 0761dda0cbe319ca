"""The real-kernel tests (vm/guest-selection.py: every `kprobe` test and the
files vm/guest-tests lists), run inside each stock Debian kernel under qemu
(vm/run-tests.sh: Debian 11's 5.10, 12's 6.1, 13's 6.12), reported here one
host test per guest test: test_in_guest[<guest>-<node id>].

Skipped, with the reason, when the VM cannot run on this machine (not root, no
qemu or debootstrap, no network to build the image); never passed without the
guest having run and passed the test.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vm


def test_guest_kernel_is_stock_with_kprobes(guest_run):
    f = guest_run.facts
    print(guest_run.describe())
    assert guest_run.kernel not in ("?", os.uname().release), (
        f"guest kernel {guest_run.kernel!r} is not a separate kernel")
    assert f.get("guest") == guest_run.guest, f"booted image says guest {f.get('guest')!r}, not {guest_run.guest}"
    assert f.get("kprobe_events") == "yes", f"no kprobe_events in the guest: {f}"
    assert f.get("config_kprobes") == "y", f"guest kernel config has no CONFIG_KPROBES=y: {f}"
    assert f.get("headers") == "yes", f"no matching kernel headers in the guest: {f}"


def test_guest_installed_fsev_as_a_user_does_and_ran_tests(guest_run):
    f = guest_run.facts
    assert guest_run.install_rc == 0, "make install failed in the guest:\n" + guest_run.tail("results/install.log")
    # The README's command did the install: bcc came from apt inside the guest,
    # the venv from scripts/install.sh (the image holds neither).
    assert f.get("python3_bpfcc") == "absent", f"the image already had python3-bpfcc: {f}"
    assert f.get("python3_bpfcc_installed", "absent") != "absent", f"make install did not install bcc: {f}"
    assert "creating venv" in guest_run.tail("results/install.log", 200), guest_run.tail("results/install.log")
    # pytest's 1 is "some tests failed": each is reported by its own host test.
    assert guest_run.pytest_rc in (0, 1), (
        f"guest pytest exited {guest_run.pytest_rc}:\n" + guest_run.tail("results/pytest.log"))
    ran = [c for c in guest_run.cases.values() if c.outcome in ("passed", "failed", "error")]
    assert ran, "the guest ran no test:\n" + guest_run.tail("results/pytest.log")


def test_in_guest(guest_run, guest_test):
    case = guest_run.case(guest_test)
    if case is None:
        pytest.fail(f"{guest_test} was collected here but not run in {guest_run.where}:\n"
                    + guest_run.tail("results/pytest.log", 30), pytrace=False)
    if case.outcome == "skipped":
        pytest.skip(f"skipped in {guest_run.where}: {case.message}")
    if case.outcome != "passed":
        pytest.fail(f"{case.outcome} in {guest_run.where}: {case.message}\n{case.text}", pytrace=False)


def test_no_other_guest_failures(guest_run, expected_ids):
    others = guest_run.failures_besides(expected_ids)
    assert not others, "\n\n".join(f"{c.label}: {c.outcome}: {c.message}\n{c.text}" for c in others)
