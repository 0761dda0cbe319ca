"""Probe point mount_topology: mount, bind, move, remount/reconfigure, and
drops no umount(2) made (a mount namespace torn down) (bpf/mount_topology.bpf.c).

Ladder: fanotify mount-namespace marks with the syscall tracepoints beside
them (6.15+), else the syscall tracepoints alone. No kprobe rung: the attach
paths are static functions whose signatures change every few releases
(attach_recursive_mnt, 6.16), and drops have their own kprobe rung
(mount_drop, cleanup_mnt).

Two sources, joined per process:
- the syscall tracepoints (any namespace): who, which call, target as passed,
  flags; sent when the call succeeded;
- on 6.15+, fanotify mount-namespace marks (FAN_MNT_ATTACH/DETACH): every
  attach and detach in a marked namespace with the mount's unique id; fsev
  marks its own namespace and each new one the tracepoints announce (unshare,
  clone with CLONE_NEWNS). A namespace's mounts are all reported detached
  when its last task leaves: those made inside it become `umount` events.
Each fanotify event names no namespace, so each namespace gets its own group.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import FSEV_H, Call, RecordClass, RecordType, c_string
from fsev.linux.fanotify import FAN_MNT_ATTACH, FAN_MNT_DETACH, FanEvent, MntnsWatch
from fsev.linux.mountinfo import MountTable
from fsev.linux.statmount import MountInfo, listmount, statmount
from fsev.probes.ladder import Rung, RungKind
from fsev.probes.point import Point, PointMonitor, SessionContext
from fsev.probes.program import ProgramConfig

NAME = "mount_topology"
# mount(2) is required; the others exist from 5.2 (move_mount, fsconfig) and
# 5.12 (mount_setattr) and are attached where present.
MOUNT_CALL_TRACEPOINTS = tuple(
    f"syscalls:sys_{side}_{call}" for call in ("mount", "move_mount", "fsconfig", "mount_setattr")
    for side in ("enter", "exit")
)
MOUNT_CALL_REQUIRED = ("syscalls:sys_enter_mount", "syscalls:sys_exit_mount")
NS_TRACEPOINTS = tuple(
    f"syscalls:sys_{side}_{call}" for call in ("unshare", "clone", "clone3") for side in ("enter", "exit")
)
OFFSETS = ("task_struct.nsproxy", "nsproxy.mnt_ns", "mnt_namespace.ns.inum")

# mount(2) flags (include/uapi/linux/mount.h), as the kernel record carries them.
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = FSEV_H.FSEV_MS_BIND
MS_MOVE = FSEV_H.FSEV_MS_MOVE
MS_PROPAGATION = (1 << 15) | (1 << 17) | (1 << 18) | (1 << 19)  # UNBINDABLE, PRIVATE, SLAVE, SHARED
# move_mount(2) flag: the source is a detached mount (fsmount / open_tree).
MOVE_MOUNT_F_EMPTY_PATH = 0x4
FSCONFIG_CMD_RECONFIGURE = FSEV_H.FSEV_FSCONFIG_CMD_RECONFIGURE

# How long a syscall record and its fanotify event wait for each other.
GRACE_S = 0.2
MAX_NAMESPACES = 256
NS_SWEEP_S = 5.0
JOINED = ("mount", "bind", "move", "attach")


@dataclass
class _Ns:
    ino: int
    ns_id: int  # 64-bit id for statmount/listmount; 0 if the kernel has none
    watch: MntnsWatch
    own: bool


def ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


class Topology:
    def __init__(self, table: MountTable, make_event: Callable[..., Event], fanotify: bool,
                 mark_all_namespaces: bool, now: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.make_event = make_event
        self.now = now
        self.fanotify = fanotify
        self._own_ino = ns_inode("/proc/self/ns/mnt")
        self._ns: dict[int, _Ns] = {}
        self._made: dict[int, MountInfo] = {}  # unique id -> a mount made in another namespace
        self._calls: list[tuple[float, Event]] = []
        self._attaches: list[tuple[float, FanEvent, _Ns, MountInfo | None]] = []
        self._detaches: list[tuple[float, FanEvent, _Ns, MountInfo]] = []
        self._umounts: dict[int, float] = {}  # tgid -> when it called umount(2)
        # Mount points fsev reported mounted in another namespace and not yet
        # dropped: when the namespace is found gone, each gets its drop.
        self._alive_in: dict[int, dict[str, Event]] = {}
        self._check_ns_at: dict[int, float] = {}  # ns inode -> when to see if it is gone
        self._last_sweep = now()
        if fanotify:
            self.open_namespace("/proc/self/ns/mnt")
            if mark_all_namespaces:
                for path in self._all_namespaces():
                    self.open_namespace(path)

    # -- namespaces --------------------------------------------------------
    @staticmethod
    def _all_namespaces() -> list[str]:
        seen: dict[int, str] = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                path = f"/proc/{pid}/ns/mnt"
                ino = ns_inode(path)
                if ino is not None and ino not in seen:
                    seen[ino] = path
        return list(seen.values())

    def open_namespace(self, path: str) -> _Ns | None:
        ino = ns_inode(path)
        if ino is None:
            return None
        if ino in self._ns:
            return self._ns[ino]
        if len(self._ns) >= MAX_NAMESPACES:
            return None
        try:
            watch = MntnsWatch()
        except OSError:
            return None
        got = watch.watch_ns_file(path)
        if got is None:
            watch.close()
            return None
        ns = _Ns(got, watch.marked[got], watch, got == self._own_ino)
        self._ns[got] = ns
        if not ns.own:
            self._scan(ns)
        return ns

    def _scan(self, ns: _Ns) -> None:
        """Mounts a namespace had before fsev marked it: remember those whose
        filesystem fsev's namespace lacks (made there, not copied from here)."""
        for uid in (listmount(ns.ns_id) if ns.ns_id else None) or ():
            if uid not in self._made:
                info = statmount(uid, ns.ns_id)
                if info is not None and not self.table.by_dev(info.major, info.minor):
                    self._made[uid] = info

    @property
    def namespaces(self) -> int:
        return len(self._ns)

    # -- kernel records ----------------------------------------------------
    def on_record(self, ev: Event) -> list[Event]:
        """A decoded mount-call record: events due now (others wait for fanotify)."""
        action = ev.extra.get("action")
        if action == "new_namespace":
            if self.fanotify:
                self.open_namespace(f"/proc/{ev.pid}/ns/mnt")
            return []
        if action == "propagation":
            return []  # shared/private/slave changes: every unshare makes them; not a topology change users watch
        ns_ino = ev.extra.get("mnt_ns")
        ns = self._ns.get(ns_ino or -1)
        if ns is None and self.fanotify and ns_ino:
            path = self._task_in(ns_ino, ev.tgid)
            ns = self.open_namespace(path) if path is not None else None
            if ns is None and action in JOINED:
                # No task is left in that namespace (or it went while fsev
                # marked it): made and torn down faster than fsev could mark
                # it (a busy machine), its mounts went with it.
                made = self._from_call(ev)
                return [made, self._gone_with_namespace(made.mount_point, made.fs_type, ns_ino)]
        if action in JOINED and ns is not None:
            self._calls.append((self.now(), ev))
            return []
        return [self._made_call(self._from_call(ev))]

    def _made_call(self, ev: Event) -> Event:
        """Remember a mount reported made in another namespace, for its drop."""
        ns_ino = ev.extra.get("mnt_ns")
        if ns_ino and ns_ino != self._own_ino and ev.extra.get("action") in JOINED and ev.mount_point:
            self._alive_in.setdefault(ns_ino, {})[ev.mount_point] = ev
        return ev

    def _task_in(self, ns_ino: int, tgid: int | None) -> str | None:
        """An nsfs path of the mount namespace ns_ino: the caller's if it still
        is there, else any task's; None when no task is in it."""
        if tgid and ns_inode(f"/proc/{tgid}/ns/mnt") == ns_ino:
            return f"/proc/{tgid}/ns/mnt"
        for pid in os.listdir("/proc"):
            if pid.isdigit() and ns_inode(f"/proc/{pid}/ns/mnt") == ns_ino:
                return f"/proc/{pid}/ns/mnt"
        return None

    def _gone_with_namespace(self, mount_point: str | None, fs_type: str | None, ns_ino: int) -> Event:
        return self.make_event(cls=EventClass.INFO, type=EventType.UMOUNT, rung="polled",
                               mount_point=mount_point, fs_type=fs_type,
                               extra={"mnt_ns": ns_ino, "cause": "namespace_teardown"})

    def on_umount(self, ev: Event) -> None:
        if ev.tgid:
            self._umounts[ev.tgid] = self.now()

    def _own_path(self, ev: Event) -> str | None:
        path = ev.path
        if not path:
            return None
        if not path.startswith("/"):
            try:
                path = os.path.join(os.readlink(f"/proc/{ev.tgid}/cwd"), path)
            except OSError:
                return path
        return os.path.normpath(path)

    def _from_call(self, ev: Event, info: MountInfo | None = None) -> Event:
        """Fill a call record's mount fields (the mount it made or changed)."""
        fstype = ev.extra.pop("_fstype", None)
        own = ev.extra.get("mnt_ns") == self._own_ino
        if info is not None:
            self._fill(ev, info, own)
            if own and ev.path:
                # where the call put it: statmount tells where it is now (it
                # may have moved on since, on a busy machine)
                ev.mount_point = self._own_path(ev) or ev.mount_point
        elif own:
            path = self._own_path(ev)
            m = self.table.by_mount_point(path) if path else None
            if m is None and path:
                self.table.refresh()
                m = self.table.by_mount_point(path)
            if m is not None:
                ev.mount_point, ev.dev, ev.fs_type, ev.source, ev.mnt_id = (
                    m.mount_point, m.dev, m.fs_type, m.source, m.mnt_id)
            else:
                ev.mount_point = path
        else:  # as the task in its namespace sees it; fsev's mount table says nothing of it
            ev.mount_point, ev.fs_type, ev.dev, ev.source, ev.mnt_id = ev.path, fstype, None, None, None
        return ev

    @staticmethod
    def _fill(ev: Event, info: MountInfo, own: bool) -> None:
        ev.mount_point, ev.fs_type = info.mount_point, info.fs_type
        if info.major or info.minor:
            ev.dev = info.dev
        if info.source:
            ev.source = info.source
        # mountinfo's ids are per namespace: only fsev's own mean anything here
        ev.mnt_id = info.mnt_id if own and info.mnt_id else None
        ev.extra["mnt_id_unique"] = info.mnt_id_unique

    # -- fanotify ----------------------------------------------------------
    def poll(self, final: bool = False) -> list[Event]:
        now = self.now()
        for ns in list(self._ns.values()):
            for fe in ns.watch.read():
                self._on_fanotify(ns, fe, now)
        out = self._join(now, final)
        sweep_all = now - self._last_sweep > NS_SWEEP_S
        due = {ino for ino, t in self._check_ns_at.items() if final or now >= t}
        if sweep_all or due:
            out += self._sweep(None if sweep_all else due)
            if sweep_all:
                self._last_sweep = now
        return out

    def _on_fanotify(self, ns: _Ns, fe: FanEvent, now: float) -> None:
        if fe.mnt_id is None:
            return
        if fe.mask & FAN_MNT_ATTACH:
            info = statmount(fe.mnt_id, 0 if ns.own else ns.ns_id)
            if not ns.own and info is not None:
                self._made[fe.mnt_id] = info
            self._attaches.append((now, fe, ns, info))
        elif fe.mask & FAN_MNT_DETACH and not ns.own:
            # fsev's own namespace: drops are the mount_drop probe point's.
            info = self._made.pop(fe.mnt_id, None)
            if info is not None:  # not a copy of one of fsev's mounts
                self._detaches.append((now, fe, ns, info))
            # A teardown detaches every mount at once: soon, see if it is gone.
            self._check_ns_at.setdefault(ns.ino, now + 2 * GRACE_S)

    def _join(self, now: float, final: bool) -> list[Event]:
        out: list[Event] = []
        keep: list[tuple[float, FanEvent, _Ns, MountInfo | None]] = []
        for t, fe, ns, info in self._attaches:
            i = next((i for i, (_, c) in enumerate(self._calls) if c.tgid == fe.pid), None)
            if i is not None:
                _, call = self._calls.pop(i)
                if fe.mask & FAN_MNT_DETACH:
                    call.extra["action"] = "move"
                if not ns.own and info is None:
                    info = MountInfo(fe.mnt_id or 0, 0, 0, 0, call.extra.get("_fstype") or "", call.path or "", None)
                    self._made[fe.mnt_id or 0] = info
                call.rung = "fanotify"
                out.append(self._made_call(self._from_call(call, info)))
            elif final or now - t >= GRACE_S:
                out.append(self._made_call(self._from_attach(fe, ns, info)))
            else:
                keep.append((t, fe, ns, info))
        self._attaches = keep
        due = [c for c in self._calls if final or now - c[0] >= GRACE_S]
        self._calls = [c for c in self._calls if c not in due]
        out += [self._made_call(self._from_call(c)) for _, c in due]
        for t, fe, ns, info in list(self._detaches):
            if not final and now - t < GRACE_S:
                continue
            self._detaches.remove((t, fe, ns, info))
            if now - self._umounts.get(fe.pid, -1e18) < 2 * GRACE_S:
                continue  # a umount(2) fsev already reported
            out.append(self._drop(fe, ns, info))
        self._umounts = {p: t for p, t in self._umounts.items() if now - t < 10 * GRACE_S}
        return out

    def _from_attach(self, fe: FanEvent, ns: _Ns, info: MountInfo | None) -> Event:
        ev = self.make_event(cls=EventClass.INFO, type=EventType.MOUNT, rung="fanotify", pid=fe.pid,
                             tgid=fe.pid, comm=_comm(fe.pid),
                             extra={"action": "move" if fe.mask & FAN_MNT_DETACH else "attach", "mnt_ns": ns.ino})
        if info is not None:
            self._fill(ev, info, ns.own)
        else:
            ev.extra["mnt_id_unique"] = fe.mnt_id
        return ev

    def _drop(self, fe: FanEvent, ns: _Ns, info: MountInfo) -> Event:
        """A mount made in another namespace went away with no umount(2):
        the namespace was torn down (or a propagated umount took it)."""
        task_ns = ns_inode(f"/proc/{fe.pid}/ns/mnt")
        cause = "propagation" if task_ns is not None and task_ns != ns.ino else "namespace_teardown"
        ev = self.make_event(cls=EventClass.INFO, type=EventType.UMOUNT, rung="fanotify", pid=fe.pid, tgid=fe.pid,
                             comm=_comm(fe.pid), extra={"mnt_ns": ns.ino, "cause": cause})
        self._fill(ev, info, False)
        self._alive_in.get(ns.ino, {}).pop(info.mount_point, None)
        return ev

    def _sweep(self, only: set[int] | None = None) -> list[Event]:
        """Namespaces that are gone: their last detaches, and a drop for each
        mount fsev saw made there that no detach reported."""
        out: list[Event] = []
        for ino in list(only if only is not None else self._ns):
            self._check_ns_at.pop(ino, None)
            ns = self._ns.get(ino)
            if ns is None or ns.own or (ns.ns_id and listmount(ns.ns_id) is not None):
                continue
            if not ns.ns_id and self._task_in(ino, None) is not None:
                continue  # no namespace ids (before 6.11): a task in it says it lives
            now = self.now()
            for fe in ns.watch.read():
                self._on_fanotify(ns, fe, now)
            for item in [d for d in self._detaches if d[2] is ns]:
                self._detaches.remove(item)
                out.append(self._drop(item[1], ns, item[3]))
            for mp, made in self._alive_in.pop(ino, {}).items():
                out.append(self._gone_with_namespace(mp, made.fs_type, ino))
            ns.watch.close()
            del self._ns[ino]
        return out

    @property
    def waiting(self) -> bool:
        return bool(self._attaches or self._calls or self._detaches)

    def close(self) -> None:
        for ns in self._ns.values():
            ns.watch.close()
        self._ns.clear()


