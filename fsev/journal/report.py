"""`fsev report`: what a journal says happened, per mount, for an incident ticket.

build_report() is a pure function from a journal's recordings, events (as
their JSON objects) and loss rows to a JSON-ready dict; render_report() turns
that dict into rich tables. Events are read as JSON, not as Event objects, so
a journal holding event types newer than this fsev still reports (they are
counted under "other").
"""

from __future__ import annotations

import errno as errno_mod
import time
from dataclasses import asdict
from typing import Any, Iterable

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fsev.events.inert import inert
from fsev.journal.store import FORMAT_VERSION, Journal, Recording, Trimmed
from fsev.journal.timewindow import TimeWindow

# Event types of the "rest of the seeds" work (read-only transitions, ENOSPC):
# named here so their sections fill in once the events exist.
READ_ONLY_TYPES = frozenset({"read_only"})
# A device's own error counters grew (btrfs member devices): summed per device.
DEVICE_ERROR_TYPES = frozenset({"device_errors"})
ENOSPC_TYPES = frozenset({"enospc"})
SHUTDOWN_TYPES = frozenset({"shutdown"})
NO_MOUNT = "(no mount)"


def _mount_entry(mp: str) -> dict[str, Any]:
    return {
        "mount_point": mp, "fs_types": [], "devs": [], "sources": [], "events": 0,
        "first": None, "last": None, "errors": [], "thresholds": [], "read_only": [],
        "shutdowns": [], "unmounts": [], "enospc": {"count": 0, "first": None, "last": None}, "other": {},
        "device_errors": {},
    }


def _add_unique(lst: list[Any], v: Any) -> None:
    if v is not None and v not in lst:
        lst.append(v)


def error_detail(d: dict[str, Any]) -> str | None:
    """What an fs_error names besides function and line (XFS: the scope, group
    and structures of a health mark, a btree, a verifier), to group it by."""
    parts = [str(d[k]) for k in ("scope", "group") if d.get(k) is not None]
    if d.get("structures"):
        parts.append(",".join(map(str, d["structures"])))
    for k in ("btree", "verifier"):
        if d.get(k):
            parts.append(f"{k} {d[k]}")
    return " ".join(parts) or None


def _span(entry: dict[str, Any], t: float) -> None:
    if entry["first"] is None or t < entry["first"]:
        entry["first"] = t
    if entry["last"] is None or t > entry["last"]:
        entry["last"] = t


