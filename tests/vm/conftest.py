"""Host side of the VM test: boots each stock-kernel guest once per session
(vm/run-tests.sh OUT GUEST: Debian 11, 12 and 13, vm/guests), reads back what
its pytest reported, and turns each guest test into a host test per guest
(tests/vm/test_guest.py: test_in_guest[debian11-<node id>], ...).

Which guest tests to expect comes from vm/guest-selection.py, run here with the
same tree the guests receive (and handed to them as their list); so a test that
a guest never ran fails here instead of vanishing.

FSEV_VM=1 boots the guests even on a host that has kprobes (there the kprobe
tests already ran natively, so by default they are skipped); FSEV_VM=0 never
boots them. FSEV_VM_GUESTS picks guests ("debian11 debian13"); FSEV_VM_JOBS
boots that many at a time (default: all; on 2 cores three TCG guests at once
took 18 min where one after another would take about 25-30, docs/vm.md; each
needs 2 GiB). FSEV_VM_OUT keeps the runs' files
(FSEV_VM_OUT/<guest>/console.log, results/) in a chosen directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO / "vm" / "run-tests.sh"
SELECTION_SCRIPT = REPO / "vm" / "guest-selection.py"
EXIT_CANNOT_RUN = 77
# vm/run-tests.sh stops the guest itself at FSEV_VM_TIMEOUT (default 40 min);
# this only catches the script itself hanging, image build included.
SCRIPT_LIMIT_S = int(os.environ.get("FSEV_VM_TIMEOUT", "2400")) + 1800 + 120


def all_guests() -> list[tuple[str, str]]:
    """(name, what its kernel is for) of each guest in vm/guests."""
    out = []
    for line in (REPO / "vm" / "guests").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _suite, *what = line.split()
            out.append((name, " ".join(what)))
    return out


def chosen_guests() -> list[str]:
    names = [n for n, _ in all_guests()]
    want = os.environ.get("FSEV_VM_GUESTS", "").split()
    unknown = [w for w in want if w not in names]
    if unknown:
        raise pytest.UsageError(f"FSEV_VM_GUESTS: unknown guest {' '.join(unknown)} (vm/guests has {' '.join(names)})")
    return want or names


@dataclass(frozen=True)
class NotRun:
    """A guest that did not run: skipped (the machine cannot) or failed (the run broke)."""

    skipped: bool
    message: str


_RUNS = pytest.StashKey["dict[str, GuestRun | NotRun]"]()
_WHY_NOT = pytest.StashKey[str]()
_EXPECTED = pytest.StashKey["list[str]"]()
_LOCK = threading.Lock()


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
    guest: str
    out: Path
    facts: dict[str, str]
    timings: dict[str, str]
    install_rc: int | None
    pytest_rc: int | None
    cases: dict[tuple[str, str], GuestCase] = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        return self.facts.get("kernel_release", "?")

    @property
    def where(self) -> str:
        return f"{self.guest} ({self.kernel})"

    def describe(self) -> str:
        f, t = self.facts, self.timings
        return (f"{self.guest}: uname -r {self.kernel}, Python {f.get('python', '?')}, bcc {f.get('bcc', '?')} "
                f"(python3-bpfcc {f.get('python3_bpfcc_installed', '?')}); image {t.get('image_s', '?')} s, "
                f"guest {t.get('boot_to_results_s', '?')} s (install done at {f.get('installed_s', '?')} s, "
                f"tests from {f.get('pytest_started_s', '?')} s)")

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


def load_run(out: Path, guest: str = "debian12") -> GuestRun:
    res = out / "results"
    junit = res / "junit.xml"
    return GuestRun(
        guest=guest,
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


def _boot(out: Path, guest: str, selection: Path) -> GuestRun | NotRun:
    """Runs vm/run-tests.sh for one guest (in a thread: returns, never raises)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    env = dict(os.environ, FSEV_VM_SELECTION=str(selection), FSEV_VENV=os.path.dirname(os.path.dirname(sys.executable)))
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", str(RUN_SCRIPT), str(out), guest], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=SCRIPT_LIMIT_S)
        except subprocess.TimeoutExpired:
            # Its own session: ends qemu too (the script's trap kills it by PID).
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            return NotRun(False, f"vm/run-tests.sh {guest} still running after {SCRIPT_LIMIT_S} s; log {log}")
    if rc == EXIT_CANNOT_RUN:
        reason = (out / "skip-reason").read_text().strip() if (out / "skip-reason").exists() else "see " + str(log)
        return NotRun(True, f"stock-kernel VM {guest} cannot run here: {reason}")
    if rc != 0:
        error = (out / "error").read_text().strip() if (out / "error").exists() else f"exit {rc}"
        console = (out / "console.log")
        tail = "".join(console.read_text(errors="replace").splitlines(True)[-40:]) if console.exists() else ""
        return NotRun(False, f"VM run {guest} failed: {error}\n--- run.log ---\n"
                      f"{log.read_text(errors='replace')[-3000:]}\n--- console (last lines) ---\n{tail}")
    return load_run(out, guest)


