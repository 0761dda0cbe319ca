"""The fsev command line: trace, top, doctor; record, replay, report.

Every user mistake leaves through FsevError: one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

try:  # typer >= 0.20 vendors click; older ones depend on it
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef, import-not-found]  # new typer: no click

from fsev import __version__
from fsev.errors import FsevError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Filesystem health events from the kernel: errors, unmounts, free-space thresholds.",
)

MountOpt = typer.Option(None, "--mount", "-m", help="Watch this mount point (repeatable; default: every mount).")
EventsOpt = typer.Option(None, "--events", "-e", help="Classes to show: info,warn,err,thr (default: all).")
ThrOpt = typer.Option(None, "--thr", help="Free-space levels L1[,L2] in available blocks (or 10G, 10%); needs --mount.")
HystOpt = typer.Option(None, "--thr-hysteresis", help="Blocks (or size/%) above a level before it re-arms.")
RecordOpt = typer.Option(None, "--record", metavar="FILE",
                         help="Also write every event to this journal (fsev replay, fsev report).")
StandaloneOpt = typer.Option(False, "--standalone",
                             help="Attach probes of its own even when an fsev service runs "
                             "(by default its events are used).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fsev {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


@app.command()
def trace(
    mount: Optional[List[str]] = MountOpt,
    events: Optional[str] = EventsOpt,
    thr: Optional[str] = ThrOpt,
    thr_hysteresis: Optional[str] = HystOpt,
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line (docs/events.md)."),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="Stop after N events."),
    duration: Optional[float] = typer.Option(None, "--duration", "-d", min=0.0, help="Stop after SECONDS."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compile, attach, detach, exit 0."),
    print_bpf: bool = typer.Option(False, "--print-bpf", hidden=True, help="Print the final BPF C and exit."),
    ringbuf_pages: int = typer.Option(256, "--ringbuf-pages", hidden=True, help="Ring buffer size in pages."),
    record: Optional[str] = RecordOpt,
    standalone: bool = StandaloneOpt,
) -> None:
    """Stream filesystem health events, one line each."""
    from .record_cmd import record_to
    from .trace_cmd import TraceRequest, run_trace

    run_trace(
        TraceRequest(
            mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis, json_out=json_out,
            count=count, duration=duration, dry_run=dry_run, print_bpf=print_bpf, ringbuf_pages=ringbuf_pages,
            record=record_to(record, "trace"), standalone=standalone,
        )
    )


@app.command()
def top(
    mount: Optional[List[str]] = MountOpt,
    events: Optional[str] = EventsOpt,
    thr: Optional[str] = ThrOpt,
    thr_hysteresis: Optional[str] = HystOpt,
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit (no terminal needed)."),
    window: Optional[float] = typer.Option(None, "--window", metavar="S",
                                           help="With --once: collect events S seconds before the snapshot "
                                           "(default 0.5)."),
    all_mounts: bool = typer.Option(False, "--all", help="Show pseudo filesystems (proc, sysfs, cgroup, ...) too."),
    sort: str = typer.Option("severity", "--sort", help="Order of the mounts: severity, usage, avail, errors, mount."),
    record: Optional[str] = RecordOpt,
    from_file: Optional[str] = typer.Option(None, "--from", metavar="FILE",
                                            help="Review a journal (fsev record) instead of watching the kernel."),
    speed: Optional[float] = typer.Option(None, "--speed", metavar="X",
                                          help="With --from: play at X times the recorded pace "
                                          "(default: all at once)."),
    standalone: bool = StandaloneOpt,
) -> None:
    """Live view of filesystem health: mounts, errors, free space, the event feed."""
    from .record_cmd import record_to
    from .top_cmd import TopRequest, run_top, run_top_review

    if from_file is not None or speed is not None:
        raise typer.Exit(run_top_review(TopRequest(
            mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis,
            once=once, all=all_mounts, sort=sort, record=record_to(record, "top"),
            from_file=from_file, speed=speed, window=window,
        )))
    raise typer.Exit(run_top(TopRequest(
        mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis,
        once=once, all=all_mounts, sort=sort, record=record_to(record, "top"), standalone=standalone,
        window=window,
    )))


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="One JSON object: the checks and the probe plan."),
) -> None:
    """Check this host: kernel, BTF, tracefs, headers, bcc, and the rung of each probe point."""
    from .doctor_cmd import run_doctor

    raise typer.Exit(run_doctor(as_json))


# -- journals: record, replay, report (cli/record_cmd.py, cli/journal_cmd.py) ----
@app.command()
def record(
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE",
                                         help="Journal to write (default: /var/lib/fsev/<time>.fsev; "
                                         "an existing journal is appended to)."),
    mount: Optional[List[str]] = MountOpt,
    events: Optional[str] = EventsOpt,
    thr: Optional[str] = ThrOpt,
    thr_hysteresis: Optional[str] = HystOpt,
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="Stop after N events."),
    duration: Optional[float] = typer.Option(None, "--duration", "-d", min=0.0, help="Stop after SECONDS."),
    ringbuf_pages: int = typer.Option(256, "--ringbuf-pages", hidden=True, help="Ring buffer size in pages."),
    standalone: bool = StandaloneOpt,
) -> None:
    """Record everything trace would show into a crash-safe journal, until stopped."""
    from .record_cmd import RecordTarget, default_journal_path
    from .trace_cmd import TraceRequest, run_trace

    target = RecordTarget(output or default_journal_path(), "record", show=False)
    run_trace(TraceRequest(mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis,
                           count=count, duration=duration, ringbuf_pages=ringbuf_pages, record=target,
                           standalone=standalone))


# -- the service: serve, config (cli/service_cmd.py, docs/service.md) ----------
ConfigLinesArg = typer.Argument(None, metavar="[LINE]...", help="Requests: 'MOUNT TYPES [L1 [L2]]', "
                                "'!MOUNT [TYPES]', or a setting; ';' between several.")


@app.command()
def serve(
    config: str = typer.Option("/etc/fsev/fsev.conf", "--config", "-c", metavar="FILE",
                               help="The configuration (MOUNT TYPES [L1 [L2]] lines; docs/service.md)."),
    socket_path: Optional[str] = typer.Option(None, "--socket", metavar="PATH",
                                              help="Listen here (default: $FSEV_SOCKET or /run/fsev/fsev.sock)."),
) -> None:
    """Run as the service: hold the probes, serve listeners, keep the flight recorder (SIGHUP: reload)."""
    from .service_cmd import run_serve

    raise typer.Exit(run_serve(config, socket_path))


@app.command("config")
def config_cmd(
    lines: Optional[List[str]] = ConfigLinesArg,
    show: bool = typer.Option(False, "--show", help="Print the service's running configuration."),
) -> None:
    """Change the running service's configuration, all or nothing (root), or --show it."""
    from .service_cmd import run_config

    raise typer.Exit(run_config(lines or [], show))


