"""Read-only state of mounts, and its transitions.

mount_read_only() answers "is this mount read-only, and why" from
/proc/self/mountinfo, which shows ext4's emergency read-only flag (6.12+)
where statfs does not. ReadOnlyTracker turns changes into `read_only`
events: `err` when an error caused them (linked to that error's seq),
`info` when an admin remounted.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import Mount, MountTable

EMERGENCY_RO = "emergency_ro"  # ext4 6.12+, after an error with errors=remount-ro
SHUTDOWN = "shutdown"  # ext4 shut down: errors=remount-ro on 6.7-6.11, or the shutdown ioctl
ABORTED = "aborted"  # ext4's journal aborted, writes refused (kernel record only: mountinfo does not show it)
SB_RDONLY = "sb_rdonly"  # the superblock is read-only (every mount of it)
MNT_READONLY = "mnt_readonly"  # only this mount is (mount -o remount,ro,bind)

# States the kernel records tell and mountinfo may not show (aborted never,
# shutdown only from 6.12): a table without them is no way back to
# read-write; ext4 keeps them until the filesystem is unmounted.
_KERNEL_ONLY = frozenset({ABORTED, SHUTDOWN})

DESCRIPTIONS = {
    EMERGENCY_RO: "read-only after an error (ext4 emergency_ro; statfs still says read-write)",
    SHUTDOWN: "shut down: no reads or writes (ext4; statfs still says read-write)",
    ABORTED: "read-only after an error (ext4 aborted; mountinfo and statfs still say read-write)",
    SB_RDONLY: "filesystem read-only",
    MNT_READONLY: "this mount read-only",
}


def mount_read_only(m: Mount) -> str | None:
    """Why a mount is read-only now (EMERGENCY_RO, SHUTDOWN, SB_RDONLY, MNT_READONLY), or
    None. Kernels from 6.7 to 6.11 set ext4's shutdown flag after an error
    without showing it in mountinfo: only the kernel record tells those."""
    if EMERGENCY_RO in m.super_options:
        return EMERGENCY_RO
    if SHUTDOWN in m.super_options:
        return SHUTDOWN
    if "ro" in m.super_options:
        return SB_RDONLY
    if "ro" in m.options:
        return MNT_READONLY
    return None


# Re-read mountinfo this long after an ext4 error, for transitions no kernel
# record reported (errors raised outside a syscall on the raw rung).
CHECK_DELAYS_S = (0.05, 0.3, 1.0)
# A transition this soon after an error on its device, or a remount call on
# its mount point, is attributed to it.
CAUSE_WINDOW_S = 3.0
CAUSE_SLACK_NS = 1_000_000


class ReadOnlyTracker:
    def __init__(self, table: MountTable, watched: Callable[[Mount], bool],
                 now: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.watched = watched
        self.now = now
        self._state: dict[int, str | None] = {m.mnt_id: mount_read_only(m) for m in table}
        self._generation = table.generation
        # dev -> (seq, kernel ts_ns) of its latest fs_errors
        self._errors: dict[str, deque[tuple[int, int]]] = {}
        self._calls: list[tuple[float, Event]] = []  # recent remount-like calls
        self._due: list[float] = []

    # -- inputs ------------------------------------------------------------
    def on_fs_error(self, ev: Event) -> None:
        """An emitted (numbered) fs_error event. On the flood path: cheap."""
        t = ev.ts_ns * 1e-9  # CLOCK_MONOTONIC, as self.now()
        recent = self._errors.get(ev.dev)  # type: ignore[arg-type]
        if recent is None:
            recent = self._errors[ev.dev] = deque(maxlen=64)  # type: ignore[index]
        recent.append((ev.seq, ev.ts_ns))
        if not self._due or self._due[-1] < t:  # a flood of errors shares one round of checks
            self._due += [t + d for d in CHECK_DELAYS_S]

    def on_mount_call(self, ev: Event) -> None:
        if ev.extra.get("action") in ("remount", "reconfigure", "setattr"):
            self._calls.append((self.now(), ev))

    def on_kernel_record(self, ev: Event) -> Event | None:
        """A kernel read_only record: the event to emit, or None when the
        mount table already told (and fsev reported) this transition."""
        read_only = bool(ev.extra.get("read_only"))
        flag = ev.extra.get("flag")
        new = flag if read_only else None
        mounts = self._mounts_of(ev.dev)
        changed = not mounts or any(self._state.get(m.mnt_id) != new for m in mounts)
        for m in mounts:
            self._state[m.mnt_id] = new
        if not changed:
            return None
        cause_ts = ev.extra.pop("_cause_ts", None)
        if ev.extra.get("cause") == "error":
            ev.cls = EventClass.ERR
            self._link_error(ev, cause_ts)
        else:
            ev.cls = EventClass.INFO
        return ev

    # -- the mount table ---------------------------------------------------
    def poll(self, make_event: Callable[..., Event]) -> list[Event]:
        now = self.now()
        if self._due and self._due[0] <= now:
            self._due = [t for t in self._due if t > now]
            self.table.refresh()
        self._calls = [(t, e) for t, e in self._calls if now - t < CAUSE_WINDOW_S]
        if self.table.generation == self._generation:
            return []
        self._generation = self.table.generation
        out: list[Event] = []
        seen: set[int] = set()
        for m in self.table:
            seen.add(m.mnt_id)
            new = mount_read_only(m)
            if m.mnt_id not in self._state:
                self._state[m.mnt_id] = new  # a new mount: no transition
                continue
            old = self._state[m.mnt_id]
            if new == old or (new is None and old in _KERNEL_ONLY):
                continue
            self._state[m.mnt_id] = new
            if self.watched(m):
                out.append(self._transition(m, old, new, make_event))
        for gone in set(self._state) - seen:
            del self._state[gone]
        return out

    def _transition(self, m: Mount, old: str | None, new: str | None, make_event: Callable[..., Event]) -> Event:
        now = self.now()
        call = next((e for t, e in reversed(self._calls) if self._call_names(e, m)), None)
        err = self._errors.get(m.dev)
        recent_error = bool(err) and now - err[-1][1] * 1e-9 < CAUSE_WINDOW_S  # type: ignore[index]
        by_error = new == EMERGENCY_RO or (new is not None and call is None and recent_error)
        if new == SHUTDOWN:  # the ioctl (a tool asked) unless an error just came
            by_error = recent_error
        ev = make_event(
            cls=EventClass.ERR if by_error else EventClass.INFO, type=EventType.READ_ONLY, rung="polled",
            dev=m.dev, mount_point=m.mount_point, fs_type=m.fs_type, source=m.source, mnt_id=m.mnt_id,
            extra={"read_only": new is not None, "flag": new or old,
                   "cause": "error" if by_error else "remount"},
        )
        if by_error:
            self._link_error(ev, None)
        elif call is not None:
            ev.pid, ev.tgid, ev.comm = call.pid, call.tgid, call.comm
            if "call" in call.extra:
                ev.extra["call"] = call.extra["call"]
        return ev

    @staticmethod
    def _call_names(call: Event, m: Mount) -> bool:
        # fsconfig works on an fd: any recent reconfigure may be the one. A
        # remount changes the superblock, so every mount of it follows.
        return call.extra.get("action") == "reconfigure" or call.mount_point == m.mount_point \
            or call.path == m.mount_point or (call.dev == m.dev and call.extra.get("action") == "remount")

    def _link_error(self, ev: Event, cause_ts: int | None) -> None:
        """The error that caused a transition: with the kernel's timestamp of
        the error handling that made it (kernel records), the last error on
        the device up to then (ext4 turns read-only inside the error's own
        handling; a second error may follow before the record is sent);
        else the last error on the device."""
        recent = self._errors.get(ev.dev or "")
        if not recent or self.now() - recent[-1][1] * 1e-9 >= CAUSE_WINDOW_S:
            return
        if cause_ts:
            # The error's own record and the handling are a few µs apart
            # (and on the raw rung taken by two programs in either order).
            before = [seq for seq, ts in recent if ts <= cause_ts + CAUSE_SLACK_NS]
            if before:
                ev.extra["caused_by_seq"] = before[-1]
                return
        ev.extra["caused_by_seq"] = recent[-1][0]

    def _mounts_of(self, dev: str | None) -> list[Mount]:
        if dev is None:
            return []
        major, _, minor = dev.partition(":")
        return self.table.by_dev(int(major), int(minor))

    def read_only_mounts(self) -> dict[str, str]:
        """Mount point -> reason, for every mount read-only now (for `top`)."""
        return {m.mount_point: r for m in self.table if (r := mount_read_only(m))}