def _all_runs(config, tmp_path_factory) -> dict[str, GuestRun | NotRun]:
    """Boots every chosen guest once per session (FSEV_VM_JOBS at a time)."""
    with _LOCK:
        if _RUNS in config.stash:
            return config.stash[_RUNS]
        base = Path(os.environ["FSEV_VM_OUT"]) if os.environ.get("FSEV_VM_OUT") else tmp_path_factory.mktemp("vm")
        base.mkdir(parents=True, exist_ok=True)
        selection = base / "selection"
        selection.write_text("\n".join(expected_guest_tests(config)) + "\n")
        guests = chosen_guests()
        jobs = max(1, int(os.environ.get("FSEV_VM_JOBS", str(len(guests)))))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {g: pool.submit(_boot, base / g, g, selection) for g in guests}
            runs = {g: f.result() for g, f in futures.items()}
        config.stash[_RUNS] = runs
        for r in runs.values():
            print(f"fsev VM: {r.describe() if isinstance(r, GuestRun) else r.message.splitlines()[0]}")
        return runs


@pytest.fixture(scope="session")
def guest_runs(request, tmp_path_factory) -> dict[str, GuestRun | NotRun]:
    config = request.config
    why = _why_not_run()
    if why:
        config.stash[_WHY_NOT] = why
        pytest.skip(why)
    return _all_runs(config, tmp_path_factory)


@pytest.fixture
def guest_run(guest_runs, guest) -> GuestRun:
    """The run of this test's guest; its failure to run fails (or skips) the test."""
    run = guest_runs[guest]
    if isinstance(run, NotRun):
        if run.skipped:
            pytest.skip(run.message)
        pytest.fail(run.message, pytrace=False)
    return run


def expected_guest_tests(config) -> list[str]:
    """Node ids of the tests every guest should run (vm/guest-selection.py, collected here)."""
    if _EXPECTED in config.stash:
        return config.stash[_EXPECTED]
    r = subprocess.run([sys.executable, str(SELECTION_SCRIPT)], cwd=REPO, capture_output=True, text=True,
                       timeout=1200)
    ids = [l.strip() for l in r.stdout.splitlines() if l.strip()]
    config.stash[_EXPECTED] = ids
    return ids


@pytest.fixture(scope="session")
def expected_ids(request) -> list[str]:
    return expected_guest_tests(request.config)


def pytest_generate_tests(metafunc):
    guests = chosen_guests()
    if "guest_test" in metafunc.fixturenames:
        ids = expected_guest_tests(metafunc.config)
        metafunc.parametrize(["guest", "guest_test"], [(g, n) for g in guests for n in ids],
                             ids=[f"{g}-{n}" for g in guests for n in ids])
    elif "ladder_point" in metafunc.fixturenames:  # tests/vm/test_ladder.py: a row per guest and point
        table = metafunc.module.LADDER
        pairs = [(g, p) for g in guests for p in table.get(g, {})]
        metafunc.parametrize(["guest", "ladder_point"], pairs, ids=[f"{g}-{p}" for g, p in pairs])
    elif "guest" in metafunc.fixturenames:
        metafunc.parametrize("guest", guests)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What ran inside each guest, in every log, whatever pytest's verbosity."""
    why = config.stash.get(_WHY_NOT, None)
    runs = config.stash.get(_RUNS, None)
    if why is None and runs is None:
        return
    tr = terminalreporter
    tr.section("fsev stock-kernel VM")
    if runs is None:
        tr.write_line(f"not run: {why}")
        return
    expected = {junit_key(n): n for n in config.stash.get(_EXPECTED, [])}
    tr.write_line(f"host {os.uname().release}; guests: {', '.join(runs)}")
    for guest, run in runs.items():
        if isinstance(run, NotRun):
            tr.write_line(f"{guest}: {'skipped' if run.skipped else 'FAILED'}: {run.message.splitlines()[0]}")
            continue
        tr.write_line(run.describe())
        doctor = run.out / "results" / "doctor.txt"
        if doctor.exists():
            tr.write_line(f"  `fsev doctor` in {guest}:")
            for line in doctor.read_text(errors="replace").splitlines():
                tr.write_line(f"    {line}")
        counts: dict[str, int] = {}
        for key, case in run.cases.items():
            counts[case.outcome] = counts.get(case.outcome, 0) + 1
            tr.write_line(f"  {case.outcome.upper():7} {guest}  {expected.get(key, case.label)}"
                          + (f"  ({case.message.splitlines()[0][:160]})" if case.message and case.outcome != "passed"
                             else ""))
        if not run.cases:
            tr.write_line(f"  {guest} reported no tests")
        tr.write_line(f"  {guest}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
                      + f"; console and results: {run.out}")