# -- the ladder ----------------------------------------------------------------
def plan_topology(facts: KernelFacts) -> Rung:
    calls = tuple(t for t in MOUNT_CALL_TRACEPOINTS if facts.has_tracepoint(t))
    have_calls = all(t in calls for t in MOUNT_CALL_REQUIRED)
    if facts.fanotify_mntns and have_calls:
        ns = tuple(t for t in NS_TRACEPOINTS if facts.has_tracepoint(t))
        return Rung(NAME, RungKind.FANOTIFY, ("FAN_MARK_MNTNS", *calls, *ns),
                    gives="every attach and detach in fsev's and each new mount namespace with the mount's "
                    "unique id (fanotify), what the call was (mount/bind/move/remount, syscall "
                    "tracepoints), drops when a namespace is torn down",
                    misses="mounts in a namespace that dies before fsev can mark it, other than by "
                    "mount(2) (those are reported as gone with it); remounts have no fanotify event "
                    "(the syscall tells)")
    skipped = ("fanotify: no FAN_MARK_MNTNS (kernel before 6.15)",) if not facts.fanotify_mntns else ()
    if have_calls:
        return Rung(NAME, RungKind.TRACEPOINT, calls,
                    gives="successful mount(2), move_mount, fsconfig reconfigure, mount_setattr: call, "
                    "target as passed, flags, task and its mount namespace",
                    misses="propagated mounts; mount ids (taken from mountinfo when fsev's namespace "
                    "has the mount); drops by namespace teardown",
                    skipped=skipped)
    return Rung(NAME, RungKind.NONE, skipped=skipped + ("tracepoint: syscalls:sys_*_mount not present",))


