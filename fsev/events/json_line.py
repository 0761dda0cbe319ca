"""An event's JSON line, fast: the recorder's hot path.

event_json(ev) returns exactly the text JsonSink prints for ev
(json.dumps(ev.to_json_dict(), separators=(",", ":"))), in about half the
time. Two things make it fast:
- scalars are formatted directly, strings with the json module's own C
  escaper (what json.dumps uses with ensure_ascii);
- in a flood, events differ in seq and time but rarely in the rest (same
  mount, function, task): the text of the optional fields is remembered,
  keyed by their values *and types* (True == 1 in a dict key, but not in JSON;
  floats, where 0.0 == -0.0, are never remembered).
Anything it does not handle the same way for certain (extra keys, a
non-finite float, a value of another type) takes the general path.
tests/unit/journal/test_journal_store.py checks the two agree on arbitrary events.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii as _str
from operator import attrgetter
from typing import Any

from fsev.events.event import _OPTIONAL_FIELDS, Event, errno_name

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_optional = attrgetter(*_OPTIONAL_FIELDS)
_KEYS = tuple(f',"{name}":' for name in _OPTIONAL_FIELDS)
_ERRNO = _OPTIONAL_FIELDS.index("errno")
_int = int.__repr__
_float = float.__repr__
_MEMO_MAX = 1024
_memo: dict[tuple[Any, ...], str | None] = {}


def _scalar(v: Any) -> str | None:
    # Any: the tests below narrow on the exact type (so a bool is not taken for an int); mypy follows none.
    t = type(v)
    if t is str:
        return _str(v)
    if t is int:
        return _int(v)
    if t is bool:
        return "true" if v else "false"
    if t is float and math.isfinite(v):
        return _float(v)
    return None


def _optional_text(values: tuple[Any, ...]) -> str | None:
    out = []
    for key, v in zip(_KEYS, values):
        if v is None:
            continue
        text = _scalar(v)
        if text is None:
            return None
        out.append(key)
        out.append(text)
    err = values[_ERRNO]
    if err is not None:
        name = _scalar(errno_name(err))
        if name is None:
            return None
        out.append(',"errno_name":')
        out.append(name)
    return "".join(out)


# The last event serialised and its line: a recorder that also shows (a
# journal and a JSON sink), or the hub and a service's own journal, take the
# same event one after the other, and it is serialised once. Identity, not
# equality: the entry holds the event, so no other can have its id; its seq is
# checked too, as that is the one field set after an event is made.
_last: tuple[Event | None, int, str] = (None, 0, "")


def event_json(ev: Event) -> str:
    global _last
    last = _last
    if last[0] is ev and last[1] == ev.seq:
        return last[2]
    line = _event_json(ev)
    _last = (ev, ev.seq, line)
    return line


def _event_json(ev: Event) -> str:
    if not ev.extra:
        values = _optional(ev)
        types = tuple(map(type, values))
        if float in types:  # 0.0 == -0.0 as keys, not in JSON; no optional field is a float anyway
            tail = _optional_text(values)
        else:
            key = (values, types)
            try:
                tail = _memo[key]
            except KeyError:
                if len(_memo) >= _MEMO_MAX:
                    _memo.clear()
                tail = _memo[key] = _optional_text(values)
            except TypeError:  # an unhashable value: not a scalar anyway
                tail = None
        head = (_scalar(ev.seq), _scalar(ev.ts_ns), _scalar(ev.wall_time), _scalar(ev.rung))
        if tail is not None and None not in head:
            return (f'{{"seq":{head[0]},"ts_ns":{head[1]},"wall_time":{head[2]},"class":{_str(ev.cls.value)},'
                    f'"type":{_str(ev.type.value)},"rung":{head[3]}{tail}}}')
    return _dumps(ev.to_json_dict())
