"""The configuration language of `fsev serve` (fsev/service/config.py): no kernel, no root."""

from __future__ import annotations

import builtins
import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsev.errors import FsevError
from fsev.events import EventClass
from fsev.service.config import (
    DEFAULT_PATH,
    EMPTY,
    SETTINGS,
    AddTypes,
    ConfigError,
    MountRule,
    RemoveTypes,
    ServiceConfig,
    SetSetting,
    Settings,
    apply,
    format_duration,
    format_size,
    load,
    parse,
    parse_duration,
    parse_size,
    read_file,
)
from fsev.thresholds.levels import parse_thr

INFO, WARN, ERR, THR = EventClass.INFO, EventClass.WARN, EventClass.ERR, EventClass.THR


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(text)
    return str(e.value)


# -- error messages, exactly -------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("/a info\n\n/data thr 5% 10%", "line 3: /data thr 5% 10%: L2 (10%) above L1 (5%)"),
    ("/data warning", "line 1: unknown type 'warning' (choose from info, warn, err, thr, all)"),
    ("# a comment\n/data thr 10% 5% x y", "line 2: trailing garbage 'x y'"),
    ("\n\n\ndata thr 5%", "line 4: mount 'data': not an absolute path or *"),
    ("/a info\n/b info\n/c info; /data thr 5% 10%", "line 3, request 2: /data thr 5% 10%: L2 (10%) above L1 (5%)"),
    ("!/data", "line 1: !/data: /data is not configured"),
    ("/data", "line 1: /data: no event types (choose from info, warn, err, thr, all)"),
    ("/data all", "line 1: /data all: thr without free-space levels, e.g. '/data thr 10% 5%'"),
    ("/data info 10%", "line 1: /data info 10%: levels 10% without thr"),
    ('/data info "x', 'line 1: unterminated quote (")'),
    ("listener_queue 8", "line 1: listener_queue: bad queue length '8': at least 16 events"),
    ("journal", "line 1: journal: no value"),
    ("journal_max_size 2G\njournal_hard_cap 1G",
     "line 2: journal_hard_cap 1G: journal_hard_cap (1G) below journal_max_size (2G)"),
])
def test_error_messages(text, message):
    assert error(text) == message


def test_an_error_is_an_fsev_error_on_one_line_with_where_and_reason():
    with pytest.raises(ConfigError) as e:
        load("/a info; /b bogus")
    assert isinstance(e.value, FsevError) and e.value.exit_code == 2
    assert e.value.where == "line 1, request 2" and e.value.reason.startswith("unknown type 'bogus'")
    assert "\n" not in str(e.value)


def test_unknown_setting_names_it_and_lists_every_setting():
    msg = error("jornal /var/lib/x")
    assert msg.startswith("line 1: unknown setting 'jornal' (settings: ")
    assert all(name in msg for name in SETTINGS) and "MOUNT TYPES" in msg


def test_a_bare_word_followed_by_types_is_a_mount_without_its_slash():
    assert error("data err") == "line 1: mount 'data': not an absolute path or *"
    assert error("data").startswith("line 1: unknown setting 'data'")


def test_parse_numbers_from_first_line():
    assert parse("/a info\n/b info", first_line=7)[1].where == "line 8"
    with pytest.raises(ConfigError, match=r"^line 11: "):
        parse("/a info\n\n\n/b nope", first_line=8)


def test_parse_raises_on_the_first_bad_request():
    with pytest.raises(ConfigError, match=r"^line 2: unknown type 'x'"):
        parse("/a info\n/b x\n/c y")


# -- words: ';', comments, quotes, escapes -------------------------------------

def test_semicolons_and_comments_separate_and_end_requests():
    reqs = parse("/a info ; /b err # /c warn ; /d thr\n;;  ; # only a comment\n   \n/e warn;")
    assert [(r.where, r.source) for r in reqs] == [
        ("line 1, request 1", "/a info"),
        ("line 1, request 2", "/b err"),
        ("line 4", "/e warn"),
    ]


def test_a_hash_inside_quotes_is_part_of_the_path():
    c = load('"/mnt/a #1" err # a comment')
    assert [r.target for r in c.rules] == ["/mnt/a #1"]


