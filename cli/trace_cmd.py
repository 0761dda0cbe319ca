"""`fsev trace`: validate, plan, attach, stream until stopped."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fsev.errors import FsevError
from fsev.events import EventType
from fsev.linux.mountinfo import MountTable
from fsev.linux.privilege import NEED_ROOT, can_trace
from fsev.probes.ladder import Plan
from fsev.session.selection import parse_classes, resolve_mounts
from fsev.session.setup_checks import check_bcc, check_btf, check_tracefs, require
from fsev.session.sinks import HumanSink, JsonSink
from fsev.thresholds.levels import ThresholdError, parse_thr

if TYPE_CHECKING:
    from fsev.events import EventClass
    from fsev.linux.mountinfo import Mount
    from fsev.thresholds.arming import ArmedMount

if TYPE_CHECKING:
    from fsev.journal.recorder import Recorder
    from fsev.service.client import ServiceSession
    from fsev.session.sinks import EventSink
    from fsev.session.trace import TraceOptions, TraceSession

    from .record_cmd import RecordTarget
    from .top_cmd import TopRequest


@dataclass
class TraceRequest:
    mounts: list[str] = field(default_factory=list)
    events: str | None = None
    thr: str | None = None
    thr_hysteresis: str | None = None
    json_out: bool = False
    count: int | None = None
    duration: float | None = None
    dry_run: bool = False
    print_bpf: bool = False
    ringbuf_pages: int = 256
    record: "RecordTarget | None" = None  # also write every event to a journal (cli/record_cmd.py)
    standalone: bool = False  # never a running service's events: attach probes of its own


def _say(msg: str) -> None:
    print(f"fsev: {msg}", file=sys.stderr, flush=True)


def describe_plan(plan: Plan) -> list[str]:
    lines = []
    for r in plan.rungs:
        line = f"{r.name}: {r.kind.value}"
        if r.targets:
            line += f" ({', '.join(r.targets)})"
        if r.skipped:
            line += f"; skipped {'; '.join(r.skipped)}"
        lines.append(line)
    return lines


def check_thresholds(req: "TraceRequest | TopRequest", mounts: "list[Mount]",
                     classes: "frozenset[EventClass]") -> "list[ArmedMount]":
    """--thr on each --mount: levels in blocks and the rung that watches it (fsev/thresholds/arming.py)."""
    from fsev.events import EventClass
    from fsev.points.registry import plan_probes
    from fsev.session.trace import kernel_facts
    from fsev.thresholds.arming import arm_thresholds
    from fsev.thresholds.gate import rate_bound
    from fsev.thresholds.levels import parse_hysteresis

    if req.thr is None:
        if req.thr_hysteresis is not None:
            raise FsevError("--thr-hysteresis needs --thr")
        return []
    try:
        spec = parse_thr(req.thr)
        hyst = parse_hysteresis(req.thr_hysteresis) if req.thr_hysteresis is not None else None
    except ThresholdError as e:
        raise FsevError(str(e)) from None
    if not mounts:
        raise FsevError("--thr needs --mount: free-space levels are set per mount")
    if EventClass.THR not in classes:
        raise FsevError("--thr with --events that leave out thr would never show a crossing: add thr")
    rate_bound()  # FSEV_THR_RATE, checked before anything is compiled
    try:
        return arm_thresholds(plan_probes(kernel_facts()), mounts, spec, hyst)
    except ThresholdError as e:
        raise FsevError(str(e)) from None


def run_trace(req: TraceRequest) -> None:
    from .service_cmd import find_service, listen

    classes = parse_classes(req.events)
    if req.thr is not None:
        try:
            parse_thr(req.thr)
        except ThresholdError as e:
            raise FsevError(str(e)) from None
    if req.ringbuf_pages < 1 or req.ringbuf_pages & (req.ringbuf_pages - 1):
        raise FsevError(f"--ringbuf-pages must be a power of two, not {req.ringbuf_pages}")
    t0 = time.monotonic()
    sock, mode = None, ""
    if not (req.dry_run or req.print_bpf):
        sock, mode = find_service(req.standalone, "--thr arms levels of its own (the service's are its "
                                  "configuration: fsev config)" if req.thr is not None else None)
    if sock is not None:
        mounts = resolve_mounts(req.mounts, MountTable.read())
        recorder = _open_recorder(req)
        listener = listen(sock, mounts, classes, req.record.command if req.record else "trace")
        _stream(req, listener, recorder, mounts, classes, t0)
        return

    # Only a session of its own needs the probe points and the session's modules.
    from fsev.points.registry import plan_probes
    from fsev.session.trace import TraceOptions, TraceSession, build_source, kernel_facts

    if not can_trace():
        raise FsevError(NEED_ROOT)
    require(check_btf(), check_tracefs(mount_if_missing=True))
    table = MountTable.read()
    mounts = resolve_mounts(req.mounts, table)
    armed = check_thresholds(req, mounts, classes)
    opts = TraceOptions(mounts=mounts, classes=classes, ringbuf_pages=req.ringbuf_pages, thresholds=armed)

    if req.print_bpf:
        print(build_source(plan_probes(kernel_facts()), opts))
        return
    require(check_bcc())
    recorder = _open_recorder(req)
    if mode:
        _say(mode)
    session = TraceSession(opts)
    for line in describe_plan(session.plan):
        _say(line)
    for a in armed:
        _say(f"thr {a.mount.mount_point} ({a.mount.fs_type}): {a.describe()}")
    _stream(req, session, recorder, mounts, classes, None, opts)


def _open_recorder(req: TraceRequest) -> "Recorder | None":
    """The journal is checked before anything attaches."""
    if req.record is None:
        return None
    from .record_cmd import open_recorder

    return open_recorder(req.record)


def _stream(req: TraceRequest, session: "TraceSession | ServiceSession", recorder: "Recorder | None",
            mounts: "list[Mount]", classes: "frozenset[EventClass]", t0: float | None,
            opts: "TraceOptions | None" = None) -> None:
    """Start the session (probes of its own, or a service's listener), then
    emit until stopped, the count or the duration. t0: when a listener's
    command began (its connect is part of attaching); None: just before the
    probes' compile and attach."""
    from .record_cmd import recording_options

    stop = lambda *_: session.stop()  # noqa: E731
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    # A JSON stream of its own flushes once per batch, before the session
    # waits for more: a line per write(2) cost more than the event did in a flood.
    batched = JsonSink(flush_each=False) if req.json_out and recorder is None else None
    sink: EventSink = batched or (JsonSink() if req.json_out else HumanSink())
    if recorder is not None and req.record is not None:
        if opts is None:  # a listener's recording: what it asked the service for
            from fsev.session.trace import TraceOptions

            opts = TraceOptions(mounts=mounts, classes=classes)
        sink = recorder.start(session.plan, recording_options(req, opts), sink if req.record.show else None)
    shown = 0
    try:
        t0 = time.monotonic() if t0 is None else t0
        session.start()
        where = ", ".join(m.mount_point for m in mounts) or "every mount"
        _say(f"attached in {time.monotonic() - t0:.2f}s; watching {where}")
        for note in session.attach_notes:
            _say(note)
        if req.dry_run:
            _say("dry run: compiled, attached and detached")
            return
        deadline = None if req.duration is None else time.monotonic() + req.duration
        notes = getattr(session, "notes", None)  # a service's listener has none of its own
        for ev in session.events(until=deadline, last=True, before_wait=batched.flush if batched else None):
            if notes:
                for note in notes:
                    _say(note)
                notes.clear()
            if ev.type is not EventType.LOSS:
                if req.count is not None and shown >= req.count:
                    continue  # stopping: events already in hand are not shown, loss still is
                shown += 1
            sink.emit(ev)
            if req.count is not None and shown >= req.count:
                session.stop()
    finally:
        session.close()
        sink.close()
        for s, h in old.items():
            signal.signal(s, h)
    _say(f"{shown} events, {session.lost_total} lost")
