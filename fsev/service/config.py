"""The configuration of `fsev serve`: the 2015 RFC's per-mount `config` lines, plus settings.

One language serves the file (/etc/fsev/fsev.conf), a live `fsev config 'LINE'` and
`fsev config --show`, so a line that the service prints is a line it accepts
(ServiceConfig.text() parses back to the same config). Pure: nothing here looks at
the filesystem, so a mount may be configured before it exists (it is watched when
it appears), and the daemon checks what needs a real filesystem (levels in mixed
units, against statfs).

    # comments run to the end of the line; ';' separates requests on one line
    * err,warn                  # every mount: add err and warn
    /data thr 10% 5%            # /data: add thr, with free-space levels L1 L2
    !/data thr                  # remove thr from /data (and so its levels)
    journal_max_age 7d          # a service setting: the later one wins

docs/service.md ("The configuration") is the user's reference.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from fsev.errors import FsevError
from fsev.events import EventClass
from fsev.thresholds.levels import _SIZE_UNITS, LevelSpec, ThresholdError, ThresholdSpec, parse_thr

DEFAULT_PATH = "/etc/fsev/fsev.conf"
EVERY_MOUNT = "*"

_CLASS_ORDER: tuple[EventClass, ...] = tuple(EventClass)  # info, warn, err, thr: the order text() writes
_TYPES: dict[str, frozenset[EventClass]] = {c.value: frozenset({c}) for c in EventClass}
_TYPES["all"] = frozenset(EventClass)
_TYPES_HELP = "info, warn, err, thr, all"
_THR = EventClass.THR


class ConfigError(FsevError):
    """A bad request or file, refused whole; str() is one line: `WHERE: WHAT`.

    `where` is "line 3", "line 3, request 2" or "PATH: line 3" (None for a message
    that names its place itself, such as "cannot read PATH: ..."); `reason` is the rest.
    """

    def __init__(self, reason: str, where: str | None = None) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.where = where


# -- the configuration ------------------------------------------------------


@dataclass(frozen=True)
class MountRule:
    """What one configured target watches: its own entry, before `*` is merged in.

    Never empty: a rule whose last type is removed is removed. `levels` may be set
    without `thr` in `classes` when `*` supplies thr (a mount's own levels for the
    thr that every mount watches).
    """

    target: str  # "*" or a normalised absolute path
    classes: frozenset[EventClass]
    levels: ThresholdSpec | None


@dataclass(frozen=True)
class Settings:
    """Every service setting, with its default; the SETTINGS table below names and parses them."""

    socket_group: str | None = None  # the group that may listen on the socket, besides root
    journal: str | None = "/var/lib/fsev/flight.fsev"  # None: no flight recorder
    journal_max_size: int = 1 << 30
    journal_max_age_s: float = 30 * 86400.0
    journal_hard_cap: int | None = None  # None: 2 x journal_max_size
    journald: bool = True
    listener_queue: int = 65536  # events per listener queue
    listener_timeout_s: float = 60.0  # a listener full and silent this long is dropped
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint; None: off
    metrics_textfile: str | None = None  # the directory fsev.prom is written to; None: off

    @property
    def hard_cap(self) -> int:
        """The size past which the journal is trimmed even of unacknowledged records."""
        return self.journal_hard_cap if self.journal_hard_cap is not None else 2 * self.journal_max_size


@dataclass(frozen=True)
class ServiceConfig:
    """The whole configuration: immutable, so a change builds a new one and the running
    one stays exactly as it was when the change is refused."""

    rules: tuple[MountRule, ...]  # `*` first, then first-configured order; one per target
    settings: Settings

    def rule(self, target: str) -> MountRule | None:
        key = target if target == EVERY_MOUNT else _normalise(target)
        return next((r for r in self.rules if r.target == key), None)

    def classes_for(self, mount_point: str) -> frozenset[EventClass]:
        """The classes a real mount is watched for: `*`'s and its own."""
        own, star = self.rule(mount_point), self.rule(EVERY_MOUNT)
        return (own.classes if own else frozenset()) | (star.classes if star else frozenset())

    def levels_for(self, mount_point: str) -> ThresholdSpec | None:
        """Its own levels, else `*`'s: `* thr 10% 5%` gives every mount levels, one mount may differ."""
        own, star = self.rule(mount_point), self.rule(EVERY_MOUNT)
        if own is not None and own.levels is not None:
            return own.levels
        return star.levels if star is not None else None

    def watches(self, mount_point: str) -> bool:
        return bool(self.classes_for(mount_point))

    def text(self) -> str:
        """The effective configuration as config lines, without a final newline: settings that
        differ from their defaults (in SETTINGS order), then one `TARGET TYPES [L1 [L2]]` per rule."""
        defaults = Settings()
        lines = []
        for name, setting in SETTINGS.items():
            value = getattr(self.settings, setting.field)
            if value != getattr(defaults, setting.field):
                lines.append(f"{name} {setting.format(value)}")
        for r in self.rules:
            words = [_escape(r.target), ",".join(c.value for c in _CLASS_ORDER if c in r.classes)]
            if r.levels is not None:
                words += [r.levels.l1.text] + ([r.levels.l2.text] if r.levels.l2 else [])
            lines.append(" ".join(words))
        return "\n".join(lines)


