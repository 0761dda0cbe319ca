"""`fsev record`, and `--record FILE` on trace and top: the recording side of the CLI.

run_trace (cli/trace_cmd.py) does the tracing; this module only says where the
journal goes and what goes into its header.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsev.errors import FsevError

if TYPE_CHECKING:
    from fsev.journal.recorder import Recorder
    from fsev.session.trace import TraceOptions

    from .top_cmd import TopRequest
    from .trace_cmd import TraceRequest

DEFAULT_DIR = "/var/lib/fsev"


@dataclass(frozen=True)
class RecordTarget:
    path: str
    command: str  # record, trace or top
    show: bool = True  # False for `fsev record`: events go to the journal only


def record_to(path: str | None, command: str) -> RecordTarget | None:
    return RecordTarget(path, command) if path is not None else None


def default_journal_path(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path, n = os.path.join(DEFAULT_DIR, f"{stamp}.fsev"), 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(DEFAULT_DIR, f"{stamp}-{n}.fsev")
    return path


def open_recorder(target: RecordTarget) -> "Recorder":
    """Create or validate the journal; called after the other checks, before anything attaches."""
    from fsev.journal.recorder import Recorder  # the journal's modules: only when recording

    if os.path.dirname(os.path.abspath(target.path)) == DEFAULT_DIR and not os.path.isdir(DEFAULT_DIR):
        try:
            os.makedirs(DEFAULT_DIR, mode=0o700, exist_ok=True)
        except OSError as e:
            raise FsevError(f"{DEFAULT_DIR}: {e.strerror or e}") from None
    return Recorder(target.path, target.command)


def recording_options(req: "TraceRequest | TopRequest", opts: "TraceOptions") -> dict[str, Any]:
    """What the recorder was started with, for the journal's header."""
    return {
        "argv": sys.argv[1:],
        "mounts": [m.mount_point for m in opts.mounts],
        "events": sorted(c.value for c in opts.classes),
        "thr": req.thr,
        "thr_hysteresis": req.thr_hysteresis,
        "count": req.count,
        "duration": req.duration,
        "ringbuf_pages": opts.ringbuf_pages,
    }