def build_report(
    path: str, recordings: list[Recording], events: Iterable[dict[str, Any]], losses: list[dict[str, Any]],
    window: TimeWindow | None = None, trimmed: Trimmed | None = None,
) -> dict[str, Any]:
    """window: the report covers only it (recordings, events and losses outside it are left
    out, and the span is cut to it). trimmed: what retention deleted, said in the report."""
    if window is not None and window.bounded:
        losses = [x for x in losses if window.contains(x["wall_time"])]
    else:
        window = None
    mounts: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[tuple[Any, Any, Any, Any, Any], dict[str, Any]]] = {}
    per_recording: dict[int, dict[str, Any]] = {
        r.id: {"events": 0, "first": None, "last": None} for r in recordings
    }
    loss_events = 0
    for d in events:
        rec = d.get("_recording")
        t = float(d.get("wall_time") or 0.0)
        if rec in per_recording:
            pr = per_recording[rec]
            pr["events"] += 1
            _span(pr, t)
        typ = d.get("type")
        if typ == "loss":
            loss_events += 1
            continue
        mp = d.get("mount_point") or NO_MOUNT
        m = mounts.setdefault(mp, _mount_entry(mp))
        m["events"] += 1
        _span(m, t)
        _add_unique(m["fs_types"], d.get("fs_type"))
        _add_unique(m["devs"], d.get("dev"))
        _add_unique(m["sources"], d.get("source"))
        who = {"pid": d.get("pid"), "comm": d.get("comm")}
        if typ == "fs_error":
            # An error that names no function (a btrfs checksum failure) is told by its
            # message; one that names a structure (an XFS health mark) by that too.
            key = (d.get("function"), d.get("line"), d.get("errno"), None if d.get("function") else d.get("message"),
                   error_detail(d))
            g = errors.setdefault(mp, {}).get(key)
            if g is None:
                g = errors[mp][key] = {
                    "function": key[0], "line": key[1], "errno": key[2], "message": key[3], "detail": key[4],
                    "errno_name": d.get("errno_name"), "count": 0, "first": t, "last": t, "comms": [],
                    "transaction_aborts": 0,
                }
            if d.get("transaction_abort"):
                g["transaction_aborts"] += 1
            g["count"] += 1
            g["first"], g["last"] = min(g["first"], t), max(g["last"], t)
            if len(g["comms"]) < 5:
                _add_unique(g["comms"], d.get("comm"))
            if d.get("errno") == errno_mod.ENOSPC:
                _count_enospc(m, t, 1)
        elif typ == "threshold":
            m["thresholds"].append({
                "wall_time": t, "level": d.get("level"), "direction": d.get("direction"),
                "avail_blocks": d.get("avail_blocks"), "level_blocks": d.get("level_blocks"), **who,
            })
        elif typ == "umount":
            m["unmounts"].append({"wall_time": t, "lazy": bool(d.get("lazy")), "rung": d.get("rung"), **who})
        elif typ in READ_ONLY_TYPES:
            m["read_only"].append({"wall_time": t, "class": d.get("class"), "read_only": d.get("read_only"),
                                   "flag": d.get("flag"), "cause": d.get("cause"),
                                   "caused_by_seq": d.get("caused_by_seq"), **who})
        elif typ in SHUTDOWN_TYPES:
            m["shutdowns"].append({"wall_time": t, "seq": d.get("seq"), "reasons": list(d.get("reasons") or []),
                                   "file": d.get("file"), "line": d.get("line"), **who})
        elif typ in DEVICE_ERROR_TYPES:
            dev_key = str(d.get("device") or d.get("devid") or "?")
            de = m["device_errors"].setdefault(dev_key, {"device": dev_key, "devid": d.get("devid"), "increases": {},
                                                         "totals": {}, "events": 0, "first": None, "last": None})
            de["events"] += 1
            _span(de, t)
            for k, v in (d.get("counters") or {}).items():
                de["increases"][k] = de["increases"].get(k, 0) + int(v)
            de["totals"] = dict(d.get("totals") or {})
        elif typ in ENOSPC_TYPES:
            # A storm may arrive as one event carrying a count.
            n = d.get("count")
            _count_enospc(m, t, n if isinstance(n, int) and n > 0 else 1)
        else:
            m["other"][str(typ)] = m["other"].get(str(typ), 0) + 1
    for mp, groups in errors.items():
        mounts[mp]["errors"] = sorted(groups.values(), key=lambda g: (-g["count"], g["first"]))
    if window is not None:  # the recordings that ran in the window or have events in it
        recordings = [r for r in recordings if per_recording[r.id]["events"] or _overlaps(r, window)]
    recs = []
    for r in recordings:
        pr = per_recording[r.id]
        lost = sum(x["lost"] for x in losses if x["recording"] == r.id)
        recs.append({
            **{k: v for k, v in asdict(r).items() if k != "events"},
            "clean_stop": r.clean, "events": pr["events"], "lost": lost,
            "first_event": pr["first"], "last_event": pr["last"],
        })
    starts = [r.started_at for r in recordings]
    starts += [pr["first"] for pr in per_recording.values() if pr["first"] is not None]
    ends = [r.stopped_at or r.last_commit_at or r.started_at for r in recordings]
    ends += [pr["last"] for pr in per_recording.values() if pr["last"] is not None]
    span = None
    if starts:
        start, end = min(starts), max(ends)
        if window is not None:
            start = start if window.since is None else max(start, window.since)
            end = end if window.until is None else min(end, window.until)
        span = {"start": start, "end": end, "seconds": max(0.0, end - start)}
    return {
        "journal": path,
        "format_version": FORMAT_VERSION,
        "window": None if window is None else {"since": window.since, "until": window.until},
        # Deleted by retention: events numbered 1..through are gone (fsev serve's flight recorder).
        "trimmed": None if trimmed is None else {"through": trimmed.through, "events": trimmed.events,
                                                  "bytes": trimmed.bytes, "at": trimmed.at},
        "span": span,
        "recordings": recs,
        "drops": {
            # The kernel counts drops per ring buffer: it cannot say which mount a dropped record was for.
            "lost_total": sum(x["lost"] for x in losses),
            "loss_records": losses,
            "unclean_stops": [r.id for r in recordings if not r.clean],
        },
        "mounts": sorted(mounts.values(), key=lambda m: (-sum(g["count"] for g in m["errors"]), m["mount_point"])),
    }


