"""`fsev top` on screen: a pure function from a TopModel to rich renderables.

Every string that comes from the kernel or a filesystem goes through inert()
into a Text object: never into markup, so neither `[red]` nor an escape
sequence in a comm or a mount point can take effect.

The mounts table is laid out by hand as Text lines rather than with
rich.table.Table: Table costs ~20 ms a frame at 200x50, which alone would eat
the idle CPU budget (≤ 1 % of a core) at one frame a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from rich.console import Group
from rich.text import Text

from fsev.events import Event, EventType
from fsev.events.inert import inert
from fsev.session.sinks import CLASS_STYLE, describe
from fsev.top.model import MountRow, SuperState, TopModel, avail_blocks, ro_by_error, severity

BAR_WIDTH = 12
FEED_LINES_ONCE = 20
MIN_FEED_LINES = 5
KEYS_HINT = "q quit  p pause  c clear  / filter  s sort  ? help"
HELP = (
    ("q", "quit (Ctrl-C too); the probes are detached on the way out"),
    ("p", "pause the event feed (the table and counters keep going)"),
    ("c", "clear counters: events, rate, drops, per-mount session errors"),
    ("/ f", "filter: words naming a class (err warn info thr) or part of a mount point;"
            " Enter applies, Esc cancels, empty clears"),
    ("s", "cycle the sort: severity, usage, avail, errors, mount"),
    ("?", "this help (any key closes it)"),
    ("", ""),
    ("USAGE", "used / (used + available), df's Use%; 1 and 2 mark the L1 / L2 levels of --thr"),
    ("AVAIL", "blocks available to unprivileged writers (statfs f_bavail), the unit of --thr"),
    ("THR", "free-space state: ok, L1 (at or below L1), L2 (at or below L2); - when no --thr"),
    ("RO", "rw, ro, or RO! when an error turned it read-only (ext4's emergency_ro, which statfs does not show; "
           "btrfs after an abort; a filesystem shut down, which mountinfo does not show either)"),
    ("ERRORS", "fs errors seen this session / ext4's errors_count recorded on disk"),
    ("hist", "feed entries from ext4's superblock record of errors before fsev started"),
)


# -- formatting --------------------------------------------------------------
def fmt_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def fmt_bytes(n: int) -> str:
    v = float(n)
    for unit in "BKMGTP":
        if v < 1024 or unit == "P":
            return f"{int(v)}{unit}" if unit == "B" else (f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}")
        v /= 1024
    return str(n)  # pragma: no cover


def fmt_count(n: int) -> str:
    if n < 100_000:
        return str(n)
    if n < 100_000_000:
        return f"{n // 1000}k"
    return f"{n // 1_000_000}M"


def fmt_uptime(seconds: float) -> str:
    """Coarse on purpose: an idle screen whose text does not change is not redrawn,
    and a ticking seconds counter alone would cost a redraw a second."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s // 60 % 60:02d}m"
    return f"{s // 86400}d{s // 3600 % 24:02d}h"


def usage_bar(row: MountRow, st: SuperState | None, width: int = BAR_WIDTH) -> Text:
    """`██████░░1░2░  52%`: used cells, then the L1/L2 marks where avail reaches them."""
    t = Text()
    stats = row.stats
    if stats is None or stats.usable <= 0:
        return t.append("-".center(width + 5), style="dim")
    frac = stats.used_fraction
    depth = st.thr_depth if st else 0
    fill = "red" if depth >= 2 or frac >= 0.95 else "yellow" if depth == 1 or frac >= 0.85 else "green"
    used = min(width, round(frac * width))
    cells = ["█"] * used + ["░"] * (width - used)
    styles = [fill] * used + ["dim"] * (width - used)
    for name, mark, style in (("L1", "1", "bold black on yellow"), ("L2", "2", "bold white on red")):
        level = st.levels.get(name) if st else None
        if level is None or level > stats.usable:
            continue
        pos = min(width - 1, int((1 - level / stats.usable) * width))
        cells[pos], styles[pos] = mark, style
    run = 0
    for k in range(1, width + 1):  # one span per run of equal style: fewer segments to draw
        if k == width or styles[k] != styles[run]:
            t.append("".join(cells[run:k]), style=styles[run])
            run = k
    t.append(f" {round(frac * 100):3d}%")
    return t


