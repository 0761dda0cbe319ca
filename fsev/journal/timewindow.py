"""`--since T` and `--until T`: what a user types for a moment, as Unix seconds.

parse_time() is pure: the moment "now" is an argument, and local time is
whatever TZ says, so the tests can pin both. The forms (docs/journal.md, Time
windows):

- `HH:MM` or `HH:MM:SS`: that clock time today, local time; if it is still
  to come, the same clock time yesterday. `03:00` asked at 09:00 is this
  morning, asked at 02:00 it is last night. "Yesterday" is the calendar day
  before, not 24 hours earlier, so a DST change in between does not move it.
- `YYYY-MM-DD` (midnight), `YYYY-MM-DD HH:MM[:SS]`: local time.
- ISO 8601 with `T`: `2026-03-29T02:30`, with seconds, fractions, and a zone
  (`Z`, `+02:00`); without a zone, local time.
- Unix seconds: `1700000000`, `1700000000.25`, `@1700000000`.
- Relative, back from now: `-30m`, `-2h`, `-1d`, `-90s`, `-1w`, combined as
  `-1h30m`; or the same without `-` followed by `ago` (`30m ago`). These are
  exact durations: `-1d` is 24 hours before now.
- `now`.

A local clock time that does not exist (the hour skipped when DST starts)
or exists twice (the hour repeated when it ends) takes the first reading
(PEP 495's fold=0): for the skipped hour that is the time as the clock would
have read it without the change, for the repeated one the earlier moment.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from fsev.errors import FsevError

FORMS = "HH:MM[:SS], YYYY-MM-DD[ HH:MM[:SS]], ISO 8601, Unix seconds, -30m / -2h / -1d, '2h ago'"

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")
_EPOCH = re.compile(r"@?\d+(\.\d*)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_RELATIVE = re.compile(r"(?:-\s*((?:\d+(?:\.\d+)?[smhdw])+)|((?:\d+(?:\.\d+)?[smhdw])+)\s+ago)")


class TimeWindowError(FsevError):
    pass


@dataclass(frozen=True)
class TimeWindow:
    """Events with since <= wall_time < until (either end open when None)."""

    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise TimeWindowError(f"--until ({_show(self.until)}) is not after --since ({_show(self.since)})")

    def contains(self, t: float) -> bool:
        return (self.since is None or t >= self.since) and (self.until is None or t < self.until)

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None


def _show(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _local(day: dt.date, hour: int, minute: int, second: int) -> float:
    """Unix seconds of a local wall-clock time on a calendar day (fold=0 for gaps and repeats)."""
    return dt.datetime(day.year, day.month, day.day, hour, minute, second).timestamp()


def parse_time(text: str, now: float, option: str = "time") -> float:
    """Unix seconds for `text` in one of FORMS, relative to `now` (Unix seconds)."""
    s = " ".join(text.split()).lower()
    try:
        t = _parse(s, now)
    except (ValueError, OverflowError, OSError):
        t = None
    if t is None:
        raise TimeWindowError(f"{option}: cannot read {text!r} as a time (forms: {FORMS})")
    return t


def _parse(s: str, now: float) -> float | None:
    if s == "now":
        return now
    m = _CLOCK.fullmatch(s)
    if m:
        hour, minute, second = int(m[1]), int(m[2]), int(m[3] or 0)
        today = dt.datetime.fromtimestamp(now).date()
        t = _local(today, hour, minute, second)
        if t > now:  # still to come today: the user means the last one, yesterday's
            t = _local(today - dt.timedelta(days=1), hour, minute, second)
        return t
    m = _DATE.fullmatch(s)
    if m:
        day = dt.date(int(m[1]), int(m[2]), int(m[3]))
        return _local(day, int(m[4] or 0), int(m[5] or 0), int(m[6] or 0))
    if _EPOCH.fullmatch(s):
        return float(s.removeprefix("@"))
    m = _RELATIVE.fullmatch(s)
    if m:
        return now - sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(m[1] or m[2]))
    if _DATE.match(s):
        # The rest of ISO 8601 (T or a space; seconds, fractions, a zone are optional).
        # (Python before 3.11 reads only 3 or 6 digits of a fraction: give it 6.)
        when = dt.datetime.fromisoformat(re.sub(r"\.(\d+)", lambda f: "." + f[1].ljust(6, "0")[:6],
                                                s.upper().replace("Z", "+00:00")))
        return when.timestamp()  # naive: local time
    return None


def parse_window(since: str | None, until: str | None, now: float) -> TimeWindow:
    """The window of `--since`/`--until` as given (None: that end open)."""
    return TimeWindow(
        None if since is None else parse_time(since, now, "--since"),
        None if until is None else parse_time(until, now, "--until"),
    )
