"""bpf/fsev.h is the one record layout; fsev/kernel/records.py must mirror what bcc compiles."""

from __future__ import annotations

import ctypes
import re

import pytest
from support.kernels import TRACEPOINTS_ONLY

from fsev.kernel import records
from fsev.kernel.early import cflags
from fsev.kernel.records import Record, RecordClass
from fsev.points.registry import plan_probes, source
from fsev.probes.program import ProgramConfig, bpf_dir

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def compiled():
    """The real fsev program (tracepoint rungs: they need no BTF offsets)."""
    from bcc import BPF
    from bcc.table import _get_event_class

    facts = TRACEPOINTS_ONLY
    cfg = ProgramConfig(classes=frozenset(RecordClass(c) for c in (1, 2, 3, 4)), watch_all=True)
    b = BPF(text=source(plan_probes(facts), cfg, {}).encode(), cflags=cflags(bpf_dir()))
    try:
        yield _get_event_class(b[b"events"])
    finally:
        b.cleanup()


def test_mirror_matches_compiled_struct(compiled):
    theirs = [(name, getattr(compiled, name).offset, getattr(compiled, name).size) for name, _ in compiled._fields_]
    ours = [(name, getattr(Record, name).offset, getattr(Record, name).size) for name, _ in Record._fields_]
    assert ours == theirs
    assert ctypes.sizeof(Record) == ctypes.sizeof(compiled)


def _header() -> str:
    return (bpf_dir() / "fsev.h").read_text()


def _c_enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", _header(), re.S).group(1)
    out = {}
    for m in re.finditer(r"(FSEV_\w+)\s*=\s*([^,\n/]+)", body):
        out[m.group(1)] = eval(m.group(2).replace("<<", "<<"))  # only integer literals and shifts
    return out


@pytest.mark.parametrize(
    "c_enum, py_enum, prefix",
    [
        ("fsev_class", records.RecordClass, "FSEV_CLASS_"),
        ("fsev_type", records.RecordType, "FSEV_TYPE_"),
        ("fsev_rung", records.Rung, "FSEV_RUNG_"),
        ("fsev_field", records.Field, "FSEV_F_"),
        ("fsev_direction", records.Direction, "FSEV_DIR_"),
        ("fsev_call", records.Call, "FSEV_CALL_"),
        ("fsev_ro_bits", records.RoBits, "FSEV_RO_"),
    ],
)
def test_enums_match_header(c_enum, py_enum, prefix):
    c = {k[len(prefix):]: v for k, v in _c_enum(c_enum).items()}
    py = {m.name: int(m.value) for m in py_enum}
    assert c == py


def test_zero_is_reserved_in_every_enum():
    for e in ("fsev_class", "fsev_type", "fsev_rung", "fsev_direction", "fsev_call"):
        assert 0 in _c_enum(e).values()
        assert [k for k, v in _c_enum(e).items() if v == 0][0].endswith("NONE")


def test_lengths_match_header():
    h = _header()
    for name, value in (("COMM", records.COMM_LEN), ("FUNC", records.FUNC_LEN), ("PATH", records.PATH_LEN)):
        assert re.search(rf"#define FSEV_{name}_LEN {value}\b", h)
    assert re.search(rf"#define FSEV_THR_SLOTS {records.THR_SLOTS}\b", h)
