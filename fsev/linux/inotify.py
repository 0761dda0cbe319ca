"""Superblock teardown through inotify IN_UNMOUNT: the mount-drop signal that
needs no kprobe. A watch on a mount's root gets IN_UNMOUNT when the filesystem
behind it is torn down, i.e. when a lazily unmounted mount's last user exits.
"""

from __future__ import annotations

import ctypes
import os
import struct

from fsev.kernel.libc import libc

IN_UNMOUNT = 0x00002000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
# A mask no ordinary activity matches (IN_DELETE_SELF): only unmount and
# ignore notifications, which the kernel sends regardless of the mask, arrive.
_QUIET_MASK = 0x00000400

_libc = libc()
_HDR = struct.Struct("iIII")


class UnmountWatcher:
    """Watches mount roots; read() returns the roots whose superblock went away."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self._roots: dict[int, str] = {}

    def watch(self, mount_point: str) -> bool:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(mount_point), _QUIET_MASK | IN_ONLYDIR)
        if wd < 0:
            return False  # not a directory, gone already, or no permission
        self._roots[wd] = mount_point
        return True

    def watching(self) -> set[str]:
        return set(self._roots.values())

    def read(self) -> list[str]:
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        gone: list[str] = []
        off = 0
        while off + _HDR.size <= len(buf):
            wd, mask, _cookie, namelen = _HDR.unpack_from(buf, off)
            off += _HDR.size + namelen
            root = self._roots.get(wd)
            if root is None:
                continue
            if mask & IN_UNMOUNT:
                gone.append(root)
            if mask & IN_IGNORED:
                del self._roots[wd]
        return gone

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
