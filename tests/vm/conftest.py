"""Host side of the VM test: boots the stock-kernel VM once per session
(vm/run-tests.sh), reads back what the guest's pytest reported, and turns each
guest test into a host test (tests/vm/test_guest.py).

Which guest tests to expect comes from collecting `-m kprobe` here, on the host,
with the same tree the VM receives; so a test that the guest never ran fails
here instead of vanishing.

FSEV_VM=1 boots the VM even on a host that has kprobes (there the kprobe tests
already ran natively, so by default the VM is skipped); FSEV_VM=0 never boots it.
FSEV_VM_OUT keeps the run's files (console.log, results/) in a chosen directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO / "vm" / "run-tests.sh"
EXIT_CANNOT_RUN = 77
# vm/run-tests.sh stops the guest itself at FSEV_VM_TIMEOUT (default 20 min);
# this only catches the script itself hanging, image build included.
SCRIPT_LIMIT_S = int(os.environ.get("FSEV_VM_TIMEOUT", "1200")) + 1800 + 120
GUEST_SELECTION = ["-m", "kprobe", "--ignore=tests/vm", "tests"]

_RUN = pytest.StashKey["GuestRun | str"]()
_EXPECTED = pytest.StashKey["list[str]"]()


def junit_key(nodeid: str) -> tuple[str, str]:
    """The (classname, name) pytest's junitxml writes for a node id
    (_pytest.junitxml.mangle_test_address)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = names[0].replace("/", ".")
    if names[0].endswith(".py"):
        names[0] = names[0][: -len(".py")]
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


