"""The compile begun before the program text is known (start-up, issue 17).

bcc's compile of fsev's program is most of the time from `fsev trace` to
"attached" (0.40-0.45 s here), and it used to start last: after typer had
imported and parsed the command line, after the session's modules had
imported and the plan, the mount table and the BTF offsets were read (0.19 s).
None of that needs the compile's result, and clang runs in C with the GIL
released, so the two can overlap on two cores, if the text is known first.

It is not known before that work is done; but a command line run again
builds the same text again. So each compile leaves its text in a small cache
keyed by the command line, the kernel and the installed package (`key()`),
and the next run of the same command starts compiling that text on a thread
as it begins (`begin()`). When the session has built its text it takes the
compiled program only if the two texts are the same, byte for byte (`take()`):
a cache entry can make start-up faster, never different. A text that differs
(a module loaded since, another mount table, a new fsev) is thrown away,
detached on a thread of its own, and the session compiles its own text as
before; the cache then holds the new text.

The text is compiled and loaded as root, so the cache is root's alone: a
directory and files owned by the user running fsev, written by nobody else
(checked before each read), never followed through a symlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

# Where the texts wait between runs (FSEV_CACHE_DIR moves it: tests).
CACHE_DIR = "/var/cache/fsev/programs"
# Set to 0 to compile only once the text is built (no cache read or written).
ENV_SWITCH = "FSEV_EARLY_COMPILE"
KEEP = 16  # texts kept (one per command line), the most recently used
SUFFIX = ".bpf.c"


def cache_dir() -> Path:
    return Path(os.environ.get("FSEV_CACHE_DIR") or CACHE_DIR)


def _privileged() -> bool:
    return os.geteuid() == 0


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def key(argv: Sequence[str], release: str, kernel_version: str, package_dir: str) -> str:
    """The cache key of a run: its command line, the kernel (release and
    build, as uname gives them) and where fsev is installed (another install,
    another C). A key only finds a text to try: take() decides."""
    h = hashlib.sha256()
    for part in (release, kernel_version, package_dir, *argv):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:32]


def _safe(st: os.stat_result, want_dir: bool) -> bool:
    """Ours, of the right kind, written by nobody else."""
    kind = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return kind and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_cached(k: str, directory: Path | None = None) -> str | None:
    """The text last compiled under key k, or None (none, or not safe to use)."""
    d = directory or cache_dir()
    try:
        if not _safe(os.lstat(d), want_dir=True):
            return None
        fd = os.open(d / f"{k}{SUFFIX}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _safe(os.fstat(fd), want_dir=False):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def write_cached(k: str, text: str, directory: Path | None = None, keep: int = KEEP) -> None:
    """Keep text under key k (atomically), and only the `keep` newest texts.
    Best effort: a cache that cannot be written costs the next start its head start only."""
    d = directory or cache_dir()
    with contextlib.suppress(OSError):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _safe(os.lstat(d), want_dir=True):
            return
        tmp = d / f".{k}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(tmp, d / f"{k}{SUFFIX}")
        entries = sorted((p for p in d.iterdir() if p.name.endswith(SUFFIX)),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()


Compile = Callable[[str, Path], Any]  # (text, include dir) -> the program (a bcc BPF)

# bcc 0.26 is not safe to enter from two threads at once: two compiles on two
# threads crashed the process (a segfault, measured). The early compile runs
# on a thread, so every compile and every module teardown holds this.
BCC_LOCK = threading.Lock()


# -g0: no debug info, so no BTF of fsev's own program. bcc asks clang for it
# (-g) to give the kernel its maps' and functions' types, which only bpftool
# and verifier logs show; fsev reads its maps by its own layouts (one place:
# fsev/kernel/records.py). Without it the compile of fsev's program takes
# 17 ms less here (median of 10; docs/architecture.md, *The compile itself*).
CFLAGS = ("-Wno-unused-function", "-g0")


def cflags(include_dir: Path) -> list[str]:
    """The flags of every compile of fsev's program (the bench's floor too)."""
    return [f"-I{include_dir}", *CFLAGS]


def compile_program(text: str, include_dir: Path) -> Any:
    """bcc's compile and load of the whole text (tracepoint programs attach as
    it loads them). Here and not in fsev.kernel.loader, the module that does
    everything else with bcc, so that the early compile's thread imports bcc
    alone (25 ms) before it compiles, not the loader and the record mirror too
    (40 ms more)."""
    from bcc import BPF

    with BCC_LOCK:
        return BPF(text=text.encode(), cflags=cflags(include_dir))


def _import_bcc() -> None:
    import bcc  # noqa: F401


# How long begin() lets the compile's thread run alone: its Python part (the
# import of bcc, 25 ms) is on the way to the compile, and sharing the GIL with
# the command's own imports (typer's) made it take twice as long.
# The command loses nothing by waiting: it waits for the compile later anyway.
HEAD_START_S = 0.25


# While the compile runs, the command's own thread runs at this much lower a
# priority (nice): it has the CPU to spare (it waits for the compile later
# anyway), and when both of this machine's cores were busy with other work it
# took CPU from the compile, the one thing start-up waits for (the threads of a
# process share one autogroup's share). With an idle core it changes nothing.
YIELD_NICE = 5
_CAP_SYS_NICE = 23


def _can_renice() -> bool:
    """Whether a thread's priority can be raised back (CAP_SYS_NICE)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class _Yield:
    """The command's thread at a lower priority until undo() (from any thread)."""

    def __init__(self) -> None:
        self.tid = threading.get_native_id()
        self.was: int | None = None
        if not _can_renice():
            return
        try:
            self.was = os.getpriority(os.PRIO_PROCESS, self.tid)
            os.setpriority(os.PRIO_PROCESS, self.tid, min(19, self.was + YIELD_NICE))
        except OSError:
            self.was = None

    def undo(self) -> None:
        was, self.was = self.was, None
        if was is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.tid, was)


