"""The fsev command line: trace, top, doctor.

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
    from click import exceptions as click_exc  # type: ignore[no-redef]

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
) -> None:
    """Stream filesystem health events, one line each."""
    from .trace_cmd import TraceRequest, run_trace

    run_trace(
        TraceRequest(
            mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis, json_out=json_out,
            count=count, duration=duration, dry_run=dry_run, print_bpf=print_bpf, ringbuf_pages=ringbuf_pages,
        )
    )


@app.command()
def top(
    mount: Optional[List[str]] = MountOpt,
    events: Optional[str] = EventsOpt,
    thr: Optional[str] = ThrOpt,
    thr_hysteresis: Optional[str] = HystOpt,
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit (no terminal needed)."),
    all_mounts: bool = typer.Option(False, "--all", help="Show pseudo filesystems (proc, sysfs, cgroup, ...) too."),
    sort: str = typer.Option("severity", "--sort", help="Order of the mounts: severity, usage, avail, errors, mount."),
) -> None:
    """Live view of filesystem health: mounts, errors, free space, the event feed."""
    from .top_cmd import TopRequest, run_top

    raise typer.Exit(run_top(TopRequest(
        mounts=mount or [], events=events, thr=thr, thr_hysteresis=thr_hysteresis,
        once=once, all=all_mounts, sort=sort,
    )))


@app.command()
def doctor() -> None:
    """Check this host: kernel, BTF, tracefs, headers, bcc, and the rung of each probe point."""
    from .doctor_cmd import run_doctor

    raise typer.Exit(run_doctor())


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