EMPTY = ServiceConfig(rules=(), settings=Settings())


# -- requests ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One parsed request, not yet applied: `where` ("line 3, request 2") and `source`
    (its text, comment removed) let an error at apply time name it as parse would."""

    where: str
    source: str


@dataclass(frozen=True)
class AddTypes(Request):
    """`MOUNT TYPES [L1 [L2]]`: add TYPES to the target; levels, when given, replace its levels."""

    target: str
    classes: frozenset[EventClass]
    levels: ThresholdSpec | None


@dataclass(frozen=True)
class RemoveTypes(Request):
    """`!MOUNT [TYPES]`: remove TYPES (None: the whole entry, levels too)."""

    target: str
    classes: frozenset[EventClass] | None


@dataclass(frozen=True)
class SetSetting(Request):
    """`NAME VALUE`: `value` is already parsed, of the type of the Settings field."""

    name: str
    value: Any


# -- settings ---------------------------------------------------------------


def parse_size(text: str) -> int:
    """A size in bytes: `1073741824`, `512M`, `1G`, `1.5GiB` (the suffixes --thr takes).
    Exact (no float), so the largest size still parses back from text() unchanged."""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?([KMGTP]i?B?|B)?", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"bad size {text!r}: expected bytes (1073741824) or a size (512M, 1G)")
    amount = Fraction(int(m.group(1))) + (Fraction(int(m.group(2)), 10 ** len(m.group(2))) if m.group(2) else 0)
    suffix = (m.group(3) or "").upper().rstrip("B").rstrip("I")
    size = int(amount * _SIZE_UNITS[suffix])
    if size <= 0:
        raise ConfigError(f"bad size {text!r}: must be more than 0 bytes")
    return size


def format_size(size: int) -> str:
    for suffix in ("P", "T", "G", "M", "K"):
        if size % _SIZE_UNITS[suffix] == 0:
            return f"{size // _SIZE_UNITS[suffix]}{suffix}"
    return str(size)


_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds from `90s`, `15m`, `12h`, `30d`, `2w` (fractions too: `1.5h`). A unit is
    required: a bare `30` could mean seconds or days, and a wrong guess is silent."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)([smhdw])", text)
    if not m:
        raise ConfigError(f"bad duration {text!r}: expected a number and a unit, e.g. 90s, 15m, 12h, 30d, 2w")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"bad duration {text!r}: must be more than 0 and finite")
    return seconds


def format_duration(seconds: float) -> str:
    # In the largest unit that divides it, exactly: N * unit parses back to the same float
    # (N has no more significant bits than the seconds). Otherwise repr, which round-trips.
    seconds = float(seconds)  # an int from a caller: int.is_integer() is 3.12+
    if seconds.is_integer():
        for unit, n in _DURATION_UNITS.items():
            if seconds % n == 0:
                return f"{int(seconds) // n}{unit}"
    return f"{seconds!r}s"


def _parse_group(text: str) -> str | None:
    # The group need not exist yet: the daemon resolves it when it makes the socket.
    if text == "none":
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|\d+", text):
        raise ConfigError(f"bad group name {text!r}: expected a unix group name or number, or none")
    return text


def _parse_journal(text: str) -> str | None:
    return None if text == "off" else _path(text, "path")


def _format_journal(path: str | None) -> str:
    return "off" if path is None else _escape(path)


def _parse_switch(text: str) -> bool:
    if text not in ("on", "off"):
        raise ConfigError(f"bad switch {text!r}: expected on or off")
    return text == "on"


def _parse_queue(text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ConfigError(f"bad queue length {text!r}: expected a number of events")
    if int(text) < 16:
        raise ConfigError(f"bad queue length {text!r}: at least 16 events")
    return int(text)


def _parse_metrics(text: str) -> tuple[str, int] | None:
    """`ADDR:PORT`, `[V6ADDR]:PORT`, `:PORT` or `PORT` (127.0.0.1: a metrics endpoint is
    for the local scraper unless told otherwise), or `off`."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ok = bool(re.fullmatch(r"[0-9A-Fa-f:.]+", host))
    else:
        ok = bool(re.fullmatch(r"[A-Za-z0-9.-]*", host))
    if not ok or not re.fullmatch(r"\d{1,5}", port):
        raise ConfigError(f"bad address {text!r}: expected ADDR:PORT, :PORT, PORT or off")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"bad address {text!r}: port {port} out of range 1-65535")
    return host or "127.0.0.1", int(port)