def thr_cell(st: SuperState | None) -> Text:
    if st is None or not st.levels:
        return Text("-", style="dim")
    marks = [Text("ok", style="green"), Text("L1", style="bold yellow"), Text("L2", style="bold red")]
    return marks[min(st.thr_depth, 2)]


def ro_cell(row: MountRow, st: SuperState | None = None) -> Text:
    if ro_by_error(row, st):
        return Text("RO!", style="bold white on red")
    return Text("ro", style="bold yellow") if row.read_only else Text("rw", style="dim")


def errors_cell(st: SuperState | None) -> Text:
    if st is None:
        return Text("0", style="dim")
    t = Text(fmt_count(st.errors), style="bold red" if st.errors else "dim")
    if st.errors_recorded is not None:
        t.append(f"/{fmt_count(st.errors_recorded)}", style="red" if st.errors_recorded else "dim")
    return t


def last_error_cell(st: SuperState | None, now: float) -> Text:
    e = st.last_error if st else None
    if e is None:
        return Text("-", style="dim")
    t = Text()
    where = inert(e.function) or inert(e.detail) or "?"
    if e.line and e.function:
        where += f":{e.line}"
    t.append(where, style="red")
    if e.errno_name:
        t.append(" " + inert(e.errno_name))
    t.append(f" {fmt_age(now - e.wall_time)}", style="dim")
    if e.historical:
        t.append(" hist", style="italic dim")
    return t


# -- the mounts table ------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[MountRow, SuperState | None, float], Text]
    min: int
    max: int
    right: bool = False
    shrink: int = 0  # order in which columns give up width, down to `min` (1 first); 0: fixed
    drop: int = 0  # order in which columns leave a narrow screen (1 first); 0: never


def _device(row: MountRow, st: SuperState | None, now: float) -> Text:
    t = Text(inert(row.mount.source))
    t.append(" " + row.mount.dev, style="dim")
    return t


def _avail(row: MountRow, st: SuperState | None, now: float) -> Text:
    a = avail_blocks(row, st)
    return Text("-" if a is None else str(a), style="dim" if a is None else "")


def _last_event(row: MountRow, st: SuperState | None, now: float) -> Text:
    if st is None or st.last_event is None:
        return Text("-", style="dim")
    return Text(fmt_age(now - st.last_event))


def _mount_point(row: MountRow, st: SuperState | None, now: float) -> Text:
    t = Text(inert(row.mount.mount_point), style="bold")
    if row.shadowed:
        t.append(" (under)", style="dim")
    return t


COLUMNS = (
    Column("MOUNT", _mount_point, 12, 40, shrink=3),
    Column("TYPE", lambda r, s, n: Text(inert(r.mount.fs_type)), 4, 10, drop=3),
    Column("DEVICE", _device, 10, 28, shrink=1, drop=1),
    Column("SIZE", lambda r, s, n: Text(fmt_bytes(r.stats.size_bytes) if r.stats else "-"), 5, 6, right=True, drop=2),
    Column("USAGE", lambda r, s, n: usage_bar(r, s), BAR_WIDTH + 5, BAR_WIDTH + 5),
    Column("AVAIL", _avail, 5, 12, right=True, drop=5),
    Column("THR", lambda r, s, n: thr_cell(s), 3, 3),
    Column("RO", lambda r, s, n: ro_cell(r, s), 3, 3),
    Column("ERRORS", lambda r, s, n: errors_cell(s), 6, 13, right=True),
    Column("LAST ERROR", lambda r, s, n: last_error_cell(s, n), 24, 48, shrink=2),
    Column("LAST EV", _last_event, 7, 7, right=True, drop=4),
)
GAP = 2


