"""`fsev serve`: one process holds the probes; listeners, the flight recorder
and journald take its events.

Threads: the main thread runs the tracing session (fsev.session.trace) and
hands each event, serialised once, to the journal writer, journald and the
hub (fsev/service/hub.py), which serves listeners from its own thread.
Configuration changes (the control socket, SIGHUP) are validated off that
thread, installed by swapping one immutable ServiceConfig, and reach the
kernel through TraceSession.rewatch(): the session's thread re-reads the
watch source (this module's watch_for) before its next step and rewrites
the kernel's maps under the attached programs, so nothing is detached and no
event is lost across a change.
"""

from __future__ import annotations

import fcntl
import grp
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsev import __version__
from fsev.errors import FsevError
from fsev.events import Event, EventClass
from fsev.events.json_line import event_json
from fsev.journal.store import JournalError
from fsev.linux.memory import shed_compiler_memory
from fsev.linux.mountinfo import Mount, MountTable
from fsev.service import systemd
from fsev.service.access import Peer
from fsev.service.config import EVERY_MOUNT, ConfigError, ServiceConfig, apply, parse, read_file
from fsev.service.hub import Hub
from fsev.service.metrics import FsMetrics
from fsev.service.metrics_serve import MetricsEndpoint, TextfileWriter, format_addr
from fsev.service.protocol import DEFAULT_SOCKET
from fsev.session.trace import TraceOptions, TraceSession, Watch
from fsev.thresholds.arming import ArmedMount, arm_thresholds
from fsev.thresholds.levels import ThresholdError

if TYPE_CHECKING:
    from fsev.journal.recorder import Recorder  # imported when the flight recorder opens

# The longest the session waits with nothing to do. Idle, each wake costs the
# service CPU (goal: <= 0.5 % of a core), and nothing needs it sooner: events,
# configuration changes, mount-table changes, the halves' inotify and
# fanotify fds and stop() all end the wait, and a half that waits for
# something shortens it (timeout_ms).
POLL_MS = 10_000
# 8 MiB, ~36 000 records: a service is always on, and a burst of errors (a
# corrupted directory read in a loop) must fit while its thread is busy with
# several listeners.
RINGBUF_PAGES = 2048
# Trims by age need no finer grain than a minute (the writer also trims after
# a commit that takes the journal over its size); idle, a trim is a wake-up.
TRIM_INTERVAL_S = 60.0
APPLY_TIMEOUT_S = 2.0


