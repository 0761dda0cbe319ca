"""The C library, for ctypes: the copy this process has loaded already.

ctypes.util.find_library("c") runs `ldconfig -p` (a fork and an exec, 5-10
ms) to learn a name the process has already loaded, and five modules asked on
the way to "attached". dlopen(NULL) is the process's own symbol table, libc's
among them. Each call gives a CDLL of its own, so the argtypes one module sets
on a function are not another's.
"""

from __future__ import annotations

import ctypes


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