def test_paths_with_spaces_octal_escapes_or_quotes():
    c = load('/mnt/my\\040disk info\n"/mnt/other disk" err\n/mnt/"half quoted"/x warn')
    assert [r.target for r in c.rules] == ["/mnt/my disk", "/mnt/other disk", "/mnt/half quoted/x"]


def test_octal_escapes_are_bytes_decoded_as_the_kernel_paths_are():
    c = load("/mnt/caf\\303\\251 info\n/mnt/raw\\377 info\n/mnt/a\\\\b info\n/mnt/x\\9 info")
    assert [r.target for r in c.rules] == ["/mnt/café", os.fsdecode(b"/mnt/raw\xff"), "/mnt/a\\\\b", "/mnt/x\\9"]


@pytest.mark.parametrize("word, target", [
    ("/data/", "/data"), ("//data", "/data"), ("///data//x/.", "/data/x"), ("/data/../srv", "/srv"),
    ("/", "/"), ("*", "*"), ("/not/mounted/yet", "/not/mounted/yet"),
])
def test_mount_paths_are_normalised_lexically(word, target):
    assert load(f"{word} info").rules[0].target == target


@pytest.mark.parametrize("text, message", [
    ("./data info", "line 1: mount './data': not an absolute path or *"),
    ('"" info', "line 1: mount '': not an absolute path or *"),
    ('"*x" info', "line 1: mount '*x': not an absolute path or *"),
    ("/a\\000b info", "line 1: mount '/a\\x00b': contains a NUL byte"),
    ("/a\0b info", "line 1: mount '/a\\x00b': contains a NUL byte"),
    ("!data", "line 1: mount 'data': not an absolute path or *"),
    ("! /data", "line 1: mount '': not an absolute path or *"),
])
def test_bad_mounts(text, message):
    assert error(text) == message


def test_a_quoted_setting_name_is_a_mount_not_a_setting():
    assert error('"journal" off') == "line 1: mount 'journal': not an absolute path or *"


# -- types and levels --------------------------------------------------------

@pytest.mark.parametrize("types, classes", [
    ("info", {INFO}), ("warn,err", {WARN, ERR}), ("err,err", {ERR}),
    ("all", {INFO, WARN, ERR, THR}), ("info,all", {INFO, WARN, ERR, THR}),
])
def test_types(types, classes):
    levels = " 10%" if THR in classes else ""
    assert load(f"/d {types}{levels}").rules[0].classes == classes


@pytest.mark.parametrize("types, bad", [("info,,err", ""), ("INFO", "INFO"), ("info,warning", "warning")])
def test_unknown_types(types, bad):
    assert error(f"/d {types}") == f"line 1: unknown type {bad!r} (choose from info, warn, err, thr, all)"


@pytest.mark.parametrize("words, thr", [
    ("10% 5%", "10%,5%"), ("10%,5%", "10%,5%"), ("10%", "10%"), ("2G 1G", "2G,1G"),
    ("710000 500000", "710000,500000"), ("5% 5%", "5%,5%"), ("1G 10%", "1G,10%"), ("100 10G", "100,10G"),
])
def test_levels_in_the_forms_thr_takes(words, thr):
    assert load(f"/data thr {words}").levels_for("/data") == parse_thr(thr)


@pytest.mark.parametrize("words", ["5% 10%", "1G 2G", "100 200", "5%,10%", "1G 2048M"])
def test_l2_above_l1_in_one_unit_is_refused(words):
    assert error(f"/data thr {words}").startswith(f"line 1: /data thr {words}: L2 (")


def test_mixed_units_are_left_to_the_daemon_which_knows_the_filesystem():
    # 1 block vs 10G: comparable only with the block size, from statfs.
    assert load("/data thr 1 10G").levels_for("/data") == parse_thr("1,10G")


@pytest.mark.parametrize("words, message", [
    ("10x", "bad threshold level '10x': expected available blocks (710000), a size (10G) or a percentage (10%)"),
    ("120%", "bad threshold level '120%': a percentage cannot exceed 100"),
    ("10%,5%,1%", "bad levels '10%,5%,1%': expected L1 [L2] or L1,L2"),
    ("10%,", "bad levels '10%,': expected L1 [L2] or L1,L2"),
    ("10% 5%,1%", "bad level '5%,1%': expected L1 [L2] or L1,L2"),
    ("10%,5% 1%", "trailing garbage '1%'"),
    ("10% 5% 1%", "trailing garbage '1%'"),
])
def test_bad_levels(words, message):
    assert error(f"/data thr {words}") == f"line 1: {message}"


