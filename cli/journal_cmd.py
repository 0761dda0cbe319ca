"""`fsev replay` and `fsev report`: reading a journal back."""

from __future__ import annotations

import json
import signal
import sys
import time

from fsev.journal.replay import ReplayOptions, replay
from fsev.journal.report import print_report, report_journal
from fsev.journal.store import journal_path
from fsev.journal.timewindow import TimeWindow, parse_window


def window(since: str | None, until: str | None) -> TimeWindow:
    """--since/--until, read against one moment (a bad one: one line, exit 2)."""
    return parse_window(since, until, time.time())


def run_replay(path: str | None, opts: ReplayOptions) -> None:
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        replay(journal_path(path), opts, lambda: stop["now"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_report(path: str | None, json_out: bool, window: TimeWindow | None = None) -> None:
    rep = report_journal(journal_path(path), window)
    if json_out:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(rep)
