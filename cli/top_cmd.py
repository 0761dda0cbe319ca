"""`fsev top`: validate, attach, then the live screen (fsev.top.app) or one snapshot."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fsev.errors import FsevError
from fsev.linux.mountinfo import Mount, MountTable
from fsev.linux.privilege import NEED_ROOT, can_trace
from fsev.session.selection import parse_classes, resolve_mounts
from fsev.session.setup_checks import check_bcc, check_btf, check_tracefs, require
from fsev.thresholds.levels import Levels, ThresholdError, parse_thr, resolve_levels
from fsev.top.model import SORT_KEYS, TopModel

from .record_cmd import RecordTarget, open_recorder, recording_options
from .trace_cmd import check_thresholds

if TYPE_CHECKING:
    from fsev.session.sinks import EventSink
    from fsev.top.app import TopApp

NO_TTY = "top needs a terminal: use `fsev top --once` for one snapshot, or `fsev trace` for a stream"
# 4 MiB, ~20 000 records, four times trace's default: the screen shares fsev's
# one thread with the consumer, and writing a frame to a slow terminal (ssh)
# blocks that thread; 2 s of a 10 000/s flood fit while it does.
RINGBUF_PAGES = 1024
ONCE_WIDTH = 160  # --once into a pipe: wide enough for the table, unless COLUMNS says otherwise


@dataclass
class TopRequest:
    mounts: list[str] = field(default_factory=list)
    events: str | None = None
    thr: str | None = None
    thr_hysteresis: str | None = None
    once: bool = False
    all: bool = False
    sort: str = "severity"
    record: "RecordTarget | None" = None
    from_file: str | None = None  # --from: review a journal
    standalone: bool = False  # never a running service's events
    speed: float | None = None
    window: float | None = None  # --once: seconds of events before the snapshot (default ONCE_WINDOW_S)
    # what the journal header reads (recording_options): top has no count/duration
    count: None = None
    duration: None = None


def resolve_thresholds(req: TopRequest, mounts: list[Mount]) -> dict[str, Levels]:
    """--thr (and --thr-hysteresis) in blocks for each --mount, keyed by device."""
    if req.thr is None:
        if req.thr_hysteresis is not None:
            raise FsevError("--thr-hysteresis needs --thr")
        return {}
    try:
        spec = parse_thr(req.thr)
    except ThresholdError as e:
        raise FsevError(str(e)) from None
    if not mounts:
        raise FsevError("--thr needs --mount: free-space levels are set per mount")
    out: dict[str, Levels] = {}
    for m in mounts:
        st = os.statvfs(m.mount_point)
        bs = st.f_frsize or st.f_bsize
        hyst = 0
        if req.thr_hysteresis is not None:
            try:
                hyst = parse_thr(req.thr_hysteresis).l1.to_blocks(bs, st.f_blocks)
                if "," in req.thr_hysteresis:
                    raise ThresholdError("one value expected")
            except ThresholdError:
                raise FsevError(f"bad --thr-hysteresis {req.thr_hysteresis!r}: expected blocks, a size or a "
                                "percentage, e.g. 1000, 100M or 1%") from None
        try:
            out[m.dev] = resolve_levels(spec, bs, st.f_blocks, hyst)
        except ThresholdError as e:
            raise FsevError(f"{m.mount_point}: {e}") from None
    return out


def _is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _check_sort(req: TopRequest) -> None:
    if req.sort not in SORT_KEYS:
        raise FsevError(f"unknown --sort {req.sort!r}: choose from {', '.join(SORT_KEYS)}")


def _check_terminal(req: TopRequest, no_tty: str) -> None:
    if req.window is not None and not (req.once and req.window > 0):
        raise FsevError("--window needs --once and a positive number of seconds")
    if not req.once and not _is_tty():
        raise FsevError(no_tty)


def _show(app_class: type[TopApp], session: Any, model: TopModel, req: TopRequest,
          recorder: EventSink | None = None) -> int:
    """The live screen, or with --once one snapshot on stdout."""
    if req.once:
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else ONCE_WIDTH
        app = app_class(session, model, Console(highlight=False, width=width), recorder=recorder)
        return app.run_once() if req.window is None else app.run_once(req.window)
    return app_class(session, model, recorder=recorder).run()


def run_top(req: TopRequest) -> int:
    from fsev.session.trace import TraceOptions, TraceSession
    from fsev.top.app import TopApp

    classes = parse_classes(req.events)
    _check_sort(req)
    if req.thr is not None:
        try:
            parse_thr(req.thr)
        except ThresholdError as e:
            raise FsevError(str(e)) from None
    _check_terminal(req, NO_TTY)
    from .service_cmd import find_service, listen

    sock, mode = find_service(req.standalone, "--thr arms levels of its own (the service's are its "
                              "configuration: fsev config)" if req.thr is not None else None)
    if sock is not None:
        mounts = resolve_mounts(req.mounts, MountTable.read())
        recorder = open_recorder(req.record) if req.record is not None else None
        listener = listen(sock, mounts, classes, "top")
        uname = os.uname()
        model = TopModel(host=uname.nodename, kernel=uname.release,
                         rungs=[(r.name, r.kind.value) for r in listener.plan.rungs], started=time.time(),
                         show_all=req.all, sort=req.sort, watched=[m.mount_point for m in mounts])
        if recorder is not None:
            recorder.start(listener.plan, recording_options(req, TraceOptions(mounts=mounts, classes=classes)), None)
        return _show(TopApp, listener, model, req, recorder)
    if not can_trace():
        raise FsevError(NEED_ROOT)
    require(check_btf(), check_tracefs(mount_if_missing=True))
    table = MountTable.read()
    mounts = resolve_mounts(req.mounts, table)
    levels = resolve_thresholds(req, mounts)
    armed = check_thresholds(req, mounts, classes)  # the kernel side watches the levels too
    require(check_bcc())
    opts = TraceOptions(mounts=mounts, classes=classes, ringbuf_pages=RINGBUF_PAGES, thresholds=armed)
    recorder = open_recorder(req.record) if req.record is not None else None
    if mode:
        print(f"fsev: {mode}", file=sys.stderr, flush=True)
    session = TraceSession(opts)
    uname = os.uname()
    model = TopModel(
        host=uname.nodename, kernel=uname.release,
        rungs=[(r.name, r.kind.value) for r in session.plan.rungs],
        started=time.time(), show_all=req.all, sort=req.sort,
        watched=[m.mount_point for m in mounts], levels=levels,
    )
    if recorder is not None:
        recorder.start(session.plan, recording_options(req, opts), None)
    return _show(TopApp, session, model, req, recorder)


def run_top_review(req: TopRequest) -> int:
    """`fsev top --from FILE`: the screen driven by a journal; no kernel, no root needed."""
    from fsev.top.review import JournalSession, ReviewApp

    if req.from_file is None:
        raise FsevError("--speed needs --from FILE: it paces a recorded journal")
    given = [name for name, v in (("--mount", req.mounts), ("--events", req.events), ("--thr", req.thr),
                                  ("--thr-hysteresis", req.thr_hysteresis), ("--record", req.record)) if v]
    if given:
        raise FsevError(f"{given[0]} does not go with --from: the journal holds what was watched")
    if req.speed is not None and not req.speed > 0:
        raise FsevError(f"--speed must be a positive factor, not {req.speed}")
    _check_sort(req)
    _check_terminal(req, NO_TTY.replace("`fsev trace`", "`fsev replay`"))
    session = JournalSession(req.from_file, req.speed)
    model = TopModel(host=f"{session.host} (review of {os.path.basename(req.from_file)})", kernel=session.kernel,
                     rungs=session.rungs, started=session.clock, show_all=req.all, sort=req.sort)
    return _show(ReviewApp, session, model, req)