def _format_metrics(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "off"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_textfile(text: str) -> str | None:
    return None if text == "off" else _path(text, "directory")


@dataclass(frozen=True)
class _Setting:
    field: str  # in Settings
    parse: Callable[[str], Any]
    format: Callable[[Any], str]


# Every setting, in the order text() writes them: journal_max_size before journal_hard_cap,
# so the cap is checked against the new size when a printed config is read back.
# A new setting is a field of Settings and one line here.
SETTINGS: dict[str, _Setting] = {
    "socket_group": _Setting("socket_group", _parse_group, str),
    "journal": _Setting("journal", _parse_journal, _format_journal),
    "journal_max_size": _Setting("journal_max_size", parse_size, format_size),
    "journal_max_age": _Setting("journal_max_age_s", parse_duration, format_duration),
    "journal_hard_cap": _Setting("journal_hard_cap", parse_size, format_size),
    "journald": _Setting("journald", _parse_switch, lambda on: "on" if on else "off"),
    "listener_queue": _Setting("listener_queue", _parse_queue, str),
    "listener_timeout": _Setting("listener_timeout_s", parse_duration, format_duration),
    "metrics": _Setting("metrics", _parse_metrics, _format_metrics),
    "metrics_textfile": _Setting("metrics_textfile", _parse_textfile, _format_journal),
}


def _settings_problem(s: Settings) -> str | None:
    if s.journal_hard_cap is not None and s.journal_hard_cap < s.journal_max_size:
        return (f"journal_hard_cap ({format_size(s.journal_hard_cap)}) below journal_max_size "
                f"({format_size(s.journal_max_size)})")
    return None


# -- words ------------------------------------------------------------------

_BLANK = " \t\r\f\v"
# Written as \ooo by text(): what would otherwise end a word, a request or the line.
_ESCAPED = frozenset(_BLANK + "\n\\#;\"")
_OCTAL = re.compile(rb"\\([0-3][0-7]{2})")


@dataclass(frozen=True)
class _Word:
    text: str  # quotes removed, escapes not yet decoded
    start: int  # in its line, for slicing the source
    end: int


def _split_line(line: str, where: str) -> list[tuple[str, list[_Word]]]:
    """The non-blank requests of one line, each (source, words). `"..."` quotes part of a
    word (blanks, `#` and `;` inside are literal); `#` outside quotes ends the line."""
    out: list[tuple[str, list[_Word]]] = []
    words: list[_Word] = []
    chars: list[str] = []
    in_word = quoted = False  # in_word: `""` is a word too (an empty one)
    word_start = request_start = 0
    stop = len(line)
    for i, c in enumerate(line):
        if quoted:
            if c == '"':
                quoted = False
            else:
                chars.append(c)
            continue
        if c == "#":
            stop = i
            break
        if c in _BLANK or c == ";":
            if in_word:
                words.append(_Word("".join(chars), word_start, i))
                chars, in_word = [], False
            if c == ";":
                out.append((line[request_start:i], words))
                words, request_start = [], i + 1
            continue
        if not in_word:
            in_word, word_start = True, i
        if c == '"':
            quoted = True
        else:
            chars.append(c)
    if quoted:
        raise ConfigError('unterminated quote (")', where)
    if in_word:
        words.append(_Word("".join(chars), word_start, stop))
    out.append((line[request_start:stop], words))
    return [(source.strip(_BLANK), ws) for source, ws in out if ws]


def _unescape(text: str) -> str:
    """fstab's and mountinfo's `\\040`: octal escapes of bytes, decoded as the kernel's
    paths are (os.fsdecode), so any path, UTF-8 or not, can be written."""
    if "\\" not in text:
        return text
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(text)))


