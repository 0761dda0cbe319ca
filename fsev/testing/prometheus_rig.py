"""Real Prometheus and Alertmanager for tests: Debian's `prometheus` and
`prometheus-alertmanager` on 127.0.0.1, 1 s scrape and evaluation intervals,
fsev's alert rules (packaging/prometheus/fsev.rules.yml), Alertmanager posting
to a webhook receiver this process runs on loopback.

Every port is a free one; both processes are ended by PID and their
directories removed at the end, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: every POSTed notification, in order."""

    server: ThreadingHTTPServer
    posts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, each with its own `status`."""
        with self.lock:
            return [a for p in self.posts for a in p.get("alerts", [])]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        """The first alert for which pred holds, waiting up to timeout seconds."""
        end = time.monotonic() + timeout
        while True:
            for a in self.alerts():
                if pred(a):
                    return a
            if time.monotonic() >= end:
                return None
            time.sleep(0.05)


def _webhook() -> Webhook:
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {"unparsed": body.decode(errors="replace")}
            with hook.lock:
                hook.posts.append(doc)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    hook = Webhook(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=hook.server.serve_forever, daemon=True).start()
    return hook


@dataclass
class PromStack:
    workdir: str
    rules: str
    fsev_port: int  # the target Prometheus scrapes as job "fsev"
    webhook: Webhook
    prom_port: int = 0
    am_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return Path(self.workdir, f"{name}.log").read_text(errors="replace")
        return ""

    def _start(self, name: str, argv: list[str]) -> None:
        with open(os.path.join(self.workdir, f"{name}.log"), "wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def _wait_ready(self, name: str, port: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.procs[name].poll() is not None:
                break
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise AssertionError(f"{name} did not become ready on 127.0.0.1:{port}:\n{self.log(name)[-4000:]}")

    def start(self, timeout: float = 60) -> None:
        self.am_port, self.prom_port = free_port(), free_port()
        am_dir, prom_dir = os.path.join(self.workdir, "am-data"), os.path.join(self.workdir, "prom-data")
        os.mkdir(am_dir)
        os.mkdir(prom_dir)
        am_cfg = os.path.join(self.workdir, "alertmanager.yml")
        Path(am_cfg).write_text(json.dumps({  # JSON is YAML
            "route": {"receiver": "test", "group_by": ["alertname", "instance", "mountpoint"],
                      "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [{"url": self.webhook.url, "send_resolved": True}]}],
        }, indent=1))
        prom_cfg = os.path.join(self.workdir, "prometheus.yml")
        Path(prom_cfg).write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [self.rules],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
            "scrape_configs": [{"job_name": "fsev",
                                "static_configs": [{"targets": [f"127.0.0.1:{self.fsev_port}"]}]}],
        }, indent=1))
        self._start("alertmanager", [ALERTMANAGER, f"--config.file={am_cfg}", f"--storage.path={am_dir}",
                                     f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address="])
        self._start("prometheus", [PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={prom_dir}",
                                   f"--web.listen-address=127.0.0.1:{self.prom_port}",
                                   # a resolved or re-fired alert goes to Alertmanager at the next evaluation
                                   "--rules.alert.resend-delay=1s"])
        self._wait_ready("alertmanager", self.am_port, timeout)
        self._wait_ready("prometheus", self.prom_port, timeout)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query against this Prometheus: its result vector."""
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        assert doc.get("status") == "success", doc
        return list(doc["data"]["result"])

    def wait_query(self, promql: str, timeout: float) -> list[dict[str, Any]]:
        """Waits until the query returns something; returns it (empty on timeout)."""
        end = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if res or time.monotonic() >= end:
                return res
            time.sleep(0.2)

    def diagnose(self) -> str:
        """What to print when an alert did not arrive: Prometheus's alerts and
        targets, the webhook's posts, the processes' last log lines."""
        parts = []
        for what, q in (("ALERTS", "ALERTS"), ("up", 'up{job="fsev"}')):
            try:
                parts.append(f"{what}: {json.dumps(self.query(q))}")
            except Exception as e:  # a diagnosis must not hide the failure it explains
                parts.append(f"{what}: query failed: {e}")
        parts.append(f"webhook posts: {json.dumps(self.webhook.posts)[-4000:]}")
        for name in self.procs:
            parts.append(f"{name} log:\n{self.log(name)[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()  # the PID we started, nothing else
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@contextlib.contextmanager
def prometheus_stack(rules: str, fsev_port: int | None = None) -> Iterator[PromStack]:
    """Prometheus (scraping 127.0.0.1:fsev_port as job "fsev", evaluating the
    rules file) and Alertmanager (to a webhook here), both started and ready."""
    work = tempfile.mkdtemp(prefix="fsev-prom-")
    hook = _webhook()
    stack = PromStack(work, os.path.abspath(rules), fsev_port or free_port(), hook)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        hook.server.shutdown()
        hook.server.server_close()
        shutil.rmtree(work, ignore_errors=True)
