"""The ranking registry: what it declares about each method agrees with the ``contrast.Ranking`` it points at."""

from __future__ import annotations

import pytest

from safety_prune.contrast import Ranking
from safety_prune.errors import ConfigError
from safety_prune.methods import RANKINGS, UNIT_KINDS, check_ranking, compared, method_info


@pytest.mark.parametrize("name", RANKINGS.names)
def test_each_declaration_matches_its_ranking(name: str) -> None:
    ranking, info = RANKINGS.get(name), method_info(name)
    assert isinstance(ranking, Ranking)
    assert info.own_gains == (ranking.gains is not None)
    assert info.scored == (ranking.relevance is not None)
    assert set(info.units) <= set(UNIT_KINDS)


def test_method_all_compares_what_can_rank_the_unit_in_registry_order() -> None:
    assert compared("neuron") == ["lrp", "gradient", "wanda", "activation", "aura", "aura-topk", "random"]
    assert compared("head") == ["lrp", "gradient", "wanda", "activation", "random"]


def test_check_ranking_names_the_method_and_the_unit() -> None:
    with pytest.raises(ConfigError, match=r"--method 'nope' is unknown \(available: all, lrp, gradient, wanda"):
        check_ranking("nope", "neuron")
    with pytest.raises(ConfigError, match="--method aura ranks neuron units only; use --unit neuron"):
        check_ranking("aura", "head")
    check_ranking("aura", "neuron")
