"""Typed events: what every part of fsev past the ring-buffer boundary sees.

The names of fsev.events.event, so `from fsev.events import Event` reads as
what it is."""

from fsev.events.event import ALL_CLASSES, INTERNAL_TYPES, Event, EventClass, EventType, errno_name

__all__ = ["ALL_CLASSES", "INTERNAL_TYPES", "Event", "EventClass", "EventType", "errno_name"]
