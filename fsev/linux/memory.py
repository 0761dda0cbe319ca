"""Giving back what compiling the BPF program took, for long-running fsev processes.

bcc compiles with clang/LLVM inside the process. Measured on `fsev top`: RSS
155 MB right after attach, of which ~30 MB is heap LLVM freed but glibc kept,
and ~75 MB are pages of libLLVM and libclang-cpp that were executed once
and will not run again until exit. Both can go back; afterwards RSS is ~55 MB.
"""

from __future__ import annotations

import ctypes

from fsev.kernel.libc import libc

MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (data kept; a later touch faults them back in)
COMPILER_LIBRARIES = ("libLLVM", "libclang")


def compiler_mappings(maps_text: str) -> list[tuple[int, int]]:
    """Address ranges of the compiler libraries in a /proc/<pid>/maps text."""
    out = []
    for line in maps_text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and any(lib in parts[5].rsplit("/", 1)[-1] for lib in COMPILER_LIBRARIES):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end))
    return out


def shed_compiler_memory(maps_path: str = "/proc/self/maps") -> None:
    """Best effort: trim the malloc heap and page out the compiler's code.

    MADV_PAGEOUT is a hint with no effect on contents: private pages that were
    written (relocations) stay, as there is no swap to put them in; clean file
    pages are dropped and re-read from the library if anything touches them
    (bcc's cleanup at exit does, briefly). Nothing here can fail fsev.
    """
    c = libc()
    try:
        c.malloc_trim(0)  # glibc only
    except AttributeError:
        pass
    try:
        with open(maps_path) as f:
            ranges = compiler_mappings(f.read())
    except OSError:
        return
    madvise = c.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, end in ranges:
        madvise(start, end - start, MADV_PAGEOUT)  # EINVAL on kernels before 5.4: harmless