def _count_enospc(m: dict[str, Any], t: float, n: int) -> None:
    e = m["enospc"]
    e["count"] += n
    e["first"] = t if e["first"] is None else min(e["first"], t)
    e["last"] = t if e["last"] is None else max(e["last"], t)


def _overlaps(r: Recording, w: TimeWindow) -> bool:
    # Never stopped cleanly: it may have run on past its last commit, up to now.
    end = r.stopped_at if r.stopped_at is not None else float("inf")
    return (w.until is None or r.started_at < w.until) and (w.since is None or end >= w.since)


def report_journal(path: str, window: TimeWindow | None = None) -> dict[str, Any]:
    with Journal.open(path) as j:
        recordings = j.recordings()

        def events() -> Iterable[dict[str, Any]]:
            for rec in j.records(window=window):
                d = rec.json()
                d["_recording"] = rec.recording
                yield d

        return build_report(path, recordings, events(), j.losses(), window, j.trimmed())


# -- rendering ---------------------------------------------------------------
def _t(x: float | None) -> str:
    if x is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x)) + f".{int(x * 1000) % 1000:03d}"


def _cell(s: Any) -> Text:
    """Kernel and filesystem strings, inert: no markup, no escape sequences."""
    return Text(inert(None if s is None else str(s)))


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def render_report(rep: dict[str, Any]) -> Group:
    parts: list[Any] = []
    span = rep["span"]
    head = Text()
    head.append("fsev report ", style="bold")
    head.append(inert(rep["journal"]))
    if span:
        head.append(f"\nspan: {_t(span['start'])} → {_t(span['end'])} ({_duration(span['seconds'])}); "
                    f"times are local ({time.strftime('%z')})")
    w = rep.get("window")
    if w:
        head.append(f"\nwindow: {_t(w['since']) if w['since'] is not None else 'the start'} → "
                    f"{_t(w['until']) if w['until'] is not None else 'the end'} (events outside it left out)")
    tr = rep.get("trimmed")
    if tr:
        head.append(f"\nretention: events 1-{tr['through']} deleted ({tr['events']} events, {tr['bytes']} bytes; "
                    f"latest trim {_t(tr['at'])})", style="dim")
    drops = rep["drops"]
    head.append("\ndrops: ")
    head.append(f"{drops['lost_total']} events lost in the kernel ring buffer",
                style="bold red" if drops["lost_total"] else "green")
    if drops["unclean_stops"]:
        head.append(f"; recording {', '.join(map(str, drops['unclean_stops']))} ended without a clean stop "
                    "(events of its last batch interval may be missing)", style="bold yellow")
    for r in rep["recordings"]:
        head.append(f"\n\nrecording {r['id']} ({r['command']})", style="bold")
        head.append(f": host {inert(r['host'])}, kernel {inert(r['kernel'])}, fsev {inert(r['fsev_version'])}")
        head.append(f"\n  started {_t(r['started_at'])}, ")
        if r["clean_stop"]:
            head.append(f"stopped {_t(r['stopped_at'])} ({inert(r['stop_reason'])})")
        else:
            head.append(f"ended without a clean stop; last commit {_t(r['last_commit_at'])}", style="yellow")
        head.append(f"; {r['events']} events, {r['lost']} lost")
        argv = r["options"].get("argv")
        if argv:
            head.append(f"\n  started as: fsev {inert(' '.join(argv))}")
        for p in r["plan"]:
            targets = ", ".join(p.get("targets") or [])
            head.append(f"\n  {p['point']}: {p['kind']}" + (f" ({inert(targets)})" if targets else ""))
            if p.get("misses"):
                head.append(f"; misses {inert(p['misses'])}", style="dim")
            for why in p.get("skipped") or []:
                head.append(f"; skipped {inert(why)}", style="dim")
    parts.append(head)
    if not rep["mounts"]:
        parts.append(Text("\nno events recorded"))
    for m in rep["mounts"]:
        parts.extend(_render_mount(m))
    return Group(*parts)


