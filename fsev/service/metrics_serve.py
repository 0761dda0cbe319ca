"""Serving the service's metrics: an HTTP endpoint, and node_exporter's textfile.

The registry is fsev's own (FsMetrics alone): not prometheus_client's default
one, whose process and platform collectors would add `process_*` and
`python_*` series. node_exporter already exports the host's processes
(`namedprocess`, systemd's cgroup metrics), and in textfile mode those series
would land in node_exporter's own scrape under its job: names two jobs' series
could collide on. What fsev adds is what node_exporter cannot see.

The endpoint binds when it is made (MetricsEndpoint()), so the daemon binds
before it attaches and a configuration change binds the new address before
anything is changed: an address that cannot be bound is refused whole.
A scrape that hangs up mid-response ends its own thread only; a client that
sends nothing is dropped after REQUEST_TIMEOUT_S.
"""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler, generate_latest

from fsev.errors import FsevError

REQUEST_TIMEOUT_S = 10.0
TEXTFILE_S = 10.0
TEXTFILE_NAME = "fsev.prom"


def format_addr(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Handler(MetricsHandler):
    timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler: a silent client is dropped

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "fsev serves /metrics")
            return
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hung up (BrokenPipe, ConnectionReset) or timed out: nothing to say.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (OSError, TimeoutError)):
            super().handle_error(request, client_address)


class MetricsEndpoint:
    """`/metrics` on addr; bound at construction (FsevError if it cannot be), served by start()."""

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry) -> None:
        self.addr = addr
        host, port = addr
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as e:
            raise FsevError(f"metrics {format_addr(addr)}: {e.strerror}") from None
        handler = type("FsevMetricsHandler", (_Handler,), {"registry": registry})
        server_cls = type("FsevMetricsServer", (_Server,), {"address_family": family})
        try:
            self.server = server_cls((host, port), handler)
        except OSError as e:
            raise FsevError(f"metrics {format_addr(addr)}: cannot listen: {e.strerror or e}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> "MetricsEndpoint":
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 5.0},
                                        name=f"fsev-metrics-http {format_addr(self.addr)}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()


class TextfileWriter:
    """DIR/fsev.prom, written whole (a temporary file, then rename) every TEXTFILE_S and at
    close(). A directory that is missing or read-only is said once, and tried again at each
    interval; said again, once, when writing works again."""

    def __init__(self, directory: str, registry: CollectorRegistry, log: Callable[[str], None],
                 interval: float = TEXTFILE_S) -> None:
        self.directory = directory
        self.registry = registry
        self._log = log
        self.interval = interval
        self.failing: str | None = None  # the error said, while it lasts
        self.writes = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fsev-metrics-textfile", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, TEXTFILE_NAME)

    def set_directory(self, directory: str) -> None:
        self.directory = directory
        self.failing = None
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write()
            self._wake.wait(self.interval)
            self._wake.clear()

    def write(self) -> bool:
        with self._write_lock:
            directory = self.directory
            path = os.path.join(directory, TEXTFILE_NAME)
            tmp = os.path.join(directory, f".{TEXTFILE_NAME}.{os.getpid()}.tmp")  # not *.prom: never read
            try:
                data = generate_latest(self.registry)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except OSError as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                why = f"cannot write {path}: {e.strerror or e}"
                if why != self.failing:
                    self.failing = why
                    self._log(f"metrics_textfile: {why}; trying again every {self.interval:g} s")
                return False
            if self.failing is not None:
                self._log(f"metrics_textfile: {path} written again")
                self.failing = None
            self.writes += 1
            return True

    def close(self) -> None:
        """Stop the thread, then one last write (what the service saw last, fsev_up 0)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self.write()