class EarlyCompile:
    """One compile of a text on a thread. include_dir is asked for there too:
    what it imports need not hold up the command's own thread."""

    def __init__(self, text: str, include_dir: Callable[[], Path], compile: Compile,
                 wanted: Callable[[], bool] | None = None, prepare: Callable[[], None] | None = None) -> None:
        self.text = text
        self._wanted = wanted
        self._prepare = prepare
        self.compiling = threading.Event()  # set once only the compile (C, GIL released) is left
        self.include_dir: Path | None = None
        self._include_dir = include_dir
        self.program: Any = None
        self.error: BaseException | None = None
        self._compile = compile
        self._yield: _Yield | None = None
        self._ended = False
        self._yield_lock = threading.Lock()
        # A daemon: a command that fails before it needs the program exits
        # without waiting for clang; the kernel closes what it had attached.
        self._thread = threading.Thread(target=self._run, name="fsev-early-compile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._wanted is not None and not self._wanted():
                return
            self.include_dir = self._include_dir()
            if self._prepare is not None:
                self._prepare()
            self.compiling.set()
            self.program = self._compile(self.text, self.include_dir)
        except BaseException as e:  # noqa: B036  # the session compiles again and reports it
            self.error = e
        finally:
            self.compiling.set()
            with self._yield_lock:
                self._ended = True
                if self._yield is not None:
                    self._yield.undo()

    def yield_cpu(self) -> None:
        """Lower the calling thread's priority until this compile ends."""
        with self._yield_lock:
            if not self._ended:
                self._yield = _Yield()

    def wait(self) -> None:
        self._thread.join()


class Slot:
    """The process's start-up state: the key of its command line and the
    compile begun for it (cli/entry.py sets it up; nothing else does)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.cached: str | None = None
        self.early: EarlyCompile | None = None
        self.lock = threading.Lock()


_SLOT = Slot()


def begin(argv: Sequence[str], package_dir: str, include_dir: Callable[[], Path],
          compile: Compile = compile_program, wanted: Callable[[], bool] | None = None,
          prepare: Callable[[], None] | None = _import_bcc) -> bool:
    """At the start of a command: remember its key, and if a text was compiled
    under it before, start compiling that text now. True if a compile began.
    wanted: asked first on the thread; False leaves the compile undone.
    Root only: nobody else can load the program, and the cache is root's."""
    if not enabled() or not _privileged():
        return False
    u = os.uname()
    k = key(argv, u.release, u.version, package_dir)
    text = read_cached(k)
    with _SLOT.lock:
        _SLOT.key, _SLOT.cached = k, text
        if text is None:
            return False
        ec = _SLOT.early = EarlyCompile(text, include_dir, compile, wanted, prepare)
    ec.compiling.wait(HEAD_START_S)
    if os.environ.get("FSEV_EARLY_YIELD", "1") != "0":
        ec.yield_cpu()
    return True


def take(text: str, include_dir: Path, discard: Callable[[Any], None]) -> Any:
    """The program compiled early, if its text is this one (waits for the
    compile to end); None otherwise: then the caller compiles, and a
    program compiled from another text goes to discard() on a thread."""
    with _SLOT.lock:
        early, _SLOT.early = _SLOT.early, None
    if early is None:
        return None
    early.wait()
    if early.text == text and early.include_dir == include_dir and early.program is not None:
        return early.program
    if early.program is not None:
        t = threading.Thread(target=discard, args=(early.program,), name="fsev-early-discard", daemon=True)
        t.start()
        _DISCARDS.append(t)
    return None


_DISCARDS: list[threading.Thread] = []


def wait_discarded(timeout: float = 5.0) -> None:
    """Until programs compiled from another text are freed: a session's
    teardown waits for them too, so that nothing of fsev stays loaded once it exits."""
    while _DISCARDS:
        _DISCARDS.pop().join(timeout)


def compiled(text: str) -> None:
    """A program of this text is attached: the next run of this command line starts by compiling it."""
    if not enabled():
        return
    with _SLOT.lock:
        k, cached, _SLOT.key = _SLOT.key, _SLOT.cached, None  # once per command
        if k is None:
            return
    if cached == text:  # still in use: the last to be pruned (pruning goes by age)
        with contextlib.suppress(OSError):
            os.utime(cache_dir() / f"{k}{SUFFIX}")
        return
    write_cached(k, text)


def reset() -> None:
    """Forget the key and any compile in progress (tests)."""
    with _SLOT.lock:
        _SLOT.key = _SLOT.cached = None
        _SLOT.early = None


def running_compile() -> EarlyCompile | None:
    return _SLOT.early