def test_remove_takes_no_levels():
    assert error("/data thr 10%\n!/data thr 10%") == "line 2: trailing garbage '10%'"


# -- adding and removing -----------------------------------------------------

def test_adding_adds_types_and_keeps_the_levels_unless_new_ones_are_given():
    c = load("/data err\n/data thr 10% 5%\n/data warn")
    assert c.rule("/data") == MountRule("/data", frozenset({ERR, THR, WARN}), parse_thr("10%,5%"))
    c = apply(c, parse("/data thr 20%"))
    assert c.rule("/data") == MountRule("/data", frozenset({ERR, THR, WARN}), parse_thr("20%"))


def test_thr_may_take_levels_already_set_or_those_of_star():
    assert load("/data thr 10%\n!/data thr\n/data thr 5%").levels_for("/data") == parse_thr("5%")
    c = load("* thr 10% 5%\n/data thr")
    assert c.rule("/data") == MountRule("/data", frozenset({THR}), None)
    assert c.levels_for("/data") == parse_thr("10%,5%")


def test_own_levels_may_use_the_thr_of_star():
    c = load("* thr 10% 5%\n/data info 20%")
    assert c.classes_for("/data") == {INFO, THR} and c.levels_for("/data") == parse_thr("20%")
    assert c.levels_for("/other") == parse_thr("10%,5%")


def test_removing_types_and_whole_entries():
    c = load("/data info,err,warn\n/srv err\n!/data err\n!/srv")
    assert c.rules == (MountRule("/data", frozenset({INFO, WARN}), None),)


def test_removing_thr_drops_the_levels():
    c = load("/data err,thr 10% 5%\n!/data thr")
    assert c.rule("/data") == MountRule("/data", frozenset({ERR}), None)
    assert load("/data err,thr 10%\n!/data thr\n/data thr 3%").levels_for("/data") == parse_thr("3%")


def test_removing_thr_from_a_mount_that_uses_stars_drops_its_own_levels():
    c = load("* thr 10%\n/data info 20%\n!/data thr")
    assert c.rule("/data") == MountRule("/data", frozenset({INFO}), None)
    assert c.levels_for("/data") == parse_thr("10%")


def test_removing_the_last_type_removes_the_rule_and_its_levels():
    c = load("/data thr,err 10%\n!/data err,thr")
    assert c.rule("/data") is None and c.rules == ()
    assert error("/data thr,err 10%\n!/data err,thr\n!/data") == "line 3: !/data: /data is not configured"


def test_removing_a_type_the_mount_does_not_have_changes_nothing():
    assert load("/data err\n!/data info") == load("/data err")


def test_remove_all():
    assert load("/data err,thr 10%\n!/data all").rules == ()


def test_star_cannot_lose_what_another_mount_relies_on():
    assert error("* thr 10%\n/data thr\n!* thr") == "line 3: !* thr: /data would have thr without free-space levels"
    assert error("* thr 10%\n/data info 5%\n!*") == "line 3: !*: /data would have levels 5% without thr"
    assert load("* thr,err 10%\n/data thr 5%\n!* thr").rules == (
        MountRule("*", frozenset({ERR}), None), MountRule("/data", frozenset({THR}), parse_thr("5%")))


def test_rules_keep_first_configured_order_star_first_and_a_removed_one_rejoins_at_the_end():
    c = load("/b info\n/a info\n* err\n/c info\n/b warn\n!/a\n/a err")
    assert [r.target for r in c.rules] == ["*", "/b", "/c", "/a"]


# -- `*` and real mounts -------------------------------------------------------

