"""The program text and the header numbers, without a kernel: source() expands
bpf/fsev.bpf.c's local includes once each, and fsev/kernel/records.py reads
bpf/fsev.h's numbers and enums instead of writing them again."""

from __future__ import annotations

import errno
import re

from support.kernels import TRACEPOINTS_ONLY

from fsev.kernel.records import FSEV_H, RecordClass, parse_header
from fsev.points.registry import plan_probes, source
from fsev.probes.program import MAIN_SOURCE, ProgramConfig, bpf_dir, expand_includes

TP_FACTS = TRACEPOINTS_ONLY


def test_source_is_the_preamble_then_every_local_include_expanded_once():
    cfg = ProgramConfig(classes=frozenset(RecordClass), watch_all=True)
    text = source(plan_probes(TP_FACTS), cfg, {})
    assert text.startswith("/* fsev load-time constants */\n#define FSEV_RINGBUF_PAGES ")
    assert not [line for line in text.splitlines() if re.match(r'\s*#\s*include\s*"', line)]
    assert "#include <uapi/linux/ptrace.h>" in text  # system headers stay for bcc
    files = sorted(p.name for p in bpf_dir().iterdir() if p.suffix in (".c", ".h") and p.name != MAIN_SOURCE)
    for name in files:  # every file in bpf/ is part of the program, once
        assert text.count(f"/* ---- bpf/{name} ---- */") == 1, name
    # each point's program is defined once even where two files include a header
    assert text.count("BPF_ARRAY(thr_state,") == 1 and text.count("RAW_TRACEPOINT_PROBE(sys_exit)") == 1
    assert text.count('/* #include "thr_common.h": expanded above */') == 1


def test_expand_includes_keeps_unknown_includes_and_reads_depth_first(tmp_path):
    (tmp_path / "a.c").write_text('#include "b.h"\n#include "c.h"\n#include "missing.h"\nA\n')
    (tmp_path / "b.h").write_text('#include "c.h"\nB\n')
    (tmp_path / "c.h").write_text("C\n")
    out = expand_includes("a.c", tmp_path)
    assert out.index("\nC\n") < out.index("\nB\n") < out.index("\nA\n")
    assert out.count("\nC\n") == 1 and '/* #include "c.h": expanded above */' in out
    assert '#include "missing.h"' in out


def test_header_parser_evaluates_c_integer_expressions():
    defines, enums = parse_header("""
        /* a comment with #define FAKE 1 */
        #define A 0x10u
        #define B (A | 1ull << 4)   // trailing comment
        #define NEG (-100)
        #define F(x) ((x) + 1)
        #define S "text"
        #define GUARD
        enum e { E_NONE = 0, E_ONE, E_BIG = 1 << 16, /* c */ E_NEXT, E_A = A };
    """)
    assert defines == {"A": 16, "B": 16, "NEG": -100}
    assert enums == {"e": {"E_NONE": 0, "E_ONE": 1, "E_BIG": 65536, "E_NEXT": 65537, "E_A": 16}}


def test_header_numbers_are_the_kernel_abi_ones():
    assert FSEV_H.FSEV_ENOSPC == errno.ENOSPC
    assert FSEV_H.FSEV_EFSCORRUPTED == errno.EUCLEAN
    assert FSEV_H.FSEV_MAX_ERRNO == 4095 and FSEV_H.FSEV_AT_FDCWD == -100
    assert (FSEV_H.FSEV_MS_BIND, FSEV_H.FSEV_MS_MOVE, FSEV_H.FSEV_MNT_DETACH) == (4096, 8192, 2)
    assert FSEV_H.FSEV_CLONE_NEWNS == 0x20000 and FSEV_H.FSEV_FSCONFIG_CMD_RECONFIGURE == 7


def _code(text: str) -> str:
    """The C without its comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def test_no_program_calls_what_makes_bcc_read_kallsyms_again():
    """A call bcc sees by the name bpf_probe_read_user{,_str} makes it read
    all of /proc/kallsyms again (45 ms of every compile): user memory is read
    through common.h's user_read()/user_str() only."""
    cfg = ProgramConfig(classes=frozenset(RecordClass), watch_all=True)
    code = _code(source(plan_probes(TP_FACTS), cfg, {}))
    assert not re.findall(r"\bbpf_probe_read_user(?:_str)?\s*\(", code)
    assert "BPF_FUNC_probe_read_user_str" in code and "BPF_FUNC_probe_read_user;" in code


def test_ptrace_h_is_read_only_for_kprobe_programs():
    """130 headers bcc parses three times: behind FSEV_KPROBES, which only a
    plan with a kprobe rung sets (tests/unit/points/test_trace_points.py)."""
    cfg = ProgramConfig(classes=frozenset(RecordClass), watch_all=True)
    lines = _code(source(plan_probes(TP_FACTS), cfg, {})).splitlines()
    at = next(i for i, line in enumerate(lines) if "#include <uapi/linux/ptrace.h>" in line)
    assert [line.strip() for line in lines[at - 1:at + 2]] == ["#if FSEV_KPROBES", "#include <uapi/linux/ptrace.h>",
                                                              "#endif"]
    assert "#define FSEV_KPROBES 0" in lines
