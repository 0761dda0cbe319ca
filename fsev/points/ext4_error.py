"""Probe point ext4_error: an ext4 error was raised (bpf/ext4_error.bpf.c).

Ladder: kprobes on the __ext4_error* functions (errno, inode and block from
their arguments), else the ext4:ext4_error tracepoint (device, function,
line; ext4_error_detail adds errno and inode from fanotify or sysfs). Its
records carry only common fields, so it has no decoder of its own and no
user-space half: ext4_error_detail's half completes its events.
"""

from __future__ import annotations

from fsev.events import Event, EventType
from fsev.kernel.facts import KernelFacts
from fsev.kernel.records import RecordClass, RecordType
from fsev.probes.ladder import Rung, RungKind, kprobe_skip_reason
from fsev.probes.point import Point
from fsev.probes.program import ProgramConfig

NAME = "ext4_error"
# ext4 error entry points, richest first. Known signatures (the kprobe program
# reads arguments by these positions; see bpf/ext4_error.bpf.c):
#   __ext4_error(sb, function, line, force_ro, error, block, fmt, ...)   5.11+
#   __ext4_error(sb, function, line, error, block, fmt, ...)             5.8-5.10
#   __ext4_error_inode(inode, function, line, block, error, fmt, ...)    5.8+
#   __ext4_error_file(file, function, line, block, fmt, ...)             errno is EFSCORRUPTED
#   __ext4_std_error(sb, function, line, errno)
EXT4_ERROR_FUNCTIONS = ("__ext4_error", "__ext4_error_inode", "__ext4_error_file", "__ext4_std_error")
# Most errors come through these two: without both, kprobes would miss some
# errors entirely, so the tracepoint (which sees all of them) is richer.
EXT4_ERROR_REQUIRED = ("__ext4_error", "__ext4_error_inode")
EXT4_ERROR_TRACEPOINT = "ext4:ext4_error"
# Kernel struct fields the kprobe programs read, as BTF specs.
KPROBE_OFFSETS = ("super_block.s_dev", "inode.i_sb", "inode.i_ino", "file.f_inode")
# Argument positions that moved between kernel versions (see the table above).
# __ext4_error gained `error, block` in 5.8 and `force_ro` before them in 5.11
# (Debian 11's 5.10 has the 5.8 order).
EXT4_ERROR_ARGS_5_11 = {"ARG___EXT4_ERROR_ERRNO": 5, "ARG___EXT4_ERROR_BLOCK": 6}
EXT4_ERROR_ARGS_5_10 = {"ARG___EXT4_ERROR_ERRNO": 4, "ARG___EXT4_ERROR_BLOCK": 5}


def _release(release: str) -> tuple[int, int]:
    parts = (release.split("-", 1)[0].split(".") + ["0", "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return 0, 0


def ext4_error_args(facts: KernelFacts) -> tuple[dict[str, int], str]:
    """__ext4_error's errno and block positions on this kernel, and how they
    were found: from the function's prototype in BTF (a stable backport may
    move them off its version's order), else by release."""
    pos = facts.ext4_error_errno_param
    if pos is not None:
        return ({"ARG___EXT4_ERROR_ERRNO": pos, "ARG___EXT4_ERROR_BLOCK": pos + 1},
                f"__ext4_error's errno is argument {pos} (its BTF prototype)")
    if _release(facts.release) < (5, 11):
        return EXT4_ERROR_ARGS_5_10, "__ext4_error's errno is argument 4 (5.8-5.10 order, by release: not in BTF)"
    return EXT4_ERROR_ARGS_5_11, "__ext4_error's errno is argument 5 (5.11+ order, by release: not in BTF)"


def plan_ext4_error(facts: KernelFacts) -> Rung:
    why = kprobe_skip_reason(facts, EXT4_ERROR_REQUIRED)
    if why is None:
        args, found = ext4_error_args(facts)
        return Rung(
            NAME,
            RungKind.KPROBE,
            tuple(f for f in EXT4_ERROR_FUNCTIONS if f in facts.kprobe_functions),
            gives=f"device, function, line, errno, inode, block, from the function arguments; {found}",
            args=tuple(args.items()),
        )
    skipped = (why,)
    if facts.has_tracepoint(EXT4_ERROR_TRACEPOINT):
        return Rung(
            NAME,
            RungKind.TRACEPOINT,
            (EXT4_ERROR_TRACEPOINT,),
            gives="device, function, line",
            misses="errno, inode and block (the tracepoint does not carry them)",
            skipped=skipped,
        )
    return Rung(NAME, RungKind.NONE, skipped=skipped + (f"tracepoint: {EXT4_ERROR_TRACEPOINT} not present",))


def describe_fs_error(ev: Event) -> str:
    parts = []
    if ev.function:
        parts.append(f"{ev.function}:{ev.line}" if ev.line else ev.function)
    if ev.errno is not None:
        parts.append(f"{ev.errno_name}({ev.errno})")
    if ev.inode:
        parts.append(f"inode {ev.inode}")
    if ev.block:
        parts.append(f"block {ev.block}")
    if ev.extra.get("transaction_abort"):  # btrfs (fsev/points/btrfs_error.py)
        parts.append("transaction abort")
    if ev.extra.get("message"):
        parts.append(str(ev.extra["message"]))
    return " ".join(parts)


class Ext4Error(Point):
    name = NAME
    record_type = RecordType.FS_ERROR
    event_type = EventType.FS_ERROR
    classes = frozenset({RecordClass.ERR})
    tracepoints = frozenset({EXT4_ERROR_TRACEPOINT})
    kprobe_functions = frozenset(EXT4_ERROR_FUNCTIONS)
    switches = {RungKind.KPROBE: "FSEV_EXT4_ERROR_KPROBE", RungKind.TRACEPOINT: "FSEV_EXT4_ERROR_TRACEPOINT"}

    def plan(self, facts: KernelFacts) -> Rung:
        return plan_ext4_error(facts)

    def defines(self, rung: Rung | None, config: ProgramConfig) -> list[tuple[str, str]]:
        d = super().defines(rung, config)
        if rung is not None and self.compiled_as(rung, config, RungKind.KPROBE):
            d += [(f"ATTACH_{fn.upper()}", "1") for fn in rung.targets]
            # Where plan() found them (a rung made by hand may lack them: the 5.11+ order).
            args = dict(rung.args) or EXT4_ERROR_ARGS_5_11
            d += [(f"{name}(ctx)", f"PT_REGS_PARM{pos}(ctx)") for name, pos in args.items()]
        return d

    def offsets(self, rung: Rung, config: ProgramConfig | None) -> tuple[str, ...]:
        # Resolved for the kprobe rung whatever the classes: a kernel whose BTF
        # lacks them cannot run this rung, and says so at start.
        return KPROBE_OFFSETS if rung.kind is RungKind.KPROBE else ()

    def describe(self, ev: Event) -> str:
        return describe_fs_error(ev)


POINT = Ext4Error()
