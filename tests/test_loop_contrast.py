"""The loop contrast for repetition (issue 23): where a loop starts, which positions each set explains, the
copying control and its guard, and the errors for a suite that asks for it wrongly. Tiny real models, no mocks."""

from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer, write_tiny_suite

from safety_prune.attribution import Relevance, collate
from safety_prune.contrast import Contrast, build_sets, contrast_scores, copying_samples
from safety_prune.errors import ConfigError, DataSourceError, ProbeSuiteError
from safety_prune.evaluation.behaviour import Generations
from safety_prune.evaluation.generation import Generation
from safety_prune.jobs.stages import rank, suite_scorer
from safety_prune.resources import resource_dir
from safety_prune.scorers import get_scorer
from safety_prune.scorers.base import Loop
from safety_prune.scorers.repetition import find_loop
from safety_prune.suite import ReferenceSpec, _parse, load_suite

GENERAL = ["The committee approved the new budget for the library and the park."] * 4
SPEC = ReferenceSpec(samples_per_prompt=1, temperature=1.0, top_p=1.0, undesired_min=1, undesired_max=10,
                     target="loop", tokens_per_continuation=2, foil="none", benign_n=10, general_n=2)


def test_loop_start_of_a_hand_computed_generation():
    # 0 A, 1 cat, 2 sat, 3 ., 4 It, 5 was, 6 fun, 7 ., 8 It ...: from 7 on every token repeats the one 4 back
    # (the '.' at 7 already equals the '.' at 3), and the run lasts to the end: 7 tokens, >= the period and 6.
    tokens = ["A", " cat", " sat", ".", " It", " was", " fun", ".", " It", " was", " fun", ".", " It", " was"]
    assert find_loop(tokens, min_tokens=6) == Loop(start=7, end=14, period=4)
    assert find_loop(tokens, min_tokens=8) is None  # 7 copied tokens are too few for 8
    assert find_loop(["x", " y"] + [" z"] * 9, min_tokens=8) == Loop(start=3, end=11, period=1)  # shortest period
    name_twice = ["Mary", " met", " John", " Smith", " and", " then", " John", " Smith", " left", "."]
    assert find_loop(name_twice, min_tokens=2) is None  # 2 copied tokens, a period of 4: a name, not a loop


def _gen(prompt_ids: list[int], cont_ids: list[int]) -> Generation:
    return Generation("p", prompt_ids, cont_ids, tiny_tokenizer().decode(cont_ids))


@pytest.fixture(scope="module")
def looping():
    """A looping continuation a b c d e (c d e)*: the loop starts at 5, period 3; and one that never loops."""
    a, b, c, d, e = 261, 269, 297, 298, 299  # " the", " fo", " la", " Jo", " you"
    loop = _gen([1, 40, 41], [a, b, c, d, e, c, d, e, c, d, e, c, d])
    plain = _gen([1, 42], [a, b, c, d, e, a, b])
    scorer = get_scorer("repetition")
    return Generations(["x", "y"], [[loop], [plain]], [[0.9], [0.8]]), scorer


def _sets(looping, positions="before_loop", spec=SPEC):
    res, scorer = looping
    return build_sets(tiny_tokenizer(), res, scorer, 0.5, spec, general_texts=GENERAL, benign_texts=[], general_n=2,
                      max_tokens=64, benign_positions=positions)


def _explained(sample) -> list[int]:
    """The positions of ``sample.input_ids`` whose token is explained."""
    rows = collate([sample], 0, 1, "cpu")["target"][0].nonzero().flatten()
    return [int(i) + 1 for i in rows]  # the logit at i predicts token i + 1


def test_undesired_is_the_loop_and_benign_the_same_continuation_before_it(looping):
    sets = _sets(looping)
    (und,), (ben,) = sets.undesired, sets.benign
    loop_gen = looping[0].gens[0][0]
    full = tuple(loop_gen.prompt_ids + loop_gen.continuation_ids)
    assert und.input_ids == full and _explained(und) == list(range(3 + 5, 3 + 13))  # tokens 5..12 of the loop
    assert ben.input_ids == full[:3 + 5] and _explained(ben) == list(range(3, 3 + 5))  # tokens 0..4, before it
    assert sets.info["n_loops"] == 1 and sets.info["continuations_without_loop"] == 1
    assert sets.info["loop_periods"] == [3]
    first = _sets(looping, "first_occurrence").benign[0]
    assert first.input_ids == ben.input_ids and _explained(first) == [3 + 2, 3 + 3, 3 + 4]  # c d e, said first


def test_too_few_loops_and_positions_without_the_loop_target_are_clear_errors(looping):
    with pytest.raises(DataSourceError, match="Only 1 of the 2 flagged reference continuations loop"):
        _sets(looping, spec=ReferenceSpec(**(SPEC.__dict__ | {"undesired_min": 2})))
    with pytest.raises(ConfigError, match=r"need reference\.target: loop"):
        _sets(looping, spec=ReferenceSpec(**(SPEC.__dict__ | {"target": "tokens"})))