SinceOpt = typer.Option(None, "--since", metavar="T",
                        help="Only events at or after T: HH:MM[:SS] (the last one), YYYY-MM-DD[ HH:MM[:SS]], "
                        "ISO 8601, Unix seconds, -30m / -2h / -1d, '2h ago'.")
UntilOpt = typer.Option(None, "--until", metavar="T", help="Only events before T (forms as --since).")
JournalArg = typer.Argument(None, metavar="[FILE]",
                            help="A journal written by fsev record (default: fsev serve's, "
                            "/var/lib/fsev/flight.fsev).")


@app.command()
def replay(
    journal: Optional[str] = JournalArg,
    consumer: Optional[str] = typer.Option(None, "--consumer", "-c", metavar="NAME",
                                           help="Resume after what NAME acknowledged; acknowledge as it goes."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading while the journal is being written."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line, as trace --json."),
    speed: Optional[float] = typer.Option(None, "--speed", metavar="X",
                                          help="Replay at X times the recorded pace (default: at once)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE",
                                         help="Append to FILE instead of stdout; with --consumer, exactly once."),
    since: Optional[str] = SinceOpt,
    until: Optional[str] = UntilOpt,
) -> None:
    """Print a journal's events as trace did (docs/journal.md: consumers, time windows)."""
    from fsev.journal.replay import ReplayOptions

    from .journal_cmd import run_replay, window

    run_replay(journal, ReplayOptions(consumer=consumer, follow=follow, json_out=json_out, speed=speed, output=output,
                                      window=window(since, until)))


@app.command()
def report(
    journal: Optional[str] = JournalArg,
    json_out: bool = typer.Option(False, "--json", help="The report as one JSON document."),
    since: Optional[str] = SinceOpt,
    until: Optional[str] = UntilOpt,
) -> None:
    """Summarize a journal per mount: errors, thresholds, read-only, unmounts, ENOSPC, drops."""
    from .journal_cmd import run_report, window

    run_report(journal, json_out, window(since, until))


def run() -> None:
    """Console-script entry: usage errors and FsevError become one line and exit 2."""
    try:
        rv = app(standalone_mode=False)
    except FsevError as e:
        print(f"fsev: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except click_exc.NoArgsIsHelpError as e:
        print(e.format_message(), file=sys.stderr)
        sys.exit(2)
    except click_exc.UsageError as e:
        msg = " ".join(e.format_message().split())
        print(f"fsev: {msg} (see fsev --help)", file=sys.stderr)
        sys.exit(2)
    except click_exc.ClickException as e:
        print(f"fsev: {' '.join(e.format_message().split())}", file=sys.stderr)
        sys.exit(e.exit_code or 2)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("FSEV_DEBUG"):
            raise
        print(f"fsev: internal error: {type(e).__name__}: {e} (set FSEV_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    run()
