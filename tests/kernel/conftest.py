from __future__ import annotations

from typing import Iterator

import pytest

from fsev.testing.kernel_rig import FsevTrace

ATTACH_S = 300  # bcc compiles slowly under emulation (the stock-kernel guests run these modules too)


@pytest.fixture(scope="module")
def err_trace() -> Iterator[FsevTrace]:
    """One `fsev trace --events err` over every mount for a whole module (one
    compile); each test picks its events by its own mount point."""
    with FsevTrace(["--events", "err"]) as t:
        t.wait_attached(timeout=ATTACH_S)
        yield t
        t.stop()