def test_copying_control_is_random_word_strings_said_twice():
    tok = tiny_tokenizer()
    samples = copying_samples(tok, 6, 4, seed=3)
    assert samples == copying_samples(tok, 6, 4, seed=3) and len(samples) == 6
    for s in samples:
        words = s.input_ids[1:5]
        assert s.input_ids == (tok.bos_token_id, *words, *words) and len(set(words)) == 4
        assert all(tok.decode([w]).startswith(" ") for w in words)
        assert _explained(s) == [6, 7, 8]  # the copy from its second token: what copying, not guessing, predicts
    with pytest.raises(DataSourceError, match=r"lower contrast\.copying\.tokens"):
        copying_samples(tok, 1, 1000, seed=0)


def _rel(values: dict[str, list[float]]) -> dict[str, Relevance]:
    return {name: Relevance("lrp", {"neuron": torch.tensor([v])}, 1) for name, v in values.items()}


def test_copying_is_a_side_of_the_max_contrast():
    """Unit 0: the loop needs it more than general and benign text, but copying needs it most: no candidate."""
    rel = _rel({"general": [0.1, 0.1, 0.8], "benign": [0.1, 0.1, 0.8], "undesired": [0.5, 0.4, 0.1],
                "copying": [0.8, 0.1, 0.1]})
    scores = contrast_scores(rel, "max")["neuron"][0]
    assert scores[0] > 0 > scores[1]
    del rel["copying"]
    assert contrast_scores(rel, "max")["neuron"][0, 0] < 0


def test_copying_control_guards_the_units_copying_needs(looping):
    """A real LRP ranking on a tiny Llama: the top share of units by copying relevance rank after every other."""
    sets = _sets(looping)
    sets.copying = copying_samples(tiny_tokenizer(), 4, 4, seed=0)
    c = Contrast(tiny_model("llama", dtype=torch.float64), sets)
    ranked = rank(c, "lrp", "neuron", ("neuron",), 0.1)
    copying = ranked.relevance["copying"].scores["neuron"].abs().flatten()
    n = int(torch.tensor(0.1 * copying.numel()).ceil())
    kept = torch.topk(copying, n).indices
    scores = ranked.scores["neuron"].flatten()
    others = torch.ones_like(scores, dtype=torch.bool)
    others[kept] = False
    general = ranked.relevance["general"].scores["neuron"].abs().flatten()
    others[torch.topk(general, n).indices] = False  # the general guard's units rank last too
    assert scores[kept].min() > scores[others].max()
    assert sum(ranked.guarded_per_layer["copying_neuron"]) == n


def test_loop_target_with_a_scorer_that_cannot_find_loops_is_refused(tmp_path):
    path = write_tiny_suite(tmp_path, extra="")
    text = Path(path).read_text().replace("target: continuation", "target: loop")
    Path(path).write_text(text)
    with pytest.raises(ConfigError, match=r"tiny_suite.yaml: reference.target 'loop' needs a scorer.*profanity"
                                          r".*Use scorer.name: repetition"):
        suite_scorer(load_suite(path))
    Path(path).write_text(text.replace("name: profanity", "name: repetition"))
    assert suite_scorer(load_suite(path)).finds_loops


def test_before_loop_benign_needs_the_loop_target(tmp_path):
    path = write_tiny_suite(tmp_path, extra="contrast: {benign: before_loop}\n")
    with pytest.raises(ProbeSuiteError, match=r"tiny_suite.yaml: contrast.benign \(before_loop\).*needs "
                                              r"reference.target: loop \(got 'continuation'\)"):
        load_suite(path)


def test_bad_loop_options_are_refused():
    with pytest.raises(ConfigError, match="loop_min_tokens must be a positive integer"):
        get_scorer("repetition", loop_min_tokens=0)


def test_the_packaged_loop_suite_asks_for_the_loop_contrast():
    suite = _parse(resource_dir("probes") / "repetition-loop.yaml")
    assert suite.reference.target == "loop" and suite.contrast.benign_positions == "before_loop"
    assert suite.contrast.copying is not None and suite.contrast.copying.n == 64


def test_correct_runs_the_loop_contrast_end_to_end(tmp_path):
    """The suite keys alone switch a correction to the loop contrast; no job knows about loops."""
    from jobs.test_correct import _looping_model, looping_suite

    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions

    model = _looping_model(tmp_path / "model")
    suite = looping_suite(tmp_path / "suite", "loop", "{loop_min_tokens: 4}",
                          "contrast: {benign: before_loop, copying: {n: 4, tokens: 4}}\n")
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(batch_size=4, search_k=(2, 4)))
    info = res["contrast"]
    assert info["target"] == "loop" and info["n_loops"] == info["n_undesired"] >= 1
    assert info["n_copying"] == 4 and "copying_neuron" in info["guarded_per_layer"]
    assert info["benign_source"] == "the same looping continuations, before loop"