def test_star_union_semantics():
    c = load("* err,warn\n/data thr 10% 5%\n/srv info,err")
    assert c.classes_for("/data") == {ERR, WARN, THR}
    assert c.classes_for("/srv") == {ERR, WARN, INFO}
    assert c.classes_for("/elsewhere") == {ERR, WARN}
    assert c.classes_for("*") == {ERR, WARN}
    assert c.levels_for("/data") == parse_thr("10%,5%") and c.levels_for("/srv") is None
    assert c.watches("/elsewhere") and c.watches("/data")


def test_without_star_only_configured_mounts_are_watched():
    c = load("/data err")
    assert c.watches("/data") and not c.watches("/srv") and c.classes_for("/srv") == frozenset()
    assert not EMPTY.watches("/") and EMPTY.levels_for("/") is None and EMPTY.rule("*") is None


def test_lookups_normalise_the_mount_point():
    c = load("/data err")
    assert c.rule("/data/") is c.rule("/data") is c.rules[0] and c.watches("//data")


# -- settings ------------------------------------------------------------------

def test_settings_defaults():
    s = EMPTY.settings
    assert s == Settings() and load("# nothing\n").settings == s
    assert (s.socket_group, s.journal, s.journal_max_size, s.journal_max_age_s, s.journal_hard_cap, s.hard_cap,
            s.journald, s.listener_queue, s.listener_timeout_s) == (
        None, "/var/lib/fsev/flight.fsev", 1 << 30, 30 * 86400, None, 2 << 30, True, 65536, 60.0)
    assert (s.metrics, s.metrics_textfile) == (None, None)  # no endpoint, no file, unless asked


def test_settings_overrides_and_a_later_one_wins():
    s = load("""
        socket_group adm
        journal /srv/fsev//flight.fsev
        journal_max_size 512M ; journal_max_age 2w
        journal_hard_cap 3G
        journald off
        listener_queue 16
        listener_timeout 90s
        listener_timeout 15m
        socket_group fsev
    """).settings
    assert s == Settings("fsev", "/srv/fsev/flight.fsev", 512 << 20, 14 * 86400, 3 << 30, False, 16, 900.0)
    assert s.hard_cap == 3 << 30


def test_settings_can_be_cleared():
    s = load("socket_group adm\njournal /x\nsocket_group none\njournal off").settings
    assert s.socket_group is None and s.journal is None


def test_requests_apply_in_order_so_raise_the_cap_before_the_size():
    c = load("journal_hard_cap 2G")
    assert apply(c, parse("journal_hard_cap 6G; journal_max_size 4G")).settings.hard_cap == 6 << 30
    with pytest.raises(ConfigError, match=r"^line 1, request 1: journal_max_size 4G: journal_hard_cap \(2G\) below"):
        apply(c, parse("journal_max_size 4G; journal_hard_cap 6G"))


def test_the_hard_cap_follows_the_size_until_set():
    assert load("journal_max_size 5G").settings.hard_cap == 10 << 30
    assert load("journal_max_size 5G\njournal_hard_cap 5G").settings.hard_cap == 5 << 30


def test_every_settings_field_has_one_entry_in_the_table():
    assert sorted(s.field for s in SETTINGS.values()) == sorted(f.name for f in dataclasses.fields(Settings))


@pytest.mark.parametrize("line, message", [
    ("journal var/x", "journal: path 'var/x': not an absolute path"),
    ("journal /x /y", "trailing garbage '/y'"),
    ("journald yes", "journald: bad switch 'yes': expected on or off"),
    ("journal_max_size 10%", "journal_max_size: bad size '10%': expected bytes (1073741824) or a size (512M, 1G)"),
    ("journal_max_size 0", "journal_max_size: bad size '0': must be more than 0 bytes"),
    ("journal_max_age 30", "journal_max_age: bad duration '30': expected a number and a unit, "
                           "e.g. 90s, 15m, 12h, 30d, 2w"),
    ("listener_timeout 0s", "listener_timeout: bad duration '0s': must be more than 0 and finite"),
    ("listener_queue many", "listener_queue: bad queue length 'many': expected a number of events"),
    ("socket_group 'adm", "socket_group: bad group name \"'adm\": expected a unix group name or number, or none"),
    ("metrics localhost", "metrics: bad address 'localhost': expected ADDR:PORT, :PORT, PORT or off"),
    ("metrics :0", "metrics: bad address ':0': port 0 out of range 1-65535"),
    ("metrics 127.0.0.1:65536", "metrics: bad address '127.0.0.1:65536': port 65536 out of range 1-65535"),
    ("metrics ::1:9100", "metrics: bad address '::1:9100': expected ADDR:PORT, :PORT, PORT or off"),
    ("metrics a_b:80", "metrics: bad address 'a_b:80': expected ADDR:PORT, :PORT, PORT or off"),
    ("metrics_textfile var/lib", "metrics_textfile: directory 'var/lib': not an absolute path"),
])
def test_bad_settings(line, message):
    assert error(line) == f"line 1: {message}"


