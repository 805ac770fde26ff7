"""The screens' shared cost order: the costliest setting within the perplexity limit that keeps every other limit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bench_script import load

from safety_prune.selection import Constraints


@pytest.fixture(scope="module")
def screening():
    return load("screening")


class _Edit:
    def __init__(self, name: str, ppl: float, strength: float):
        self.name, self.ppl, self.strength = name, ppl, strength

    def apply(self, _model):
        return self

    def dampening(self) -> float:
        return self.strength

    def at_least_as_strong_as(self, other: _Edit) -> bool:
        return self.strength >= other.strength


def test_cost_order_takes_the_costliest_setting_that_keeps_every_limit(screening) -> None:
    base = {"behaviour_mean": 0.2, "behaviour_rate": 0.1, "perplexity": 10.0, "distinct2": 0.9,
            "continuation_perplexity": 3.0}
    edits = [_Edit("mild", 10.05, 9.0), _Edit("costly", 10.19, 1.0), _Edit("loops", 10.15, 5.0),
             _Edit("over", 10.5, 2.0), _Edit("stronger", 10.1, 3.0)]
    generated = []

    def measure(m) -> dict:
        if not isinstance(m, _Edit):
            return base
        generated.append(m.name)
        loops = m.name == "costly"  # the costliest within the perplexity limit breaks distinct-2
        return {**base, "behaviour_mean": 0.1, "perplexity": m.ppl, "distinct2": 0.5 if loops else 0.9}

    lm = SimpleNamespace(model=object())
    candidates = [({"k": 1, "scale": None, "strength": e.strength, "reach": 1.0}, e) for e in edits]
    best, trail = screening.by_cost(lm, measure, candidates, Constraints(), lambda e: e.ppl)
    assert generated == ["costly", "loops"]  # by validation perplexity, never by the sum of shares
    assert best["strength"] == 5.0 and trail[3]["reduction"] == pytest.approx(0.5)
    assert trail[4]["violations"] == ["perplexity +5.0%"] and not trail[4]["generated"]
    assert trail[1]["generated"] is False  # cheaper than the chosen one: never generated from
    # at least as strong as a candidate over the limit: not measured (its perplexity would be read as within)
    assert trail[5]["perplexity"] is None and not trail[5]["generated"]
