"""What a probe point is made of: the base class of fsev/points/<name>.py.

A point owns its ladder (plan), the switches, offsets and attachments of its
BPF C (bpf/<name>.bpf.c), the decoding of its kernel records, its human text
and its user-space half. fsev/points/registry.py lists the points; the
layers above (session, output) ask the registry, never a point by name.
Every hook has a default that does nothing, so a point says only what it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol

from fsev.events import Event, EventClass, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType
from fsev.probes.ladder import Plan, Rung, RungKind

if TYPE_CHECKING:
    from fsev.events.clock import Clock
    from fsev.kernel.thr_slots import Hook
    from fsev.linux.kernel_log import LogLine
    from fsev.linux.mountinfo import Mount, MountTable
    from fsev.probes.program import ProgramConfig

# A half that reads its filesystem's kernel log lines: line -> events to emit.
LogReader = Callable[["LogLine"], list[Event]]


class KernelTables(Protocol):
    """What a user-space half may ask of the loaded program (fsev.kernel.loader)."""

    def set_keys(self, table: str, keys: list[int]) -> None: ...
    def table_items(self, table: str) -> list[tuple[int, object]]: ...
    def drops(self) -> int: ...


@dataclass
class SessionContext:
    """What a point's user-space half is built from (fsev.session.pipeline)."""

    plan: Plan
    classes: frozenset[EventClass]
    table: "MountTable"
    clock: "Clock"
    watched: "list[Mount]"  # empty: every mount (unless dynamic)
    probes: KernelTables | None
    now: Callable[[], float]
    make_event: Callable[..., Event]  # a user-space event, numbered when emitted
    mount_watched: Callable[["Mount"], bool]
    # fsev serve: `watched` is the configured mounts now, replaced in place as
    # the configuration or the mount table changes (each change bumps
    # watch_generation, then mounts_changed() runs); empty is then nothing.
    dynamic: bool = False
    watch_generation: int = 0
    # Kernel log lines by filesystem ("ext4", "btrfs", "xfs"), for the halves
    # that read them (fsev/points/kernel_log.py calls each in arrival order).
    log_readers: "dict[str, list[LogReader]]" = field(default_factory=dict)

    def read_kernel_log(self, fs: str, reader: LogReader) -> None:
        """Hand this filesystem's kernel log lines to reader, from now on."""
        self.log_readers.setdefault(fs, []).append(reader)

    @property
    def watch_all(self) -> bool:
        return not self.dynamic and not self.watched


class PointMonitor:
    """The user-space half of a point: events of the types it handles go through
    it (process), and it may make events of its own (poll, flush). observe()
    sees every event the pipeline emits, for halves that follow other points'
    events (read-only transitions after an fs_error, for one)."""

    handles: ClassVar[frozenset[EventType]] = frozenset()
    observes: ClassVar[frozenset[EventType]] = frozenset()
    # Sees every event first, and may hold later ones behind one it holds, in order.
    orders: ClassVar[bool] = False

    def process(self, ev: Event) -> list[Event]:
        return [ev]

    def observe(self, ev: Event) -> None:
        return None

    def poll(self) -> list[Event]:
        return []

    def flush(self) -> list[Event]:
        return []

    def timeout_ms(self, default: int) -> int:
        """How long the session may block while this half waits for something."""
        return default

    def mounts_changed(self) -> None:
        """The mount table changed (the session re-read it)."""
        return None

    def wake_fds(self) -> list[int]:
        """File descriptors whose readiness means poll() has something: a
        session that waits long (fsev serve) ends its wait on them."""
        return []

    def notes(self) -> list[str]:
        """What the user should know that this half found since last asked
        (a mount it cannot watch fully, and why): shown on stderr."""
        return []

    def close(self) -> None:
        return None




