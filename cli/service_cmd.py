"""`fsev serve`, `fsev config`, and how trace/top/record find a running service."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

from fsev.errors import FsevError

if TYPE_CHECKING:
    from fsev.events import EventClass
    from fsev.linux.mountinfo import Mount
    from fsev.service.client import ServiceSession


def _say(msg: str) -> None:
    print(f"fsev: {msg}", file=sys.stderr, flush=True)


def run_serve(config_path: str, socket_path: str | None) -> int:
    from fsev.service.client import socket_path as default_socket
    from fsev.service.daemon import ServeOptions, serve

    return serve(ServeOptions(config_path=config_path, socket_path=socket_path or default_socket()))


def run_config(lines: list[str], show: bool) -> int:
    from fsev.service.client import request

    if show and lines:
        raise FsevError("--show takes no LINE: it prints the running configuration")
    if show or not lines:
        text = request({"op": "show"})["config"]
    else:
        text = request({"op": "config", "text": "\n".join(lines)})["config"]
    if text:
        print(text)  # the configuration in effect, in the language of the file
    return 0


def find_service(standalone: bool, standalone_why: str | None = None) -> tuple[socket.socket | None, str]:
    """A connection to the running service, or None to run standalone, and
    the line that says which. The caller prints it once its own checks have
    passed: a bad option or a missing privilege stays one line."""
    from fsev.service.client import connect, socket_path

    if standalone:
        return None, "standalone (--standalone)"
    path = socket_path()
    sock = connect(path)
    if sock is None:
        return None, f"no fsev service at {path}: standalone"
    if standalone_why is not None:
        sock.close()
        return None, f"{standalone_why}: standalone"
    return sock, ""


def listen(sock: socket.socket, mounts: "list[Mount]", classes: "frozenset[EventClass]",
           name: str) -> "ServiceSession":
    """Attach a listener, and say what of the request the service does not watch."""
    from fsev.service.client import ServiceSession, listen_filter

    session = ServiceSession(sock, listen_filter(mounts, classes), name)
    session.start()
    hello = session.hello
    _say(f"attached to the fsev service (pid {hello.get('pid')}, fsev {hello.get('version')})")
    watching = {w.get("dev"): w for w in hello.get("watching", [])}
    for m in mounts:
        w = watching.get(m.dev)
        missing = sorted(c.value for c in classes if w is None or c.value not in w.get("classes", []))
        if missing:
            _say(f"the service does not watch {m.mount_point} for {','.join(missing)} "
                 f"(fsev config '{m.mount_point} {','.join(missing)}')")
    return session
