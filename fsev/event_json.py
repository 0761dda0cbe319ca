"""An event's JSON line, fast: the recorder's hot path.

event_json(ev) returns exactly the text JsonSink prints for ev
(json.dumps(ev.to_json_dict(), separators=(",", ":"))), in about half the
time, by formatting the scalar fields directly with the json module's own C
string escaper. Anything it does not handle the same way for certain (extra
keys, a non-finite float, a value of another type) takes the general path.
tests/test_journal.py checks the two agree on arbitrary events.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii as _str  # what json.dumps uses with ensure_ascii
from operator import attrgetter

from .events import _OPTIONAL_FIELDS, Event

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_optional = attrgetter(*_OPTIONAL_FIELDS)
_KEYS = tuple(f',"{name}":' for name in _OPTIONAL_FIELDS)
_int = int.__repr__
_float = float.__repr__


class _General(Exception):
    pass


def _scalar(v: object) -> str:
    t = type(v)
    if t is str:
        return _str(v)
    if t is int:
        return _int(v)
    if t is bool:
        return "true" if v else "false"
    if t is float and math.isfinite(v):
        return _float(v)
    raise _General


def event_json(ev: Event) -> str:
    if ev.extra:
        return _dumps(ev.to_json_dict())
    try:
        out = ['{"seq":', _scalar(ev.seq), ',"ts_ns":', _scalar(ev.ts_ns), ',"wall_time":', _scalar(ev.wall_time),
               ',"class":', _str(ev.cls.value), ',"type":', _str(ev.type.value), ',"rung":', _scalar(ev.rung)]
        for key, v in zip(_KEYS, _optional(ev)):
            if v is not None:
                out.append(key)
                out.append(_scalar(v))
        if ev.errno is not None:
            name = ev.errno_name
            out.append(',"errno_name":')
            out.append(_scalar(name))
    except _General:
        return _dumps(ev.to_json_dict())
    out.append("}")
    return "".join(out)
