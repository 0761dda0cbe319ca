"""`fsev report` with XFS's events: health marks grouped by what they name,
shutdowns with their reasons, and the read-only state that followed."""

from __future__ import annotations

from rich.console import Console

from fsev.journal.report import build_report, render_report

T = 1_700_000_000.0
BASE = {"class": "err", "rung": "raw_tracepoint", "mount_point": "/srv/xfs", "fs_type": "xfs", "dev": "7:1"}


def _ev(seq: int, typ: str, **kw) -> dict:
    return {**BASE, "seq": seq, "wall_time": T + seq, "type": typ, "pid": 10 + seq, "comm": "ls", **kw}


EVENTS = [
    _ev(1, "fs_error", health="sick", scope="inode", inode=131, structures=["directory"]),
    _ev(2, "fs_error", health="sick", scope="inode", inode=140, structures=["directory"]),
    _ev(3, "fs_error", health="sick", scope="ag", group=0, structures=["bnobt"]),
    _ev(4, "fs_error", scope="ag", group=0, btree="bnobt", btree_level=1, function="__xfs_buf_ioend"),
    _ev(5, "shutdown", reasons=["metadata_io"], file="fs/xfs/xfs_trans_buf.c", line=311, comm="mkdir"),
    _ev(6, "read_only", read_only=True, flag="shutdown", cause="error", caused_by_seq=5, comm="mkdir"),
]


def test_xfs_events_have_their_own_rows_sections_and_details():
    rep = build_report("j", [], EVENTS, [])
    (m,) = rep["mounts"]
    assert [(g["function"], g["detail"], g["count"]) for g in m["errors"]] == [
        (None, "inode directory", 2), (None, "ag 0 bnobt", 1), ("__xfs_buf_ioend", "ag 0 btree bnobt", 1)]
    assert m["shutdowns"] == [{"wall_time": T + 5, "seq": 5, "reasons": ["metadata_io"],
                               "file": "fs/xfs/xfs_trans_buf.c", "line": 311, "pid": 15, "comm": "mkdir"}]
    assert m["read_only"][0]["flag"] == "shutdown" and m["read_only"][0]["caused_by_seq"] == 5
    assert m["other"] == {}
    c = Console(width=160, record=True, color_system=None)
    c.print(render_report(rep))
    text = c.export_text()
    for needle in ("inode directory", "ag 0 bnobt", "__xfs_buf_ioend (ag 0 btree bnobt)", "shutdowns",
                   "metadata_io", "fs/xfs/xfs_trans_buf.c:311", "err: read-only (shutdown) after an error (#5)"):
        assert needle in text, needle
    assert "?" not in text.split("errors")[1].split("shutdowns")[0]  # no function: the detail, not "?"