def _render_mount(m: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    title = Text("\n")
    title.append(inert(m["mount_point"]), style="bold underline")
    meta = "; ".join(f"{name} {', '.join(inert(x) for x in m[key])}"
                     for key, name in (("fs_types", "type"), ("devs", "dev"), ("sources", "source")) if m[key])
    title.append(f"  ({meta})" if meta else "")
    title.append(f"  {m['events']} events, {_t(m['first'])} → {_t(m['last'])}")
    enospc = m["enospc"]
    title.append(f"\n  ENOSPC: {enospc['count']}" + (f" ({_t(enospc['first'])} → {_t(enospc['last'])})"
                                                      if enospc["count"] else ""))
    if m["other"]:
        title.append("\n  other events: " + ", ".join(f"{inert(k)} ×{v}" for k, v in sorted(m["other"].items())))
    out.append(title)
    if m["errors"]:
        t = Table(title="errors", title_justify="left")
        t.add_column("function:line (what)", overflow="fold")
        t.add_column("errno")
        t.add_column("count", justify="right")
        t.add_column("first", no_wrap=True)
        t.add_column("last", no_wrap=True)
        t.add_column("by", overflow="fold")
        for g in m["errors"]:
            where = f"{g['function']}:{g['line']}" if g["line"] and g["function"] else (
                g["function"] or g.get("message") or "")
            if g.get("detail"):
                where = f"{where} ({g['detail']})" if where else g["detail"]
            if g.get("transaction_aborts"):
                where += f" (transaction abort ×{g['transaction_aborts']})"
            err = f"{g['errno_name']} ({g['errno']})" if g["errno"] is not None else "-"
            t.add_row(_cell(where or "?"), err, str(g["count"]), _t(g["first"]), _t(g["last"]),
                      _cell(", ".join(c for c in g["comms"] if c)))
        out.append(t)
    if m["thresholds"]:
        t = Table(title="threshold crossings", title_justify="left")
        for col in ("time", "level", "direction", "available blocks", "level blocks", "by"):
            t.add_column(col)
        for x in m["thresholds"]:
            t.add_row(_t(x["wall_time"]), _cell(x["level"]), _cell(x["direction"]), str(x["avail_blocks"]),
                      str(x["level_blocks"]), _cell(f"{x['comm'] or ''} {x['pid'] or ''}".strip()))
        out.append(t)
    if m.get("device_errors"):
        t = Table(title="device error counters (increases seen; totals at the last reading)", title_justify="left")
        for col in ("device", "devid", "increases", "totals", "first", "last"):
            t.add_column(col, overflow="fold")
        for x in m["device_errors"].values():
            t.add_row(_cell(x["device"]), str(x["devid"] if x["devid"] is not None else "-"),
                      _cell(", ".join(f"{k} +{v}" for k, v in sorted(x["increases"].items()))),
                      _cell(", ".join(f"{k} {v}" for k, v in sorted(x["totals"].items()) if v) or "0"),
                      _t(x["first"]), _t(x["last"]))
        out.append(t)
    if m["shutdowns"]:
        t = Table(title="shutdowns", title_justify="left")
        for col in ("time", "reasons", "where", "by"):
            t.add_column(col)
        for x in m["shutdowns"]:
            where = f"{x['file']}:{x['line']}" if x.get("file") else "-"
            t.add_row(_t(x["wall_time"]), _cell(", ".join(x["reasons"]) or "-"), _cell(where),
                      _cell(f"{x['comm'] or ''} {x['pid'] or ''}".strip()))
        out.append(t)
    for key, name in (("read_only", "read-only transitions"), ("unmounts", "unmounts")):
        if m[key]:
            t = Table(title=name, title_justify="left")
            for col in ("time", "detail", "by"):
                t.add_column(col)
            for x in m[key]:
                detail = ("lazy" if x.get("lazy") else "") if key == "unmounts" else _read_only_detail(x)
                t.add_row(_t(x["wall_time"]), detail, _cell(f"{x['comm'] or ''} {x['pid'] or ''}".strip()))
            out.append(t)
    return out


def _read_only_detail(x: dict[str, Any]) -> str:
    """e.g. "err: read-only (shutdown) after an error (#4)"."""
    text = str(x.get("class") or "")
    if x.get("read_only") is not None:
        text += (": read-only" if x["read_only"] else ": read-write") + (f" ({x['flag']})" if x.get("flag") else "")
    if x.get("cause") == "error":
        text += " after an error" + (f" (#{x['caused_by_seq']})" if x.get("caused_by_seq") is not None else "")
    elif x.get("cause"):
        text += f" by {x['cause']}"
    return text


def print_report(rep: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = max(console.width, 120)  # for pasting into a ticket, not 80 columns
    console.print(render_report(rep))