@pytest.mark.parametrize("word, addr, text", [
    ("9100", ("127.0.0.1", 9100), "127.0.0.1:9100"),
    (":9100", ("127.0.0.1", 9100), "127.0.0.1:9100"),
    ("0.0.0.0:9100", ("0.0.0.0", 9100), "0.0.0.0:9100"),
    ("[::1]:9100", ("::1", 9100), "[::1]:9100"),
    ("[::]:1", ("::", 1), "[::]:1"),
    ("node7.example:65535", ("node7.example", 65535), "node7.example:65535"),
    ("off", None, None),
])
def test_metrics_address_defaults_to_loopback(word, addr, text):
    config = load(f"metrics {word}")
    assert config.settings.metrics == addr
    assert config.text() == (f"metrics {text}" if text else "")
    assert load(config.text()) == config


def test_metrics_textfile_directory_or_off():
    config = load('metrics_textfile "/var/lib/node exporter/"')
    assert config.settings.metrics_textfile == "/var/lib/node exporter"
    assert config.text() == "metrics_textfile /var/lib/node\\040exporter"
    assert load(config.text()) == config
    assert load("metrics_textfile /x\nmetrics_textfile off").settings.metrics_textfile is None


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("1.5h", 5400), ("0.25s", 0.25),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [
    ("1G", 1 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("4096", 4096), ("64kb", 64 << 10), ("2T", 2 << 40),
    ("100B", 100), (str(2**70 + 1), 2**70 + 1),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("seconds", [0.1, 1e-3, 36 * 3600.0, 1e20, 2.0**60, 3 * 2.0**53, 1e300])
def test_durations_print_back_exactly(seconds):
    config = dataclasses.replace(EMPTY, settings=Settings(journal_max_age_s=seconds, listener_timeout_s=seconds))
    assert load(config.text()) == config


@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False))
def test_any_duration_prints_back_exactly(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=2**80))
def test_any_size_prints_back_exactly(size):
    assert parse_size(format_size(size)) == size


# -- text() ----------------------------------------------------------------------

def test_text_writes_changed_settings_then_rules_star_first_types_in_order():
    c = load('/srv thr,err,info 2G 1G\n* warn\njournald off\n"/mnt/a b;#c" err\nlistener_queue 65536\n'
             "journal_max_age 36h\n/data thr 10%,5%")
    assert c.text() == ("journal_max_age 36h\njournald off\n"
                        "* warn\n/srv info,err,thr 2G 1G\n/mnt/a\\040b\\073\\043c err\n/data thr 10% 5%")
    assert EMPTY.text() == "" and load(c.text()) == c


_SAFE = st.text(alphabet="abz.-_", min_size=1, max_size=4)
_ODD = st.sampled_from([" ", "\t", "\n", "#", ";", '"', "\\", "!", "*", "é", "\\040", "..", ".", "\x7f"])
_BYTES = st.binary(min_size=1, max_size=3).filter(lambda b: b"/" not in b and b"\0" not in b).map(os.fsdecode)
_PATHS = st.lists(st.one_of(_SAFE, _SAFE, _ODD, _BYTES), min_size=0, max_size=4).map(lambda ps: "/" + "/".join(ps))
_LEVEL = st.one_of(st.integers(0, 10**7).map(str), st.integers(0, 100).map(lambda n: f"{n}%"),
                   st.integers(1, 2048).map(lambda n: f"{n}M"), st.sampled_from(["2.5%", "1.5G", "10gib"]))