@dataclass(frozen=True)
class GuestCase:
    classname: str
    name: str
    outcome: str  # passed, failed, error, skipped
    message: str = ""
    text: str = ""

    @property
    def label(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name


_SEVERITY = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def parse_junit(path: Path) -> dict[tuple[str, str], GuestCase]:
    cases: dict[tuple[str, str], GuestCase] = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message, text = "passed", "", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message, text = child.get("message", ""), child.text or ""
                break
        case = GuestCase(tc.get("classname", ""), tc.get("name", ""), outcome, message, text)
        key = (case.classname, case.name)
        # A test failing in its call and erroring in teardown appears twice: keep the worse.
        if key not in cases or _SEVERITY[outcome] > _SEVERITY[cases[key].outcome]:
            cases[key] = case
    return cases


@dataclass
class GuestRun:
    out: Path
    facts: dict[str, str]
    timings: dict[str, str]
    install_rc: int | None
    pytest_rc: int | None
    cases: dict[tuple[str, str], GuestCase] = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        return self.facts.get("kernel_release", "?")

    def tail(self, name: str, lines: int = 60) -> str:
        p = self.out / name
        if not p.exists():
            return f"({name}: none)"
        return "".join(p.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def case(self, nodeid: str) -> GuestCase | None:
        return self.cases.get(junit_key(nodeid))

    def failures_besides(self, nodeids: list[str]) -> list[GuestCase]:
        """Guest failures that no expected test accounts for (collection errors, say)."""
        expected = {junit_key(n) for n in nodeids}
        return [c for k, c in self.cases.items() if k not in expected and c.outcome in ("failed", "error")]


def _key_values(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _int_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def load_run(out: Path) -> GuestRun:
    res = out / "results"
    junit = res / "junit.xml"
    return GuestRun(
        out=out,
        facts=_key_values(res / "facts"),
        timings=_key_values(out / "timings"),
        install_rc=_int_file(res / "install.rc"),
        pytest_rc=_int_file(res / "pytest.rc"),
        cases=parse_junit(junit) if junit.exists() else {},
    )


def _host_has_kprobes() -> bool:
    return os.path.exists("/sys/kernel/tracing/kprobe_events") or os.path.exists(
        "/sys/bus/event_source/devices/kprobe/type"
    )


def _why_not_run() -> str | None:
    choice = os.environ.get("FSEV_VM", "")
    if choice == "0":
        return "FSEV_VM=0"
    if choice != "1" and _host_has_kprobes():
        return "this kernel has kprobes: the kprobe tests ran natively (FSEV_VM=1 boots the VM anyway)"
    if os.geteuid() != 0:
        return "the VM test needs root (debootstrap, image build): sudo make test"
    return None


def _boot(out: Path) -> None:
    """Runs vm/run-tests.sh; returns when it exited 0, skips or fails otherwise."""
    log = out / "run.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", str(RUN_SCRIPT), str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=SCRIPT_LIMIT_S)
        except subprocess.TimeoutExpired:
            # Its own session: ends qemu too (the script's trap kills it by PID).
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            pytest.fail(f"vm/run-tests.sh still running after {SCRIPT_LIMIT_S} s; log {log}", pytrace=False)
    if rc == EXIT_CANNOT_RUN:
        reason = (out / "skip-reason").read_text().strip() if (out / "skip-reason").exists() else "see " + str(log)
        pytest.skip(f"stock-kernel VM cannot run here: {reason}")
    if rc != 0:
        error = (out / "error").read_text().strip() if (out / "error").exists() else f"exit {rc}"
        console = (out / "console.log")
        tail = "".join(console.read_text(errors="replace").splitlines(True)[-40:]) if console.exists() else ""
        pytest.fail(f"VM run failed: {error}\n--- run.log ---\n{log.read_text(errors='replace')[-3000:]}"
                    f"\n--- console (last lines) ---\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def guest_run(request, tmp_path_factory) -> GuestRun:
    # Session scope: pytest runs this once and replays its result, skip or
    # failure included, to every test. config.stash only feeds the summary.
    config = request.config
    why = _why_not_run()
    if why:
        config.stash[_RUN] = why
        pytest.skip(why)
    out = Path(os.environ["FSEV_VM_OUT"]) if os.environ.get("FSEV_VM_OUT") else tmp_path_factory.mktemp("vm")
    out.mkdir(parents=True, exist_ok=True)
    try:
        _boot(out)
    except pytest.skip.Exception as e:
        config.stash[_RUN] = str(e.msg)
        raise
    except pytest.fail.Exception:
        config.stash[_RUN] = f"the VM run failed (see the test errors); its files are in {out}"
        raise
    run = load_run(out)
    config.stash[_RUN] = run
    print(f"fsev VM: guest kernel {run.kernel} (host {os.uname().release}); files in {out}")
    return run


def expected_guest_tests(config) -> list[str]:
    """Node ids of the tests the guest should run: `-m kprobe`, collected here."""
    if _EXPECTED in config.stash:
        return config.stash[_EXPECTED]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *GUEST_SELECTION]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    # A module that fails to import lists no ids here; the guest reports it as
    # a collection error, which test_no_other_guest_failures catches.
    ids = [l.strip() for l in r.stdout.splitlines() if "::" in l and not l.startswith((" ", "="))]
    config.stash[_EXPECTED] = ids
    return ids


@pytest.fixture(scope="session")
def expected_ids(request) -> list[str]:
    return expected_guest_tests(request.config)


def pytest_generate_tests(metafunc):
    if "guest_test" in metafunc.fixturenames:
        metafunc.parametrize("guest_test", expected_guest_tests(metafunc.config))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What ran inside the guest, in every log, whatever pytest's verbosity."""
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    tr = terminalreporter
    tr.section("fsev stock-kernel VM")
    if isinstance(run, str):
        tr.write_line(f"not run: {run}")
        return
    t = run.timings
    tr.write_line(f"guest kernel {run.kernel} (host {os.uname().release}); kprobe_events: "
                  f"{run.facts.get('kprobe_events', '?')}; image {t.get('image_s', '?')} s, "
                  f"guest {t.get('boot_to_results_s', '?')} s, total {t.get('total_s', '?')} s")
    doctor = run.out / "results" / "doctor.txt"
    if doctor.exists():
        tr.write_line("`fsev doctor` in the guest:")
        for line in doctor.read_text(errors="replace").splitlines():
            tr.write_line(f"  {line}")
    expected = {junit_key(n): n for n in config.stash.get(_EXPECTED, [])}
    for key, case in run.cases.items():
        tr.write_line(f"  {case.outcome.upper():7} {expected.get(key, case.label)}  [in guest {run.kernel}]")
    if not run.cases:
        tr.write_line("  the guest reported no tests")
    tr.write_line(f"  console and results: {run.out}")
