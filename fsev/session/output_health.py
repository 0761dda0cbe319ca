"""The event-specific part of a human line, for the health events."""

from __future__ import annotations

from fsev.events import Event, EventType
from fsev.points.readonly import DESCRIPTIONS


def describe_health(ev: Event) -> str:
    x = ev.extra
    t = ev.type
    if t is EventType.READ_ONLY:
        if not x.get("read_only"):
            return "read-write again" + (f" ({x['call']})" if x.get("call") else "")
        text = DESCRIPTIONS.get(x.get("flag") or "", "read-only")
        if x.get("cause") == "error":
            text += f", after error #{x['caused_by_seq']}" if "caused_by_seq" in x else ", after an error"
        elif x.get("call"):
            text += f" ({x['call']})"
        return text
    if t is EventType.ENOSPC:
        what = f"{x.get('call', '?')}: no space ({x.get('space', 'data')})"
        if ev.path:
            what += f" {ev.path}"
        if x.get("storm"):
            return f"{x.get('count')} more ENOSPC ({x.get('count_total')} in all), last {what}"
        return what
    if t is EventType.BLOCK_IO_ERROR:
        err = f"{ev.errno_name}({ev.errno})" if ev.errno is not None else f"blk_status {x.get('blk_status')}"
        where = f"sector {x.get('sector')} +{x.get('bytes')}B"
        return f"{x.get('rwbs', 'I/O')} {err} {where}"
    if t is EventType.WB_ERROR:
        return f"writeback {ev.errno_name}({ev.errno}) inode {ev.inode}"
    if t is EventType.MOUNT:
        action = x.get("action", "mount")
        if "from" in x:
            return f"{action} from {x['from']}"
        if action == "remount" and "read_only" in x:
            return f"remount {'ro' if x['read_only'] else 'rw'}"
        return action
    return ""
