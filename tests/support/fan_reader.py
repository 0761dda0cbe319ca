"""An independent FAN_FS_ERROR reader, as a second monitor on the host would
be: `python fan_reader.py MOUNT_POINT` marks the filesystem, prints "ready",
then one JSON line per event read ({"errno": .., "count": ..}) as soon as
the kernel queues it, until killed (SIGTERM)."""

from __future__ import annotations

import json
import select
import signal
import sys

from fsev.linux.fanotify import (
    FAN_CLASS_NOTIF,
    FAN_FS_ERROR,
    FAN_MARK_ADD,
    FAN_MARK_FILESYSTEM,
    FAN_REPORT_FID,
    FanotifyGroup,
)


def main(mount_point: str) -> None:
    g = FanotifyGroup(FAN_CLASS_NOTIF | FAN_REPORT_FID)
    g.mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, path=mount_point)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    p = select.poll()
    p.register(g.fd, select.POLLIN)
    while True:
        p.poll()
        for ev in g.read():
            if ev.error is not None:
                print(json.dumps({"errno": ev.error, "count": ev.error_count}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