def _layout(columns: tuple[Column, ...], cells: list[list[Text]], width: int) -> list[tuple[Column, int, int]]:
    """(column, index into cells, width) for the columns that fit in `width`.

    Narrow screens first lose whole columns (by `drop`) until the minimum
    widths fit, then the flexible ones shrink in turn (by `shrink`): the device
    first, then the last error, the mount point last.
    """
    nat = [max(c.min, min(c.max, max([len(c.title)] + [row[i].cell_len for row in cells])))
           for i, c in enumerate(columns)]
    keep = list(range(len(columns)))

    def total(widths: list[int]) -> int:
        return sum(widths[i] for i in keep) + GAP * (len(keep) - 1)

    mins = [min(c.min, n) if c.shrink else n for c, n in zip(columns, nat)]
    for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: columns[i].drop):
        if total(mins) > width:
            keep.remove(i)
    for i in sorted((i for i in keep if columns[i].shrink), key=lambda i: columns[i].shrink):
        excess = total(nat) - width
        if excess <= 0:
            break
        nat[i] -= min(excess, nat[i] - mins[i])
    return [(columns[i], i, nat[i]) for i in keep]


def _fit(t: Text, w: int, right: bool) -> Text:
    t = t.copy()
    t.truncate(w, overflow="ellipsis")
    if right:
        t.pad_left(w - t.cell_len)
    else:
        t.pad_right(w - t.cell_len)
    return t


def mounts_table(model: TopModel, width: int, now: float, max_rows: int | None = None) -> list[Text]:
    pairs = model.visible_rows()
    hidden = 0
    if max_rows is not None and len(pairs) > max_rows:
        hidden = len(pairs) - (max_rows - 1)
        pairs = pairs[: max_rows - 1]
    cells = [[c.cell(r, st, now) for c in COLUMNS] for r, st in pairs]
    layout = _layout(COLUMNS, cells, width)
    head = Text(style="bold reverse", no_wrap=True, overflow="ellipsis")
    for k, (c, _, w) in enumerate(layout):
        head.append((" " * GAP if k else "") + (c.title.rjust(w) if c.right else c.title.ljust(w)))
    head.pad_right(max(0, width - head.cell_len))
    lines = [head]
    for (r, st), row_cells in zip(pairs, cells):
        line = Text(no_wrap=True, overflow="ellipsis")
        for k, (c, i, w) in enumerate(layout):
            if k:
                line.append(" " * GAP)
            line.append_text(_fit(row_cells[i], w, c.right))
        sev = severity(r, st)
        if sev >= 4:
            line.stylize("on #300000")
        lines.append(line)
    if not pairs:
        lines.append(Text("  no mounts match" + (f" filter {model.filter.text!r}" if model.filter.text else ""),
                          style="dim"))
    if hidden:
        lines.append(Text(f"  … {hidden} more mounts (/ to filter, --sort to order)", style="dim"))
    return lines


# -- header, feed, footer ----------------------------------------------------------
def header(model: TopModel, now: float) -> list[Text]:
    a = Text(no_wrap=True, overflow="ellipsis")
    a.append("fsev top", style="bold cyan")
    a.append(f"  {inert(model.host)}", style="bold")
    a.append(f"  Linux {inert(model.kernel)}")
    a.append(f"  up {fmt_uptime(now - model.started)}")
    a.append("   events ")
    a.append(str(model.total), style="bold")
    a.append(f"  {model.rate(now):.1f}/s")
    a.append("  drops ")
    a.append(str(model.drops_shown), style="bold white on red" if model.drops_shown else "green")
    # Sort, filter and pause first: the probe list (eleven points and
    # growing) is what the terminal's width may cut.
    b = Text(no_wrap=True, overflow="ellipsis")
    b.append("sort ", style="dim")
    b.append(model.sort)
    if model.filter.text:
        b.append("   filter ", style="dim")
        b.append(inert(model.filter.text), style="bold")
    if model.paused:
        b.append("   PAUSED", style="bold black on yellow")
        b.append(f" +{model.new_while_paused} new", style="yellow")
    b.append("   probes ", style="dim")
    for k, (point, rung) in enumerate(model.rungs):
        b.append(("  " if k else "") + f"{point} ")
        b.append(rung, style="green" if rung in ("kprobe", "tracepoint", "raw_tracepoint") else "yellow")
    return [a, b]