def _log(msg: str) -> None:
    # stderr: under systemd it is the unit's journal (`journalctl -u fsev`).
    print(f"fsev serve: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ServeOptions:
    config_path: str
    socket_path: str = DEFAULT_SOCKET
    ringbuf_pages: int = RINGBUF_PAGES


class SingleInstance:
    """An flock beside the socket: a second `fsev serve` on the same socket is
    refused, and a socket file left by a killed one (the lock died with it)
    is known to be stale and replaced."""

    def __init__(self, socket_path: str) -> None:
        self.path = socket_path + ".lock"
        self.fd = -1

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FsevError(f"another fsev serve is running (pid {other}, lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def bind_socket(path: str, group: str | None) -> socket.socket:
    """The listening socket at path, replacing a stale one (the caller holds
    the lock): 0600 for root, or 0660 and the group's when one is named."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # never a moment with the socket open to all
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    set_socket_access(path, group)
    sock.listen(64)
    return sock


def set_socket_access(path: str, group: str | None) -> None:
    gid = grp.getgrnam(group).gr_gid if group else 0
    os.chown(path, 0, gid)
    os.chmod(path, 0o660 if group else 0o600)


def check_group(config: ServiceConfig) -> None:
    name = config.settings.socket_group
    if name is not None:
        try:
            grp.getgrnam(name)
        except KeyError:
            raise ConfigError(f"socket_group {name}: no such group") from None


class Service:
    def __init__(self, opts: ServeOptions, config: ServiceConfig) -> None:
        self.opts = opts
        self.config = config
        self._config_lock = threading.Lock()  # one change at a time
        self.started_at = time.time()
        self.session = TraceSession(TraceOptions(ringbuf_pages=opts.ringbuf_pages, watch_source=self.watch_for))
        self.hub: Hub | None = None
        self.recorder: Recorder | None = None  # the flight recorder, when the configuration has a journal
        self.journald: systemd.JournaldSink | None = None
        self._unarmable: set[tuple[str, str]] = set()  # (mount point, why) already logged
        self.events = 0
        # Prometheus (docs/prometheus.md): made when the configuration first asks for an output.
        self.metrics: FsMetrics | None = None
        self.registry: Any = None  # prometheus_client.CollectorRegistry, FsMetrics alone
        self.endpoint: MetricsEndpoint | None = None
        self.textfile: TextfileWriter | None = None
        self._next_endpoint: MetricsEndpoint | None = None  # bound by _validate, installed by _install
        self._journal_lost = 0

    # -- what is watched -------------------------------------------------------
    def watch_for(self, table: MountTable) -> Watch:
        """The watch source (session's thread): each mount the configuration
        covers, with its classes, and the levels armed on it."""
        config = self.config
        mounts: list[tuple[Mount, frozenset[EventClass]]] = []
        armed: list[ArmedMount] = []
        for m in table:
            classes = config.classes_for(m.mount_point)
            if not classes:
                continue
            mounts.append((m, classes))
            spec = config.levels_for(m.mount_point) if EventClass.THR in classes else None
            if spec is None:
                continue
            try:
                armed += arm_thresholds(self.session.plan, [m], spec)
            except (ThresholdError, OSError) as e:
                # `* thr 10%` meets mounts without a size (proc, an unlimited tmpfs):
                # said once for a mount named in the configuration, silent for the rest.
                why = str(e)
                if config.rule(m.mount_point) is not None and (m.mount_point, why) not in self._unarmable:
                    self._unarmable.add((m.mount_point, why))
                    _log(f"thresholds on {m.mount_point} not armed: {why}")
        if self.hub is not None:
            self.hub.mounts_changed()
        every = config.rule(EVERY_MOUNT)
        watch = Watch(tuple(mounts), tuple(_one_per_superblock(armed)), every.classes if every else frozenset())
        metrics = self.metrics  # once: a change may set it to None meanwhile
        if metrics is not None:
            metrics.set_watch(watch)
        return watch

    def check_levels(self, config: ServiceConfig) -> None:
        """Refuse a configuration whose levels cannot be armed on a mount that
        is there now (mixed units the parser cannot compare, a level above the
        filesystem's size, a tmpfs without a size)."""
        table = MountTable.read()
        for rule in config.rules:
            if rule.target == "*" or EventClass.THR not in config.classes_for(rule.target):
                continue
            spec = config.levels_for(rule.target)
            m = table.by_mount_point(rule.target)
            if spec is None or m is None:
                continue
            try:
                arm_thresholds(self.session.plan, [m], spec)
            except ThresholdError as e:
                raise ConfigError(str(e)) from None  # it names the mount

    # -- control (the hub's control threads, SIGHUP) -----------------------------
    def configure(self, text: str, peer: Peer) -> dict[str, Any]:
        if not peer.root:
            return {"ok": False, "error": "permission denied: only root may change the configuration"}
        with self._config_lock:
            try:
                new = apply(self.config, parse(text))
                self._validate(new)
            except ConfigError as e:
                return {"ok": False, "error": str(e)}
            self._install(new)
        return {"ok": True, "config": new.text()}

    def reload(self) -> None:
        """SIGHUP: the file again, whole; on any error the running configuration stays."""
        systemd.notify_reloading()
        try:
            with self._config_lock:
                try:
                    new = read_file(self.opts.config_path)
                    self._validate(new)
                except ConfigError as e:
                    _log(f"reload refused, configuration unchanged: {e}")
                    return
                self._install(new)
                _log(f"reloaded {self.opts.config_path}")
        finally:
            systemd.notify_ready(self.status_text())  # also after a refused reload: systemd waits for it

    def _validate(self, new: ServiceConfig) -> None:
        check_group(new)
        self.check_levels(new)
        if new.settings.journal != self.config.settings.journal:
            raise ConfigError("journal: the flight recorder's path changes only at a restart of the service")
        # Last: a new metrics address is bound now, so one that cannot be refuses the change whole
        # and the old endpoint goes on serving.
        addr = new.settings.metrics
        if addr is not None and (self.endpoint is None or self.endpoint.addr != addr):
            self._ensure_metrics()
            try:
                self._next_endpoint = MetricsEndpoint(addr, self.registry)
            except FsevError as e:
                raise ConfigError(str(e)) from None

    def _install(self, new: ServiceConfig) -> None:
        """One reference swap, then the kernel follows (rewatch) before we return."""
        self.config = new
        self._unarmable.clear()
        s = new.settings
        if self.hub is not None:
            self.hub.set_policy(s.listener_queue, s.listener_timeout_s, s.socket_group)
            try:
                set_socket_access(self.opts.socket_path, s.socket_group)
            except (OSError, KeyError) as e:
                _log(f"socket access: {e}")
        self._install_metrics(s)
        if not self.session.rewatch().wait(APPLY_TIMEOUT_S):
            _log("the session did not take the new configuration within 2 s; it will at its next step")

    # -- metrics ---------------------------------------------------------------
    def _ensure_metrics(self) -> FsMetrics:
        if self.metrics is None:
            from prometheus_client import CollectorRegistry

            self.metrics = FsMetrics(self.session.plan, self._lost_counts)
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(self.metrics)
            self.metrics.set_watch(self.session.watch)  # the session's next rewatch follows
        return self.metrics

    def _lost_counts(self) -> dict[str, int]:
        hub, writer = self.hub, getattr(self.recorder, "writer", None)
        if writer is not None:  # kept: a recorder closed after a failure must not reset the counter
            self._journal_lost = max(self._journal_lost, writer.forced_lost)
        return {"listener": hub.lost_total if hub is not None else 0, "journal": self._journal_lost}

    def _install_metrics(self, s: Any) -> None:
        """The endpoint bound by _validate replaces the old one; the textfile follows its setting."""
        new, self._next_endpoint = self._next_endpoint, None
        if new is not None:
            old, self.endpoint = self.endpoint, new.start()
            if old is not None:
                old.close()
            _log(f"metrics on http://{format_addr(new.addr)}/metrics")
        elif s.metrics is None and self.endpoint is not None:
            old, self.endpoint = self.endpoint, None
            old.close()
            _log("metrics endpoint closed")
        if s.metrics_textfile is not None:
            self._ensure_metrics()
            if self.textfile is None:
                self.textfile = TextfileWriter(s.metrics_textfile, self.registry, _log)
            elif self.textfile.directory != s.metrics_textfile:
                self.textfile.set_directory(s.metrics_textfile)
        elif self.textfile is not None:
            self.textfile.close()
            self.textfile = None
        if self.endpoint is None and self.textfile is None and self.metrics is not None:
            # Both off: no samplers left running for nobody (a later `metrics` starts afresh from 0,
            # which Prometheus takes as a counter reset).
            self.metrics.close()
            self.metrics = None

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.up = False
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        if self.textfile is not None:
            self.textfile.close()  # the last write: fsev_up 0
            self.textfile = None
        if self.metrics is not None:
            self.metrics.close()

    def show(self) -> dict[str, Any]:
        return {"ok": True, "config": self.config.text(), "watching": self.watching()}

    def watching(self) -> list[dict[str, Any]]:
        w = self.session.watch
        armed = {a.mount.mount_point: a for a in w.thresholds}
        out = []
        for m, classes in w.mounts:
            d: dict[str, Any] = {"mount_point": m.mount_point, "dev": m.dev, "fs_type": m.fs_type,
                                 "classes": [c.value for c in EventClass if c in classes]}
            a = armed.get(m.mount_point)
            if a is not None:
                d["levels"] = a.levels.as_list()
            out.append(d)
        return out

    def hello(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid(), "started_at": self.started_at,
                "plan": [[r.name, r.kind.value, list(r.targets), list(r.skipped)] for r in self.session.plan.rungs],
                "watching": self.watching(), "journal": self.config.settings.journal}

    def status(self) -> dict[str, Any]:
        hub = self.hub
        return {"ok": True, "status": {
            **self.hello(), "events": self.events, "lost_kernel": self.session.lost_total,
            "listeners": hub.summary() if hub is not None else [],
            "dropped_listeners": hub.dropped_listeners if hub is not None else 0,
            "journald_dropped": self.journald.dropped if self.journald is not None else 0,
        }}

    def status_text(self) -> str:
        rungs = ", ".join(f"{r.name}={r.kind.value}" for r in self.session.plan.rungs)
        return f"watching {len(self.session.watch.mounts)} mounts; {rungs}"

    # -- the run ---------------------------------------------------------------
    def run(self) -> int:
        t0 = time.monotonic()
        s = self.config.settings
        if s.metrics is not None or s.metrics_textfile is not None:
            self._ensure_metrics()
        if s.metrics is not None:
            # Bound before attaching: an address in use is one line and exit 2, not a service half up.
            self._next_endpoint = MetricsEndpoint(s.metrics, self.registry)
        self.session.start()
        shed_compiler_memory()  # a service lives long: what compiling took goes back (~100 MB)
        _log(f"attached in {time.monotonic() - t0:.2f}s; "
             + ", ".join(f"{r.name}: {r.kind.value}" for r in self.session.plan.rungs))
        for note in self.session.attach_notes:
            _log(note)
        if s.journal is not None:
            self.recorder = self._open_journal(s.journal)
        if s.journald:
            # FSEV_JOURNALD_SOCKET: another journal namespace's socket (tests use their own journald)
            self.journald = systemd.JournaldSink(os.environ.get("FSEV_JOURNALD_SOCKET") or systemd.JOURNAL_SOCKET)
        server = bind_socket(self.opts.socket_path, s.socket_group)
        self.hub = Hub(self.opts.socket_path, self, self.session.clock, s.listener_queue, s.listener_timeout_s,
                       s.socket_group, log=_log)
        self.hub.start(server)
        self.session.rewatch()  # the hub now exists: namespaces' views follow mount changes
        self._install_metrics(s)
        _log(f"serving on {self.opts.socket_path}; watching {len(self.session.watch.mounts)} mounts")
        systemd.notify_ready(self.status_text())  # only now: the probes are attached and the socket serves
        reason = "stopped"
        try:
            notes = self.session.notes  # what the halves found later (a mount fanotify cannot mark)
            for ev in self.session.events(poll_ms=POLL_MS, last=True):
                if notes:
                    for note in notes:
                        _log(note)
                    notes.clear()
                self._emit(ev)
        except FsevError as e:
            reason = f"failed: {e}"
            raise
        finally:
            systemd.notify_stopping()
            self.close(reason)
        return 0

    def _emit(self, ev: Event) -> None:
        self.events += 1
        metrics = self.metrics  # once: a change may set it to None meanwhile
        if metrics is not None:
            metrics.observe(ev)
        line = event_json(ev).encode() + b"\n"
        if self.recorder is not None:
            try:
                self.recorder.emit(ev)
            except JournalError as e:
                # A full disk must not end the service: listeners and journald go on.
                _log(f"flight recorder stopped: {e}")
                self._close_recorder(f"journal write failed: {e}")
        if self.journald is not None:
            self.journald.emit(ev)
        assert self.hub is not None
        self.hub.publish([(ev, line)])

    def _open_journal(self, path: str) -> "Recorder":
        """The flight recorder: every event, kept within the configured size
        and age (fsev/journal/retention.py), never past what a registered
        consumer has not acknowledged unless the hard cap forces it."""
        from fsev.journal.recorder import Recorder
        from fsev.journal.retention import Retention

        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        s = self.config.settings
        rec = Recorder(path, "serve")
        return rec.start(self.session.plan, {"config": self.config.text()}, None,
                         retention=Retention(s.journal_max_size, s.journal_max_age_s, s.hard_cap),
                         trim_interval=TRIM_INTERVAL_S)

    def stop(self) -> None:
        """From the signal handler: the session leaves its wait now."""
        self.session.stop()
        self.session.wake()

    def close(self, reason: str = "stopped") -> None:
        if self.hub is not None:
            self.hub.close()
        try:
            os.unlink(self.opts.socket_path)
        except OSError:
            pass
        self.session.close()
        if self.journald is not None:
            self.journald.close()
        self._close_recorder(reason)
        self._close_metrics()

    def _close_recorder(self, reason: str) -> None:
        rec, self.recorder = self.recorder, None
        if rec is not None:
            try:
                rec.close(reason)
            except JournalError as e:
                _log(f"flight recorder: {e}")


def _one_per_superblock(armed: list[ArmedMount]) -> list[ArmedMount]:
    seen: set[int] = set()
    out = []
    for a in armed:
        if a.key not in seen:
            seen.add(a.key)
            out.append(a)
    return out


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the configuration file."""
    from fsev.linux.privilege import NEED_ROOT, can_trace
    from fsev.session.setup_checks import check_bcc, check_btf, check_tracefs, require

    config = read_file(opts.config_path)  # ConfigError: one line, exit 2
    check_group(config)
    if not can_trace():
        raise FsevError(NEED_ROOT)
    lock = SingleInstance(opts.socket_path)
    lock.acquire()
    try:
        require(check_btf(), check_tracefs(mount_if_missing=True), check_bcc())
        service = Service(opts, config)
        signal.signal(signal.SIGTERM, lambda *_: service.stop())
        signal.signal(signal.SIGINT, lambda *_: service.stop())
        # The reload waits for the session's thread (this one): not in the handler.
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=service.reload, name="fsev-reload",
                                                                 daemon=True).start())
        return service.run()
    finally:
        lock.release()