# -- records and text ------------------------------------------------------------
def mount_action(call: int, flags: int) -> str | None:
    """What a successful mount-table call did; None for calls that change nothing
    a user watches (fsconfig other than reconfigure)."""
    if call == Call.MOUNT:
        if flags & MS_REMOUNT:
            return "remount"
        if flags & MS_BIND:
            return "bind"
        if flags & MS_MOVE:
            return "move"
        if flags & MS_PROPAGATION:
            return "propagation"
        return "mount"
    if call == Call.MOVE_MOUNT:
        return "attach" if flags & MOVE_MOUNT_F_EMPTY_PATH else "move"
    if call == Call.FSCONFIG:
        return "reconfigure" if flags == FSCONFIG_CMD_RECONFIGURE else None
    if call == Call.MOUNT_SETATTR:
        return "setattr"
    if call in (Call.UNSHARE, Call.CLONE, Call.CLONE3):
        return "new_namespace"
    return None


def describe_mount(ev: Event) -> str:
    x = ev.extra
    action = x.get("action", "mount")
    if "from" in x:
        return f"{action} from {x['from']}"
    if action == "remount" and "read_only" in x:
        return f"remount {'ro' if x['read_only'] else 'rw'}"
    return str(action)


_HELD_POLL_MS = 2


class TopologyMonitor(PointMonitor):
    handles = frozenset({EventType.MOUNT})
    observes = frozenset({EventType.UMOUNT})

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def process(self, ev: Event) -> list[Event]:
        return self.topology.on_record(ev)

    def observe(self, ev: Event) -> None:
        self.topology.on_umount(ev)

    def poll(self) -> list[Event]:
        return self.topology.poll()

    def flush(self) -> list[Event]:
        return self.topology.poll(final=True)

    def timeout_ms(self, default: int) -> int:
        return min(default, 10 * _HELD_POLL_MS) if self.topology.waiting else default

    def close(self) -> None:
        self.topology.close()


