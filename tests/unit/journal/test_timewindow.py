"""--since/--until: parse_time() against a pinned now and a pinned time zone."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from fsev.journal.timewindow import TimeWindow, TimeWindowError, parse_time, parse_window


@pytest.fixture
def tz():
    """Set the local time zone for one test; put the old one back after."""
    old = os.environ.get("TZ")

    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield use
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def at(*args: int, offset_h: float = 0) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone(dt.timedelta(hours=offset_h))).timestamp()


def test_clock_time_is_today_when_past_and_yesterday_when_still_to_come(tz):
    tz("UTC")
    morning = at(2026, 5, 10, 9, 0)
    assert parse_time("03:00", morning) == at(2026, 5, 10, 3, 0)  # this morning
    night = at(2026, 5, 10, 2, 0)
    assert parse_time("03:00", night) == at(2026, 5, 9, 3, 0)  # last night
    assert parse_time("02:00", night) == night  # exactly now is not in the future
    assert parse_time("23:59:30", night) == at(2026, 5, 9, 23, 59, 30)


def test_yesterday_is_the_calendar_day_before_across_a_dst_change(tz):
    tz("Europe/Berlin")  # 2026-03-29: 02:00 CET -> 03:00 CEST
    now = at(2026, 3, 30, 1, 0, offset_h=2)  # 01:00 CEST the day after
    # 01:30 yesterday was still CET (+1): 00:30 UTC. Subtracting 24 h from today's
    # 01:30 CEST would give 23:30 UTC on the 28th, an hour off.
    assert parse_time("01:30", now) == at(2026, 3, 29, 0, 30)
    assert parse_time("04:00", now) == at(2026, 3, 29, 4, 0, offset_h=2)


def test_local_times_in_the_skipped_and_the_repeated_hour(tz):
    tz("Europe/Berlin")
    now = at(2026, 11, 1, 12, 0)
    # Skipped (spring): read as the clock would have without the change, 02:30 CET.
    assert parse_time("2026-03-29 02:30", now) == at(2026, 3, 29, 2, 30, offset_h=1)
    # Repeated (autumn, 03:00 CEST -> 02:00 CET): the first, CEST.
    assert parse_time("2026-10-25 02:30", now) == at(2026, 10, 25, 2, 30, offset_h=2)
    # A zone given says which.
    assert parse_time("2026-10-25T02:30+01:00", now) == at(2026, 10, 25, 2, 30, offset_h=1)


def test_dates_iso_epoch_relative_and_now(tz):
    tz("America/New_York")  # -05:00 in January
    now = at(2026, 1, 15, 12, 0)
    assert parse_time("2026-01-14", now) == at(2026, 1, 14, 0, 0, offset_h=-5)
    assert parse_time("2026-01-14 3:04", now) == at(2026, 1, 14, 3, 4, offset_h=-5)
    assert parse_time("2026-01-14 03:04:05", now) == at(2026, 1, 14, 3, 4, 5, offset_h=-5)
    assert parse_time("2026-01-14T03:04:05", now) == at(2026, 1, 14, 3, 4, 5, offset_h=-5)
    assert parse_time("2026-01-14T03:04:05.25Z", now) == at(2026, 1, 14, 3, 4, 5) + 0.25
    assert parse_time("2026-01-14t03:04z", now) == at(2026, 1, 14, 3, 4)
    assert parse_time("2026-01-14 03:04+02:00", now) == at(2026, 1, 14, 3, 4, offset_h=2)
    assert parse_time("1700000000", now) == 1_700_000_000.0
    assert parse_time("@1700000000.5", now) == 1_700_000_000.5
    assert parse_time("-30m", now) == now - 1800
    assert parse_time("-2h", now) == now - 7200
    assert parse_time("-1d", now) == now - 86400
    assert parse_time("-1h30m", now) == now - 5400
    assert parse_time("- 90s", now) == now - 90
    assert parse_time("2h ago", now) == now - 7200
    assert parse_time("1w ago", now) == now - 7 * 86400
    assert parse_time(" NOW ", now) == now


@pytest.mark.parametrize("bad", ["", "yesterday", "25:00", "12:60", "2026-02-30", "2026-13-01 00:00",
                                 "-30x", "30m", "ago", "03:00 tomorrow", "2026-01-14T03:04 junk", "1e9"])
def test_a_bad_time_is_one_line_naming_the_option_and_the_forms(bad):
    with pytest.raises(TimeWindowError) as e:
        parse_time(bad, 1_700_000_000.0, "--since")
    msg = str(e.value)
    assert msg.startswith("--since: cannot read") and repr(bad) in msg and "HH:MM" in msg and "\n" not in msg


def test_window_is_half_open_and_until_must_follow_since():
    w = parse_window("100", "200", 1_700_000_000.0)
    assert (w.since, w.until) == (100.0, 200.0)
    assert w.contains(100.0) and w.contains(199.9) and not w.contains(200.0) and not w.contains(99.9)
    assert TimeWindow(None, 5.0).contains(-1e9) and TimeWindow(5.0, None).contains(1e12)
    assert not TimeWindow().bounded and TimeWindow(None, 1.0).bounded
    with pytest.raises(TimeWindowError, match="--until .* is not after --since"):
        parse_window("200", "100", 1_700_000_000.0)
    with pytest.raises(TimeWindowError, match="--until: cannot read"):
        parse_window("100", "soon", 1_700_000_000.0)