def _escape(path: str) -> str:
    out: list[str] = []
    for c in path:
        o = ord(c)
        if c in _ESCAPED or o < 0x20 or o == 0x7F or 0xDC80 <= o <= 0xDCFF:  # the last: undecodable bytes
            out.extend(f"\\{b:03o}" for b in os.fsencode(c))
        else:
            out.append(c)
    return "".join(out)


def _normalise(path: str) -> str:
    # Lexical only (no symlinks, no `..` against the disk): the mount may not exist yet.
    # normpath keeps a leading `//` (POSIX leaves it implementation-defined); mountinfo never has one.
    p = os.path.normpath(path)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def _path(word: str, what: str, star: bool = False) -> str:
    text = _unescape(word)
    if star and text == EVERY_MOUNT:
        return text
    if "\0" in text:
        raise ConfigError(f"{what} {text!r}: contains a NUL byte")
    if not text.startswith("/"):
        raise ConfigError(f"{what} {text!r}: not an absolute path" + (" or *" if star else ""))
    return _normalise(text)


def _types(word: str) -> frozenset[EventClass]:
    out: frozenset[EventClass] = frozenset()
    for name in word.split(","):
        if name not in _TYPES:
            raise ConfigError(f"unknown type {name!r} (choose from {_TYPES_HELP})")
        out |= _TYPES[name]
    return out


def _is_types(word: str) -> bool:
    return all(name in _TYPES for name in word.split(","))


def _level(text: str) -> LevelSpec:
    try:
        return parse_thr(text).l1  # one level: parse_thr's own words for a bad one
    except ThresholdError as e:
        raise ConfigError(str(e)) from None


def _levels(words: list[_Word], line: str, source: str) -> ThresholdSpec | None:
    """`L1 [L2]` as separate words, or `L1,L2` as one (--thr's spelling)."""
    if not words:
        return None
    if "," in words[0].text:
        texts, rest = words[0].text.split(","), words[1:]
        if len(texts) != 2 or not all(texts):
            raise ConfigError(f"bad levels {words[0].text!r}: expected L1 [L2] or L1,L2")
    else:
        texts, rest = [w.text for w in words[:2]], words[2:]
        if len(texts) == 2 and "," in texts[1]:
            raise ConfigError(f"bad level {texts[1]!r}: expected L1 [L2] or L1,L2")
    l1 = _level(texts[0])
    l2 = _level(texts[1]) if len(texts) == 2 else None
    # Levels count available space, so L2 (the later warning) is the smaller. Only levels in
    # one unit compare here; blocks against bytes or percent need the filesystem's block size
    # and size, so the daemon checks those against statfs when it arms the mount.
    if l2 is not None and l1.unit == l2.unit and l2.amount > l1.amount:
        raise ConfigError(f"{source}: L2 ({l2.text}) above L1 ({l1.text})")
    _no_garbage(rest, line)
    return ThresholdSpec(l1, l2)


def _no_garbage(words: list[_Word], line: str) -> None:
    if words:
        raise ConfigError(f"trailing garbage {line[words[0].start:words[-1].end]!r}")


# -- parse and apply --------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _request(words: list[_Word], line: str, source: str, where: str) -> Request:
    head = words[0]
    raw = line[head.start:head.end]
    rest = words[1:]
    if head.text in SETTINGS and not raw.startswith('"'):
        if not rest:
            raise ConfigError(f"{head.text}: no value")
        _no_garbage(rest[1:], line)
        try:
            value = SETTINGS[head.text].parse(rest[0].text)
        except ConfigError as e:
            raise ConfigError(f"{head.text}: {e.reason}") from None
        return SetSetting(where, source, head.text, value)
    remove = raw.startswith("!")
    # A bare name is a misspelt setting, unless TYPES follow it: then it is a mount written
    # without its leading slash, and saying so helps more than listing settings.
    if not remove and _NAME.fullmatch(raw) and not (rest and _is_types(rest[0].text)):
        raise ConfigError(f"unknown setting {head.text!r} (settings: {', '.join(SETTINGS)}; "
                          "or a mount request: MOUNT TYPES [L1 [L2]], !MOUNT [TYPES])")
    target = _path(head.text[1:] if remove else head.text, "mount", star=True)
    if remove:
        if not rest:
            return RemoveTypes(where, source, target, None)
        classes = _types(rest[0].text)
        _no_garbage(rest[1:], line)
        return RemoveTypes(where, source, target, classes)
    if not rest:
        raise ConfigError(f"{source}: no event types (choose from {_TYPES_HELP})")
    return AddTypes(where, source, target, _types(rest[0].text), _levels(rest[1:], line, source))


