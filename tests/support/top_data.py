"""Made-up mounts, statfs and events for the `fsev top` unit tests (no root)."""

from __future__ import annotations

from rich.console import Console

from fsev.events import Event, EventClass, EventType
from fsev.linux.mountinfo import parse_mountinfo
from fsev.top.fs_snapshot import FsStats
from fsev.top.model import TopModel
from fsev.top.view import render

NOW = 1_800_000_000.0
HOSTILE = "[red]x[/red]\x1b[2J"  # rich markup and "clear screen", as a kernel string

MOUNTINFO = "\n".join([
    r"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
    r"22 27 0:21 / /proc rw,relatime - proc proc rw",
    r"25 27 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=64k",
    r"44 27 7:0 / /srv/data rw,relatime - ext4 /dev/loop0 rw,errors=continue",
    r"46 27 0:51 / /mnt/thr rw,relatime - tmpfs tmpfs rw,size=8m",
    # a mount point and a source carrying markup and an escape sequence (mountinfo octal-escapes space only)
    "47 27 0:52 / /mnt/[red]x[/red]\x1b[2J rw,relatime - tmpfs src[bold]y\x1b[31m rw",
])
# mnt_id -> statfs, 4 KiB blocks: (blocks, free, avail)
STATS = {
    27: FsStats(4096, 1_000_000, 600_000, 550_000, False),   # 45 %
    25: FsStats(4096, 16, 16, 16, False),                    # 0 %
    44: FsStats(4096, 8000, 2000, 2000, False),              # 75 %
    46: FsStats(4096, 2048, 1024, 1024, False),              # 50 %
    47: FsStats(4096, 100, 90, 90, False),                   # 10 %
}


def mounts(text: str = MOUNTINFO):
    return parse_mountinfo(text)


def model(**kw) -> TopModel:
    kw.setdefault("rungs", [("ext4_error", "tracepoint"), ("mount_drop", "tracepoint")])
    m = TopModel("testhost", "6.18.0-test", started=NOW - 83, **kw)
    m.update_mounts(mounts(), STATS)
    return m


def ev(cls: EventClass = EventClass.ERR, typ: EventType = EventType.FS_ERROR, at: float = NOW, **kw) -> Event:
    base = dict(seq=1, ts_ns=1, wall_time=at, cls=cls, type=typ, rung="tracepoint")
    if typ is EventType.FS_ERROR:
        base.update(dev="7:0", mount_point="/srv/data", fs_type="ext4", function="trigger_test_error",
                    line=129, pid=4242, comm="bash")
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def thr_ev(level: str, direction: str, avail: int, level_blocks: int, at: float = NOW, dev: str = "0:51") -> Event:
    return Event(seq=1, ts_ns=1, wall_time=at, cls=EventClass.THR, type=EventType.THRESHOLD, rung="tracepoint",
                 dev=dev, mount_point="/mnt/thr", fs_type="tmpfs", avail_blocks=avail, level=level,
                 level_blocks=level_blocks, direction=direction)


def screen(m: TopModel, width: int = 160, height: int | None = None, now: float = NOW) -> str:
    """The rendered screen as plain text, as a user without colours would see it."""
    c = Console(width=width, force_terminal=True, color_system=None, record=True, highlight=False)
    c.print(render(m, width, height, now))
    return c.export_text()


def lines_with(text: str, needle: str) -> list[str]:
    return [l for l in text.splitlines() if needle in l]
