"""The service's socket protocol: newline-delimited JSON over a Unix stream socket.

A client sends one request line and reads reply lines:
- `{"op": "listen", "filter": {...}, "name": "trace"}` -> `{"ok": true, "hello": {...}}`,
  then one event per line, exactly as `fsev trace --json` prints it;
- `{"op": "config", "text": "LINES"}` -> `{"ok": true, "config": "EFFECTIVE"}`
  or `{"ok": false, "error": "line 1: ..."}`;
- `{"op": "show"}` -> `{"ok": true, "config": "EFFECTIVE", "watching": [...]}`;
- `{"op": "status"}` -> `{"ok": true, "status": {...}}`.
A listener sends nothing after its request: anything more is garbage, and it
is dropped. JSON lines rather than a binary format: the events already exist
as JSON lines (journal, `trace --json`), so each is serialised once and the
same bytes go to every listener, the journal and `--json` output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fsev.errors import FsevError
from fsev.events import ALL_CLASSES, Event, EventClass, EventType

DEFAULT_SOCKET = "/run/fsev/fsev.sock"
PROTOCOL_VERSION = 1
# A request is one short line; anything longer is not a client of ours.
MAX_REQUEST_BYTES = 1 << 20
_LOSS = EventType.LOSS


class ProtocolError(FsevError):
    """A request or reply that does not follow the protocol; str() is one line."""


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


@dataclass(frozen=True)
class ListenFilter:
    """What one listener asked for: classes, and mounts by mount point or
    device (major:minor). A listener in another mount namespace names its
    mounts by the paths it sees; the device is what both sides agree on.
    No mounts: every mount the service watches."""

    classes: frozenset[EventClass] = ALL_CLASSES
    mount_points: frozenset[str] = frozenset()
    devs: frozenset[str] = frozenset()

    @property
    def every_mount(self) -> bool:
        return not self.mount_points and not self.devs

    def matches(self, ev: Event) -> bool:
        if ev.type is _LOSS:
            return True  # whatever the filter, a listener must know what it did not get
        if ev.cls not in self.classes:
            return False
        if self.every_mount or ev.mount_point is None and ev.dev is None:
            return True  # loss reports and the like concern every listener
        return ev.mount_point in self.mount_points or ev.dev in self.devs

    def to_json(self) -> dict[str, Any]:
        return {"classes": sorted(c.value for c in self.classes), "mount_points": sorted(self.mount_points),
                "devs": sorted(self.devs)}

    @classmethod
    def from_json(cls, d: Any) -> "ListenFilter":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ProtocolError("filter: not an object")
        try:
            classes = frozenset(EventClass(c) for c in d.get("classes", [c.value for c in ALL_CLASSES]))
            points = frozenset(_strings(d.get("mount_points", []), "mount_points"))
            devs = frozenset(_strings(d.get("devs", []), "devs"))
        except (ValueError, TypeError):
            raise ProtocolError("filter: bad classes") from None
        return cls(classes, points, devs)


def _strings(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ProtocolError(f"filter: {what} is not a list of strings")
    return v
