"""Rendering kernel- and filesystem-supplied strings inert.

comm, paths, mount sources and function names come from outside: none of them
may carry a terminal escape sequence or rich markup into the user's screen.
"""

from __future__ import annotations


def inert(s: str | None) -> str:
    """Replace control characters (C0, DEL, C1) with visible \\xNN escapes."""
    if s is None:
        return ""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in s)