def feed_line(ev: Event) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    hist = ev.extra.get("historical")
    if hist:
        t.append("  historical ", style="italic")
    else:
        clock = time.strftime("%H:%M:%S", time.localtime(ev.wall_time))
        t.append(f"{clock}.{int(ev.wall_time * 1000) % 1000:03d} ", style="dim")
    style = CLASS_STYLE[ev.cls]
    t.append(f"{ev.cls.value:<4} {ev.type.value:<9} ", style=style)
    t.append(inert(ev.mount_point or ev.path or ("ring buffer" if ev.type is EventType.LOSS else "?")), style="bold")
    meta = " ".join(x for x in (inert(ev.fs_type), ev.dev) if x)
    if meta:
        t.append(f" ({meta})", style="dim")
    text = describe(ev)
    if ev.type is EventType.FS_ERROR and ev.extra.get("errcode_name"):
        text = " ".join(x for x in (f"{ev.function}:{ev.line}" if ev.line else ev.function,
                                    ev.extra["errcode_name"]) if x)
    t.append("  " + inert(text), style=style if ev.cls.value in ("err", "thr") else "")
    if hist:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.wall_time))
        t.append(f"  {hist} error recorded {when}, errors_count {ev.extra.get('errors_count')}", style="italic")
    if ev.pid is not None:
        t.append(f"  pid {ev.pid} ", style="cyan")
        t.append(inert(ev.comm), style="cyan")
    t.append(f"  [{inert(ev.rung)}]", style="dim")
    return t


def feed(model: TopModel, lines: int) -> list[Text]:
    return [feed_line(ev) for ev in model.visible_feed(lines)]


def footer(model: TopModel) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    if model.prompt is not None:
        t.append("filter: ", style="bold")
        t.append(inert(model.prompt))
        t.append("▏", style="blink")
        t.append("   Enter apply · Esc cancel · words: err warn info thr, or part of a mount point", style="dim")
        return t
    t.append(KEYS_HINT, style="dim")
    return t


def help_lines() -> list[Text]:
    out = [Text("keys and columns", style="bold")]
    for k, what in HELP:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"  {k:<11}", style="bold cyan")
        line.append(what)
        out.append(line)
    return out


def _rule(title: str, width: int) -> Text:
    t = Text(no_wrap=True, overflow="crop")
    t.append(f"── {title} ", style="bold")
    t.append("─" * max(0, width - t.cell_len), style="dim")
    return t


def render(model: TopModel, width: int, height: int | None, now: float) -> Group:
    """The whole screen. height None: natural height (every mount, the last 20 events), for --once."""
    top = header(model, now)
    if height is None:
        table = mounts_table(model, width, now)
        body = [*top, Text(""), *table, _rule("events, newest first", width), *feed(model, FEED_LINES_ONCE)]
        return Group(*body)
    fixed = len(top) + 1 + 1 + 1  # header, blank, feed rule, footer
    max_rows = max(2, height - fixed - 1 - MIN_FEED_LINES)  # -1: the table's own header line
    table = mounts_table(model, width, now, max_rows=max_rows)
    room = max(0, height - fixed - len(table))
    if model.show_help:
        lower = [_rule("help", width), *help_lines()[:room]]
    else:
        title = "events, newest first" + (" (paused)" if model.paused else "")
        lower = [_rule(title, width), *feed(model, room)]
    lines = [*top, Text(""), *table, *lower]
    lines += [Text("")] * max(0, height - 1 - len(lines))
    lines.append(footer(model))
    return Group(*lines[:height])
