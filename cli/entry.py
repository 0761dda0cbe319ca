"""The console script `fsev`: a head start for the compile, then the typer app (cli/main.py).

Before typer is imported (30 ms) and parses the command line (80 ms with its
pydantic adapters), a command that compiles fsev's program starts compiling
the text the same command line compiled last time, on a thread
(fsev/kernel/early.py); the session takes that program only if its own text
is the same. Only this module runs before typer: it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The commands that compile fsev's program when they run standalone.
EARLY_COMMANDS = frozenset({"trace", "top", "record", "serve"})


def include_dir() -> Path:
    """fsev.probes.program.bpf_dir() for an installed package, without
    importing it (the record mirror and the ladder, 30 ms, on the way to the
    compile). early.take() compares the two: were they ever to differ, the
    session would compile as before (tests/unit/layout/test_packaging.py)."""
    import fsev

    return Path(fsev.__file__).parent / "bpf"


def _no_service() -> bool:
    """No service socket: the command will compile probes of its own (asked on the compile's thread)."""
    from fsev.service.client import socket_path

    return not os.path.exists(socket_path())


def begin_early_compile(argv: list[str]) -> bool:
    """argv: the command line after the program name. True if a compile began."""
    if not argv or argv[0] not in EARLY_COMMANDS:
        return False
    import fsev
    from fsev.kernel import early

    own = "--standalone" in argv or argv[0] == "serve"  # probes of its own whatever runs
    return early.begin(argv, str(Path(fsev.__file__).resolve().parent), include_dir,
                       wanted=None if own else _no_service)


def run() -> None:
    try:
        begin_early_compile(sys.argv[1:])
    except Exception:  # only ever a head start: the command compiles as before
        pass
    from .main import run as run_app

    run_app()


if __name__ == "__main__":
    run()
