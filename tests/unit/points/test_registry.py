"""The registry and the points agree with each other and with the C: what
adding a probe point must keep true (docs/architecture.md, Adding a probe point)."""

from __future__ import annotations

import re

from support.kernels import TRACEPOINTS_ONLY

from fsev.events import EventType
from fsev.kernel.records import RecordType
from fsev.points.registry import BTF_MODULES, POINTS, ProbePoint, plan_probes
from fsev.probes.program import MAIN_SOURCE, bpf_dir


def test_every_point_has_a_name_and_every_name_a_point():
    assert [p.name for p in POINTS] == [m.value for m in ProbePoint]


def test_the_plan_names_its_rungs_by_the_enum():
    rungs = plan_probes(TRACEPOINTS_ONLY).rungs
    assert [r.point for r in rungs] == list(ProbePoint) and all(isinstance(r.point, ProbePoint) for r in rungs)


def test_every_kernel_record_type_and_event_type_has_a_point():
    assert {p.record_type for p in POINTS if p.record_type} == set(RecordType) - {RecordType.NONE}
    assert {p.event_type for p in POINTS if p.event_type} == set(EventType) - {EventType.LOSS}


def test_struct_offsets_come_from_the_btf_of_every_module_a_point_hooks():
    """A point of a filesystem built as a module reads its structs from
    /sys/kernel/btf/<module>; one missing here fails at start on stock kernels."""
    assert BTF_MODULES[0] == "ext4" and len(set(BTF_MODULES)) == len(BTF_MODULES)
    assert {"btrfs", "xfs"} <= set(BTF_MODULES) and {p.module for p in POINTS if p.module} <= set(BTF_MODULES)


def test_each_point_with_c_has_its_file_included_and_its_switches_read_there():
    entry = (bpf_dir() / MAIN_SOURCE).read_text()
    included = set(re.findall(r'^#include "([^"]+)"', entry, re.M))
    for p in POINTS:
        if not p.switches:
            continue
        name = f"{p.name}.bpf.c"
        assert name in included, f"{MAIN_SOURCE} does not include {name}"
        c = (bpf_dir() / name).read_text()
        for macro in p.switches.values():
            assert re.search(rf"#if\b.*\b{macro}\b", c), f"{name} has no #if on {macro}"