_TYPE_LISTS = st.lists(st.sampled_from(["info", "warn", "err", "thr", "all"]), min_size=1, max_size=3).map(",".join)
def _quoted(path: str) -> str:
    """A path as one word, written differently from text() (quotes, escapes only where needed)."""
    return '"' + path.replace("\\", "\\134").replace('"', "\\042").replace("\n", "\\012") + '"'


_SETTING_LINES = st.one_of(
    st.sampled_from(["socket_group adm", "socket_group none", "socket_group 1001", "journal off", "journald off",
                     "journald on", "journal_hard_cap 3G", "listener_queue 16", "listener_queue 65536",
                     "metrics 9100", "metrics [::1]:9100", "metrics 0.0.0.0:1", "metrics off", "metrics_textfile off"]),
    _PATHS.map(lambda p: "metrics_textfile " + _quoted(p)),
    _PATHS.map(lambda p: "journal " + _quoted(p)),
    st.integers(1, 10**13).map(lambda n: f"journal_max_size {n}"),
    st.sampled_from(["journal_max_size 1G", "journal_max_size 700M", "journal_max_size 1.25G"]),
    st.tuples(st.one_of(st.integers(1, 10**6).map(str), st.floats(0.001, 1e6).map(repr)),
              st.sampled_from("smhdw")).map(lambda t: f"listener_timeout {t[0]}{t[1]}"),
    st.floats(1e-3, 1e20).map(lambda f: f"journal_max_age {f!r}s"),
)


@st.composite
def mount_lines(draw, targets):
    target = draw(st.sampled_from(targets))
    word = _quoted(target)
    if draw(st.integers(0, 3)) == 0:  # a quarter removes
        return "!" + word + ("" if draw(st.booleans()) else " " + draw(_TYPE_LISTS))
    levels = draw(st.lists(_LEVEL, max_size=2))
    return " ".join([word, draw(_TYPE_LISTS), *levels])


@st.composite
def config_lines(draw, with_settings=True):
    """Lines about a few targets, so that later lines add to and remove from earlier ones."""
    targets = draw(st.lists(st.one_of(st.just("*"), _PATHS), min_size=1, max_size=4, unique=True))
    # one_of flattens _SETTING_LINES' branches: choose the kind first, mostly mounts.
    kinds = st.integers(0, 3 if with_settings else 0)
    line = kinds.flatmap(lambda k: _SETTING_LINES if k == 3 else mount_lines(targets))
    return draw(st.lists(line, max_size=14))


def _apply_what_applies(lines: list[str]) -> tuple[ServiceConfig, list[str]]:
    """Each line on its own: a random line is often refused (not configured, thr without
    levels...), which must leave the config as it was. Returns the config and the lines taken."""
    config, taken = EMPTY, []
    for line in lines:
        try:
            config = apply(config, parse(line))
        except ConfigError:
            continue
        taken.append(line)
    return config, taken


@settings(max_examples=400, deadline=None)
@given(config_lines())
def test_text_parses_back_to_the_same_config(lines):
    config, _ = _apply_what_applies(lines)
    config.text().encode()  # printable: an undecodable byte of a path is written \ooo, not as a surrogate
    assert load(config.text()) == config
    assert load(config.text()).text() == config.text()


@settings(max_examples=300, deadline=None)
@given(config_lines(with_settings=False), st.data())
def test_lookups_against_a_plain_model_of_the_rules(lines, data):
    """classes_for/levels_for against sets kept by hand, from the lines that applied."""
    config, taken = _apply_what_applies(lines)
    own: dict[str, set[EventClass]] = {}
    levels: dict[str, object] = {}
    for req in parse("\n".join(taken)):
        if isinstance(req, AddTypes):
            own.setdefault(req.target, set()).update(req.classes)
            if req.levels is not None:
                levels[req.target] = req.levels
        elif isinstance(req, RemoveTypes):
            own[req.target] -= req.classes if req.classes is not None else set(own[req.target])
            if req.classes is None or THR in req.classes or not own[req.target]:
                levels.pop(req.target, None)
            if not own[req.target]:
                del own[req.target]
    mount_point = data.draw(st.sampled_from(sorted(set(own) - {"*"}) + ["/not/configured"]))
    assert config.classes_for(mount_point) == own.get(mount_point, set()) | own.get("*", set())
    assert config.levels_for(mount_point) == levels.get(mount_point, levels.get("*"))
    assert {r.target for r in config.rules} == set(own)


