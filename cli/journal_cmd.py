"""`fsev replay` and `fsev report`: reading a journal back."""

from __future__ import annotations

import json
import signal
import sys

from fsev.journal.replay import ReplayOptions, replay
from fsev.journal.report import print_report, report_journal


def run_replay(path: str, opts: ReplayOptions) -> None:
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        replay(path, opts, lambda: stop["now"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_report(path: str, json_out: bool) -> None:
    rep = report_journal(path)
    if json_out:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(rep)
