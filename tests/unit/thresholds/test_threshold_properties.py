"""ThresholdState against an independent model of the seed's rules (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fsev.thresholds.levels import Levels, ThresholdState


class SeedModel:
    """The seed's rules, written level by level and with no shared depth:
    each level fires once when available blocks fall to it or below, and
    fires again (re-arming) once they rise above it plus the hysteresis.
    Falls are reported L1 before L2; rises L2 before L1."""

    def __init__(self, levels: list[int], hysteresis: int, start: int) -> None:
        self.levels = levels
        self.h = hysteresis
        self.reached = [start <= lv for lv in levels]  # silent at start

    def feed(self, avail: int) -> list[tuple[int, str, int]]:
        out = []
        for i, lv in enumerate(self.levels):
            if not self.reached[i] and avail <= lv:
                self.reached[i] = True
                out.append((i + 1, "down", avail))
        for i in reversed(range(len(self.levels))):
            if self.reached[i] and avail > self.levels[i] + self.h:
                self.reached[i] = False
                out.append((i + 1, "up", avail))
        return out


@st.composite
def scenarios(draw):
    total = draw(st.integers(1, 5000))
    l1 = draw(st.integers(0, total))
    l2 = draw(st.one_of(st.none(), st.integers(0, l1)))
    h = draw(st.integers(0, total // 4))
    start = draw(st.integers(0, total))
    # alloc/free steps: small ones near levels, and jumps across both
    steps = draw(st.lists(st.integers(-total, total), max_size=60))
    avails = []
    a = start
    for s in steps:
        a = min(total, max(0, a + s))
        avails.append(a)
    return Levels(l1, l2, h), start, avails


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_state_machine_matches_the_seed_model(sc):
    levels, start, avails = sc
    machine = ThresholdState(levels, start)
    model = SeedModel(levels.as_list(), levels.hysteresis, start)
    for a in avails:
        got = [(c.level, c.direction, c.avail_blocks) for c in machine.update(a)]
        assert got == model.feed(a)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_every_crossing_is_on_the_right_side_and_levels_alternate(sc):
    levels, start, avails = sc
    machine = ThresholdState(levels, start)
    last: dict[int, str] = {}
    lv = levels.as_list()
    for a in avails:
        for c in machine.update(a):
            assert c.level_blocks == lv[c.level - 1]
            if c.direction == "down":
                assert c.avail_blocks <= c.level_blocks
            else:
                assert c.avail_blocks > c.level_blocks + levels.hysteresis
            assert last.get(c.level) != c.direction, "a level fired twice the same way"
            last[c.level] = c.direction
        # depth says exactly which levels are reached
        assert machine.depth == sum(1 for i in range(len(lv)) if last.get(i + 1) == "down"
                                    or (i + 1 not in last and start <= lv[i]))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_event_while_the_value_stays_put(sc):
    levels, start, avails = sc
    machine = ThresholdState(levels, start)
    for a in avails:
        machine.update(a)
        assert machine.update(a) == []