class Point:
    """One probe point. Subclasses set name and the class attributes, and
    override the hooks their point has."""

    name: ClassVar[str]
    # The kernel record its programs send and the events it makes of them.
    record_type: ClassVar[RecordType | None] = None
    event_type: ClassVar[EventType | None] = None
    # The filesystem whose events it describes, where several points make
    # events of one type (fs_error: ext4's and XFS's); None: any.
    fs_type: ClassVar[str | None] = None
    # The kernel module (a filesystem's) whose code it hooks: its BTF gives the
    # point's struct offsets (registry.BTF_MODULES), and while it is not
    # loaded the point may have nothing to watch (Rung.absent) until a
    # filesystem of its kind is mounted.
    module: ClassVar[str | None] = None
    # The classes of its kernel records: its programs are compiled in only
    # when the user asked for one of them.
    classes: ClassVar[frozenset[RecordClass]] = frozenset()
    # Tracepoints ("system:event") and kernel functions the ladder asks about:
    # what fsev.kernel.facts.gather looks for.
    tracepoints: ClassVar[frozenset[str]] = frozenset()
    kprobe_functions: ClassVar[frozenset[str]] = frozenset()
    # Programs attached only while needed, by the hook group that switches them.
    gated: ClassVar[Mapping[str, Hook]] = {}
    # The #if switch in bpf/<name>.bpf.c of each rung that has programs there.
    switches: ClassVar[Mapping[RungKind, str]] = {}
    # BTF specs (struct offsets, enum values) the programs of each rung read.
    rung_offsets: ClassVar[Mapping[RungKind, tuple[str, ...]]] = {}

    # -- the ladder ------------------------------------------------------------
    def plan(self, facts: KernelFacts) -> Rung:
        raise NotImplementedError

    # -- the kernel side -------------------------------------------------------
    def compiled(self, rung: Rung, config: "ProgramConfig | None") -> bool:
        """Whether this point's programs are compiled in: a kernel rung, and a
        class the user asked for (config None: every class)."""
        if rung.kind in (RungKind.NONE, RungKind.POLLED):
            return False
        return config is None or bool(self.classes & config.classes)

    def compiled_as(self, rung: Rung | None, config: "ProgramConfig | None", kind: RungKind) -> bool:
        """Whether this point's programs of this rung kind are compiled in."""
        return rung is not None and rung.kind is kind and self.compiled(rung, config)

    def defines(self, rung: Rung | None, config: "ProgramConfig") -> list[tuple[str, str]]:
        """(macro, value) pairs of the preamble: the switches its C reads, 1
        for the rung compiled in, 0 for the others."""
        return [(macro, str(int(self.compiled_as(rung, config, kind)))) for kind, macro in self.switches.items()]

    def offsets(self, rung: Rung, config: "ProgramConfig | None") -> tuple[str, ...]:
        """BTF specs its compiled programs read (struct offsets, enum values)."""
        return self.rung_offsets.get(rung.kind, ()) if self.compiled(rung, config) else ()

    def kprobes(self, rung: Rung, config: "ProgramConfig") -> list[tuple[str, str]]:
        """(kernel function, BPF function) pairs; kretp_ names are return
        probes. By default kp_<function> on each function of the kprobe rung."""
        if self.compiled_as(rung, config, RungKind.KPROBE):
            return [(fn, f"kp_{fn}") for fn in rung.targets]
        return []

    def raw_tracepoints(self, rung: Rung, config: "ProgramConfig") -> list[tuple[str, str, str]]:
        """(tracepoint, typed BPF function or "", plain BPF function) the loader
        attaches itself (bcc attaches RAW_TRACEPOINT_PROBE programs as it loads)."""
        return []

    # -- records and text ------------------------------------------------------
    def finish(self, ev: Event, f: int, value: int, level: int, direction: int, mntns: int, call: int,
               arg: int, func: bytes) -> None:
        """Fill the fields of this point's record type, after the common ones
        (fsev.kernel.records): the record's fields bits, value, level,
        direction, mntns, call, arg and func. Only overridden ones are called."""
        return None

    def describe(self, ev: Event) -> str:
        """The event-specific part of a human line."""
        return ""

    # -- the user-space half ---------------------------------------------------
    def monitor(self, ctx: SessionContext) -> PointMonitor | None:
        return None

