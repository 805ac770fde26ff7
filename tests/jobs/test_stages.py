"""The stages audit and correct share: a method's ranking, with the excluded layers ranked after every other."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny import tiny_model, tiny_tokenizer, write_tiny_suite

from safety_prune.attribution import samples_from_texts
from safety_prune.contrast import Contrast, ContrastSets
from safety_prune.errors import ConfigError, ProbeSuiteError
from safety_prune.jobs.stages import rank, reference_generation
from safety_prune.suite import load_suite


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


def test_reference_batch_is_kept_apart_from_the_greedy_batch(tmp_path) -> None:
    """Sampled reference continuations depend on their batch (one seed per batch), so the eval batch may grow
    without changing the draw: ``reference.batch_size`` wins, and without it the generation batch is used."""
    path = write_tiny_suite(tmp_path)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    data["generation"]["batch_size"] = 48
    data["reference"] |= {"samples_per_prompt": 4}
    for value, want in ((None, 48), (16, 16)):
        if value is not None:
            data["reference"]["batch_size"] = value
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
        gen = reference_generation(load_suite(str(tmp_path / "s.yaml")))
        assert (gen.batch_size, gen.num_samples, gen.do_sample) == (want, 4, True)
    data["reference"]["batch_size"] = 0
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProbeSuiteError, match=r"reference\.batch_size"):
        load_suite(str(tmp_path / "s.yaml"))