def parse(text: str, first_line: int = 1) -> list[Request]:
    """Every request of a text, in order; raises ConfigError on the first bad one.
    first_line numbers the first line (a live change is its own "line 1")."""
    out: list[Request] = []
    for n, line in enumerate(text.split("\n"), first_line):
        requests = _split_line(line, f"line {n}")
        for k, (source, words) in enumerate(requests, 1):
            where = f"line {n}" if len(requests) == 1 else f"line {n}, request {k}"
            try:
                out.append(_request(words, line, source, where))
            except ConfigError as e:
                raise ConfigError(e.reason, where) from None
    return out


def _rules_problem(rules: dict[str, MountRule], target: str) -> str | None:
    """What makes the rules inconsistent, the request's own target first: thr with no levels
    to use, or levels with no thr to use them (either would fail silently at run time)."""
    star = rules.get(EVERY_MOUNT)
    for r in sorted(rules.values(), key=lambda r: r.target != target):
        inherited = star if star is not None and r.target != EVERY_MOUNT else None
        classes = r.classes | (inherited.classes if inherited else frozenset())
        levels = r.levels or (inherited.levels if inherited else None)
        name = "" if r.target == target else f"{_escape(r.target)} would have "
        if _THR in classes and levels is None:
            hint = f", e.g. '{_escape(r.target)} thr 10% 5%'" if r.target == target else ""
            return f"{name}thr without free-space levels{hint}"
        if r.levels is not None and _THR not in classes:
            return f"{name}levels {r.levels.text} without thr"
    return None


def apply(config: ServiceConfig, requests: Iterable[Request]) -> ServiceConfig:
    """The config after every request, in order, or ConfigError naming the first that fails
    (the config stays consistent after each request, so the error names the culprit)."""
    rules = {r.target: r for r in config.rules}
    settings = config.settings
    for req in requests:
        if isinstance(req, SetSetting):
            settings = replace(settings, **{SETTINGS[req.name].field: req.value})
            problem = _settings_problem(settings)
        elif isinstance(req, AddTypes):
            old = rules.get(req.target)
            classes = req.classes | (old.classes if old else frozenset())
            levels = req.levels if req.levels is not None else (old.levels if old else None)
            rules[req.target] = MountRule(req.target, classes, levels)  # an existing one keeps its place
            problem = _rules_problem(rules, req.target)
        elif isinstance(req, RemoveTypes):
            old = rules.get(req.target)
            if old is None:
                raise ConfigError(f"{req.source}: {_escape(req.target)} is not configured", req.where)
            left = frozenset() if req.classes is None else old.classes - req.classes
            if not left:
                del rules[req.target]  # a rule with no types watches nothing: it goes, levels too
            else:
                dropped = req.classes is not None and _THR in req.classes
                rules[req.target] = MountRule(req.target, left, None if dropped else old.levels)
            problem = _rules_problem(rules, req.target)
        else:
            raise TypeError(f"not a config request: {req!r}")
        if problem:
            raise ConfigError(f"{req.source}: {problem}", req.where)
    star = [rules.pop(EVERY_MOUNT)] if EVERY_MOUNT in rules else []
    return ServiceConfig(tuple(star + list(rules.values())), settings)


def load(text: str) -> ServiceConfig:
    """A whole file, from nothing: what `fsev serve` starts with and SIGHUP re-reads."""
    return apply(EMPTY, parse(text))


def read_file(path: str) -> ServiceConfig:
    # surrogateescape: a path in the file that is not UTF-8 reaches os.fsencode byte for byte.
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return load(text)
    except ConfigError as e:
        raise ConfigError(e.reason, f"{path}: {e.where}" if e.where else path) from None