class MountTopology(Point):
    name = NAME
    record_type = RecordType.MOUNT
    event_type = EventType.MOUNT
    classes = frozenset({RecordClass.INFO})
    tracepoints = frozenset({*MOUNT_CALL_TRACEPOINTS, *NS_TRACEPOINTS})

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_topology(facts)

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        on = rung is not None and self.compiled(rung, config)
        kind = rung.kind if rung is not None else None
        d = [("FSEV_TOPOLOGY_TRACEPOINT", str(int(on and kind in (RungKind.TRACEPOINT, RungKind.FANOTIFY)))),
             # New namespaces matter only to the fanotify rung, which marks them.
             ("FSEV_TOPOLOGY_NS", str(int(on and kind is RungKind.FANOTIFY)))]
        targets = set(rung.targets) if rung else set()
        for tp in (*MOUNT_CALL_TRACEPOINTS, *NS_TRACEPOINTS):
            if tp.startswith("syscalls:sys_enter_"):
                call = tp.removeprefix("syscalls:sys_enter_")
                have = tp in targets and f"syscalls:sys_exit_{call}" in targets
                d.append((f"FSEV_HAVE_SYS_{call.upper()}", str(int(have))))
        return d

    rung_offsets = {RungKind.TRACEPOINT: OFFSETS, RungKind.FANOTIFY: OFFSETS}

    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        x = ev.extra
        action = mount_action(call, arg)
        if action:
            x["action"] = action
        text = c_string(func)
        if text:
            if action in ("bind", "move"):
                x["from"] = text
            elif action == "mount":
                x["_fstype"] = text
        if call == Call.MOUNT and arg & MS_REMOUNT:
            x["read_only"] = bool(arg & MS_RDONLY)

    def describe(self, ev: Event) -> str:
        return describe_mount(ev)

    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        kind = ctx.plan.kind(NAME)
        if EventClass.INFO not in ctx.classes or kind is None:
            return None
        return TopologyMonitor(Topology(ctx.table, ctx.make_event, fanotify=kind is RungKind.FANOTIFY,
                                        mark_all_namespaces=ctx.watch_all, now=ctx.now))


POINT = MountTopology()