# -- requests and atomicity ----------------------------------------------------------

def test_requests_carry_where_and_source():
    reqs = parse("journald off # quiet\n/data thr 10% 5% ; !/srv err")
    assert reqs == [
        SetSetting("line 1", "journald off", "journald", False),
        AddTypes("line 2, request 1", "/data thr 10% 5%", "/data", frozenset({THR}), parse_thr("10%,5%")),
        RemoveTypes("line 2, request 2", "!/srv err", "/srv", frozenset({ERR})),
    ]


def test_apply_is_all_or_nothing():
    before = load("* err\n/data thr 10% 5%\nlistener_queue 1024")
    snapshot = before.text()
    reqs = parse("/data info\njournald off\n!/nowhere\n/srv err")
    with pytest.raises(ConfigError, match=r"^line 3: !/nowhere: /nowhere is not configured$"):
        apply(before, reqs)
    assert before.text() == snapshot
    assert apply(before, reqs[:2]) == load(snapshot + "\n/data info\njournald off")
    assert apply(before, reqs[:2] + reqs[3:]) == load(snapshot + "\n/data info\njournald off\n/srv err")
    assert apply(before, []) == before


def test_apply_refuses_what_is_not_a_request():
    with pytest.raises(TypeError):
        apply(EMPTY, ["/data err"])


def test_load_is_apply_to_empty():
    text = "* err;/data thr 5%\njournald off"
    assert load(text) == apply(EMPTY, parse(text))


def test_the_examples_in_the_docs():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "service.md").read_text()
    section = doc.split("## The configuration", 1)[1]
    example = section.split("```sh\n", 1)[1].split("```", 1)[0]
    c = load(example)
    assert c.classes_for("/mnt/usb disk") == {ERR, WARN, THR} and c.levels_for("/data") == parse_thr("20%,10%")
    assert c.rule("/srv/backup") == MountRule("/srv/backup", frozenset({THR}), parse_thr("50G,20G"))
    assert (c.settings.socket_group, c.settings.journal_max_age_s) == ("fsev", 14 * 86400)
    messages = section.split("is one line naming the place and the problem:\n\n```\n", 1)[1].splitlines()
    for text, message in [("/a info\n\n/data thr 5% 10%", messages[0]), ("/data warning", messages[1]),
                          ("/a info\n/b thr 10% 5% x y", messages[2]), ("\n\n\ndata thr 5%", messages[3]),
                          ("/a info\n\n/b info; !/srv", messages[4]),
                          ("* thr 10%\n/a info\n/b info\n/data thr\n!* thr", messages[5])]:
        assert error(text) == message


# -- files ------------------------------------------------------------------------

def test_read_file(tmp_path):
    p = tmp_path / "fsev.conf"
    p.write_bytes(b"# fsev\n* err\n/mnt/raw\\377 info\n/mnt/\xff err\n")
    c = read_file(str(p))
    assert [r.target for r in c.rules] == ["*", os.fsdecode(b"/mnt/raw\xff"), os.fsdecode(b"/mnt/\xff")]
    assert load(c.text()) == c


def test_read_file_names_the_file_and_line(tmp_path):
    p = tmp_path / "fsev.conf"
    p.write_text("* err\n\n/data thr 5% 10%\n")
    with pytest.raises(ConfigError) as e:
        read_file(str(p))
    assert str(e.value) == f"{p}: line 3: /data thr 5% 10%: L2 (10%) above L1 (5%)"


def test_read_file_unreadable(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        read_file(str(tmp_path / "nope"))
    assert str(e.value) == f"cannot read {tmp_path}/nope: No such file or directory"
    with pytest.raises(ConfigError) as e:
        read_file(str(tmp_path))
    assert str(e.value) == f"cannot read {tmp_path}: Is a directory"

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(builtins, "open", denied)  # root reads a 0000 file, so fake the refusal
    with pytest.raises(ConfigError) as e:
        read_file(DEFAULT_PATH)
    assert str(e.value) == "cannot read /etc/fsev/fsev.conf: Permission denied"
