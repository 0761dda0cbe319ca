"""Who is on the other end of the socket, and what they may see.

The socket file's mode is the first gate (0600 root, or 0660 with the
configured group). The second is the kernel's word on the peer: SO_PEERCRED
gives the pid, uid and gid the client had when it connected, which no client
can forge. Root may listen and change the configuration; a member of
`socket_group` may listen, and sees only events of mounts its own mount
namespace has (a container's listener does not learn about the host's disks).
"""

from __future__ import annotations

import grp
import os
import socket
import struct
from dataclasses import dataclass

from fsev.events import Event

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @property
    def root(self) -> bool:
        return self.uid == 0

    def describe(self) -> str:
        return f"pid {self.pid} uid {self.uid}"


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid, uid, gid)


def groups_of(pid: int) -> set[int]:
    """The process's real gid and supplementary groups (/proc/PID/status)."""
    out: set[int] = set()
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Gid:"):
                    out.add(int(line.split()[1]))
                elif line.startswith("Groups:"):
                    out.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return out


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def may_listen(peer: Peer, group: str | None) -> str | None:
    """None if the peer may listen, else why not (one line)."""
    if peer.root:
        return None
    gid = group_id(group) if group else None
    if gid is None:
        return "permission denied: only root may listen (the configuration names no socket_group)"
    if gid == peer.gid or gid in groups_of(peer.pid):
        return None
    return f"permission denied: not root and not in group {group}"


def mount_ns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


class Visibility:
    """The devices of the mounts a non-root listener's mount namespace has.

    Read from /proc/PID/mountinfo of the listener at connect, and again after
    the mount table changes (stale()). In the service's own namespace every
    mount is visible and nothing is read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.same_namespace = mount_ns(pid) == mount_ns("self")
        self.devs: frozenset[str] = frozenset()
        self._stale = True

    def stale(self) -> None:
        self._stale = True

    def _read(self) -> None:
        """Add what the namespace has now. A device seen there stays visible:
        the unmount of a mount the listener saw is its business too, and by
        the time that event comes the mount is gone from its mountinfo."""
        self._stale = False
        devs: set[str] = set(self.devs)
        try:
            with open(f"/proc/{self.pid}/mountinfo") as f:
                for line in f:
                    parts = line.split(" ", 3)
                    if len(parts) > 2:
                        devs.add(parts[2])
        except OSError:
            pass  # the listener is gone: it sees nothing, and its socket closes soon
        self.devs = frozenset(devs)

    def sees(self, ev: Event) -> bool:
        if self.same_namespace or ev.dev is None:
            return True
        if self._stale:
            self._read()
        return ev.dev in self.devs
