"""fsev.kernel.early without a kernel: the cache's key, its safety checks,
and the rule that an early compile is used only for the very same text."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from fsev.kernel import early

INC = Path("/fsev/bpf")


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("FSEV_CACHE_DIR", str(tmp_path / "programs"))
    monkeypatch.delenv(early.ENV_SWITCH, raising=False)
    monkeypatch.setattr(early, "_privileged", lambda: True)  # root or not: the files are the test's own
    early.reset()
    yield
    running = early.running_compile()
    if running is not None:
        running.wait()
    early.reset()


def test_key_changes_with_each_input_and_only_with_them():
    base = early.key(["trace", "--json"], "6.18.0", "#1 SMP", "/venv/fsev")
    assert base == early.key(["trace", "--json"], "6.18.0", "#1 SMP", "/venv/fsev")
    others = {
        early.key(["trace", "--json", "-m", "/x"], "6.18.0", "#1 SMP", "/venv/fsev"),
        early.key(["trace", "--json"], "6.19.0", "#1 SMP", "/venv/fsev"),
        early.key(["trace", "--json"], "6.18.0", "#2 SMP", "/venv/fsev"),  # same release, another build
        early.key(["trace", "--json"], "6.18.0", "#1 SMP", "/other/fsev"),
        early.key(["trace", "--js", "on"], "6.18.0", "#1 SMP", "/venv/fsev"),  # argv joined without seams
    }
    assert base not in others and len(others) == 5


def test_written_text_reads_back_and_old_entries_are_pruned(tmp_path):
    d = tmp_path / "programs"
    early.write_cached("a", "int a;")
    assert early.read_cached("a") == "int a;"
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert oct((d / "a.bpf.c").stat().st_mode & 0o777) == "0o600"
    os.utime(d / "a.bpf.c", (999, 999))
    for i in range(5):
        early.write_cached(f"k{i}", f"text {i}", keep=3)
        os.utime(d / f"k{i}.bpf.c", (1000 + i, 1000 + i))
    early.write_cached("k5", "text 5", keep=3)
    assert sorted(p.name for p in d.iterdir()) == ["k3.bpf.c", "k4.bpf.c", "k5.bpf.c"]
    assert early.read_cached("missing") is None


def test_a_text_others_could_have_written_is_not_read(tmp_path):
    d = tmp_path / "programs"
    early.write_cached("a", "int a;")
    os.chmod(d / "a.bpf.c", 0o620)  # group-writable file
    assert early.read_cached("a") is None
    os.chmod(d / "a.bpf.c", 0o600)
    os.chmod(d, 0o777)  # a directory anybody may write to (and so swap files in)
    assert early.read_cached("a") is None
    os.chmod(d, 0o700)
    (d / "b.bpf.c").symlink_to(d / "a.bpf.c")  # never followed
    assert early.read_cached("b") is None
    assert early.read_cached("a") == "int a;"


class FakeCompiler:
    def __init__(self, fail: bool = False, delay: float = 0.05) -> None:
        self.calls: list[tuple[str, Path, str]] = []
        self.fail, self.delay = fail, delay
        self.discarded: list[object] = []
        self.discard_done = threading.Event()

    def compile(self, text: str, inc: Path) -> object:
        self.calls.append((text, inc, threading.current_thread().name))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("refused")
        return ("program", text)

    def discard(self, program: object) -> None:
        self.discarded.append(program)
        self.discard_done.set()


def _begin(fc: FakeCompiler, argv: list[str] | None = None, **kw) -> bool:
    return early.begin(argv or ["trace", "--json"], "/venv/fsev", lambda: INC, fc.compile, prepare=None, **kw)


def test_first_run_compiles_nothing_early_then_the_next_run_compiles_its_text_on_a_thread():
    fc = FakeCompiler()
    assert not _begin(fc)  # nothing cached yet
    assert early.take("TEXT", INC, fc.discard) is None
    early.compiled("TEXT")  # the session compiled it itself
    early.reset()
    assert _begin(fc)
    got = early.take("TEXT", INC, fc.discard)
    assert got == ("program", "TEXT")
    assert fc.calls == [("TEXT", INC, "fsev-early-compile")]
    assert early.take("TEXT", INC, fc.discard) is None  # taken once


def test_another_text_is_never_used_and_its_program_is_discarded():
    fc = FakeCompiler()
    _begin(fc)
    early.compiled("OLD")
    early.reset()
    assert _begin(fc)
    assert early.take("NEW", INC, fc.discard) is None  # the caller compiles NEW itself
    assert fc.discard_done.wait(5) and fc.discarded == [("program", "OLD")]
    early.compiled("NEW")
    early.reset()
    assert _begin(fc)
    assert early.take("NEW", INC, fc.discard) == ("program", "NEW")


def test_another_include_dir_is_not_the_same_program():
    fc = FakeCompiler()
    _begin(fc)
    early.compiled("TEXT")
    early.reset()
    _begin(fc)
    assert early.take("TEXT", Path("/elsewhere/bpf"), fc.discard) is None


def test_a_failed_early_compile_leaves_the_compile_to_the_session():
    fc = FakeCompiler(fail=True)
    _begin(fc)
    early.compiled("TEXT")
    early.reset()
    assert _begin(fc)
    assert early.take("TEXT", INC, fc.discard) is None and fc.discarded == []


def test_not_wanted_compiles_nothing():
    fc = FakeCompiler()
    _begin(fc)
    early.compiled("TEXT")
    early.reset()
    assert _begin(fc, wanted=lambda: False)
    assert early.take("TEXT", INC, fc.discard) is None and fc.calls == []


def test_switched_off_or_not_root_reads_and_writes_nothing(monkeypatch, tmp_path):
    fc = FakeCompiler()
    monkeypatch.setenv(early.ENV_SWITCH, "0")
    assert not _begin(fc)
    early.compiled("TEXT")
    assert not (tmp_path / "programs").exists()
    monkeypatch.delenv(early.ENV_SWITCH)
    monkeypatch.setattr(early, "_privileged", lambda: False)
    assert not _begin(fc)
    early.compiled("TEXT")
    assert not (tmp_path / "programs").exists()


def test_an_unchanged_text_is_not_written_again_but_counts_as_used(tmp_path):
    fc = FakeCompiler()
    _begin(fc)
    early.compiled("TEXT")
    path = tmp_path / "programs" / next(p.name for p in (tmp_path / "programs").iterdir())
    os.utime(path, (1000, 1000))
    inode = path.stat().st_ino
    early.reset()
    _begin(fc)
    early.take("TEXT", INC, fc.discard)
    early.compiled("TEXT")
    assert path.stat().st_ino == inode and path.stat().st_mtime > 1000  # touched, not replaced
    assert path.read_text() == "TEXT"


def test_the_console_script_begins_only_for_commands_that_compile(monkeypatch):
    from fsev.cli import entry

    begun: list[tuple[list[str], bool]] = []
    monkeypatch.setattr(early, "begin", lambda argv, pkg, inc, wanted=None: begun.append((list(argv), wanted)) or True)
    assert not entry.begin_early_compile([])
    assert not entry.begin_early_compile(["doctor"])
    assert not entry.begin_early_compile(["replay", "--json"])
    assert entry.begin_early_compile(["trace", "--json", "--standalone"])
    assert entry.begin_early_compile(["trace", "--json"])
    assert entry.begin_early_compile(["serve"])
    # --standalone and serve compile whatever runs; plain trace only if no service answers.
    assert [w is None for _, w in begun] == [True, False, True]


@pytest.mark.skipif(not early._can_renice(), reason="raising a thread's priority back needs CAP_SYS_NICE")
def test_the_commands_thread_yields_the_cpu_while_the_compile_runs_and_only_then():
    me = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, me)
    seen: list[int] = []
    go = threading.Event()

    class Watching(FakeCompiler):
        def compile(self, text: str, inc: Path) -> object:
            go.wait(5)  # begin() has returned: the command's thread yields by now
            seen.append(os.getpriority(os.PRIO_PROCESS, me))
            return super().compile(text, inc)

    fc = Watching(delay=0.0)
    _begin(fc)
    early.compiled("TEXT")
    early.reset()
    assert _begin(fc)
    go.set()
    assert early.take("TEXT", INC, fc.discard) == ("program", "TEXT")
    assert seen == [min(19, before + early.YIELD_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, me) == before  # back once the compile ended
