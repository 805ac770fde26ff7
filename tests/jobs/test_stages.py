"""The stages audit and correct share: a method's ranking, with the excluded layers ranked after every other."""

from __future__ import annotations

import pytest
from tiny import tiny_model, tiny_tokenizer

from safety_prune.attribution import samples_from_texts
from safety_prune.contrast import Contrast, ContrastSets
from safety_prune.errors import ConfigError
from safety_prune.jobs.stages import rank


def _contrast() -> Contrast:
    texts = ["the cat sat on the mat", "a dog ran in the park"]
    return Contrast(tiny_model("llama"), ContrastSets(samples_from_texts(tiny_tokenizer(), texts), [], [], {}), seed=0)


def test_excluded_layers_rank_last_and_the_random_control_is_unguarded() -> None:
    c = _contrast()
    ranked = rank(c, "random", "neuron", ("neuron",), guard_share=0.5, exclude=[0])
    scores = ranked.scores["neuron"]
    assert float(scores[0].min()) > float(scores[1:].max())  # pruning takes lowest first: layer 0 never before
    assert ranked.relevance is None and ranked.gains is None  # random has no relevance to guard with or show
    with pytest.raises(ConfigError, match="--method 'nope' is unknown"):
        rank(c, "nope", "neuron", ("neuron",), guard_share=0.5)
