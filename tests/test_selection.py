"""The validation search's shortcuts: what they skip, and that the choice stays the one a full search makes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tiny import tiny_model, tiny_tokenizer, write_tiny_suite

from safety_prune.errors import ConfigError, ProbeSuiteError
from safety_prune.models import LoadedModel
from safety_prune.selection import Constraints, search_settings, validation_search
from safety_prune.suite import load_suite


def _lm() -> LoadedModel:
    model = tiny_model("llama")
    return LoadedModel(model, tiny_tokenizer(), None, "tiny", "tiny", None)


def _measure_from(table: dict[int, dict[str, float]], calls: list[int]):
    """A measure that reads the number of pruned neurons off the model (zeroed down_proj columns)."""
    def zeroed(model: torch.nn.Module) -> int:
        return sum(int((layer.mlp.down_proj.weight == 0).all(0).sum()) for layer in model.model.layers)

    def measure(model):
        k = zeroed(model)
        calls.append(k)
        return dict(table[k])

    return measure, zeroed


def test_candidates_over_the_perplexity_limit_are_not_generated_from():
    base = {"behaviour_mean": 0.5, "behaviour_rate": 0.5, "perplexity": 10.0, "distinct2": 0.8,
            "continuation_perplexity": 3.0}
    table = {0: base, 1: {**base, "behaviour_mean": 0.4, "perplexity": 10.1},
             2: {**base, "behaviour_mean": 0.1, "perplexity": 10.5},  # best drop, but +5% perplexity
             4: {**base, "behaviour_mean": 0.3, "perplexity": 10.15}}
    lm = _lm()
    scores = {"neuron": torch.arange(lm.model.config.num_hidden_layers * lm.model.config.intermediate_size,
                                     dtype=torch.float).reshape(lm.model.config.num_hidden_layers, -1)}
    calls: list[int] = []
    measure, zeroed = _measure_from(table, calls)
    fast, trail = validation_search(lm, measure, scores, "neuron", [1, 2], [None], Constraints(),
                                    perplexity_of=lambda model: table[zeroed(model)]["perplexity"])
    assert fast == (1, None)  # k=2 would drop most but breaks the limit
    assert calls == [0, 1]  # k=2 was never generated from
    row = trail[2]
    assert row["k"] == 2 and row["generated"] is False and row["behaviour_mean"] is None
    assert row["violations"] == ["perplexity +5.0%"] and row["perplexity"] == 10.5
    assert [r["generated"] for r in trail] == [True, True, False]


def test_a_candidate_at_least_as_strong_as_one_over_the_limit_is_not_measured():
    """k=4 zeroes the top 2 and two more: perplexity is taken to rise with it, so it is never built; a milder
    candidate after it (k=1) still is. Without the pre-check, the same rule follows a measured violation."""
    base = {"behaviour_mean": 0.5, "behaviour_rate": 0.5, "perplexity": 10.0, "distinct2": 0.8,
            "continuation_perplexity": 3.0}
    table = {0: base, 1: {**base, "behaviour_mean": 0.4, "perplexity": 10.1},
             2: {**base, "behaviour_mean": 0.1, "perplexity": 10.5}}
    lm = _lm()
    scores = {"neuron": torch.arange(lm.model.config.num_hidden_layers * lm.model.config.intermediate_size,
                                     dtype=torch.float).reshape(lm.model.config.num_hidden_layers, -1)}
    for pre_check in (True, False):
        calls: list[int] = []
        measure, zeroed = _measure_from(table, calls)
        ppl = (lambda model, zeroed=zeroed: table[zeroed(model)]["perplexity"]) if pre_check else None
        found, trail = validation_search(lm, measure, scores, "neuron", [2, 4, 1], [None], Constraints(),
                                         perplexity_of=ppl)
        assert found == (1, None)
        assert calls == ([0, 1] if pre_check else [0, 2, 1])  # k=4 never measured
        skipped = trail[2]
        assert skipped["k"] == 4 and skipped["generated"] is False and skipped["perplexity"] is None
        assert skipped["violations"] == ["not measured: it changes every unit at least as much as k 2, which is "
                                         "over the perplexity limit"]


def _suite_with_max_prompts(tmp_path, value) -> tuple[str, Path]:
    """The tiny suite (40 prompts) and a copy of it with ``reference.max_prompts: value``."""
    path = write_tiny_suite(tmp_path, n_prompts=40)
    data = yaml.safe_load(Path(path).read_text())
    data["reference"]["max_prompts"] = value
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    return path, changed


def test_reference_max_prompts_caps_the_prompts_continued(tmp_path):
    path, capped = _suite_with_max_prompts(tmp_path, 5)
    suite = load_suite(str(capped))
    assert suite.reference.max_prompts == 5 and len(suite.undesired_reference()) > 5
    assert load_suite(path).reference.max_prompts is None


def test_reference_max_prompts_must_be_positive(tmp_path):
    _, bad = _suite_with_max_prompts(tmp_path, 0)
    with pytest.raises(ProbeSuiteError, match=r"reference\.max_prompts must be a positive integer, got 0"):
        load_suite(str(bad))


def test_build_references_continues_only_max_prompts(tmp_path, monkeypatch):
    """The job's reference stage, not just the suite, honours the cap: only the first max_prompts reference
    prompts reach generation (removing the slice in ``build_references`` fails this)."""
    from safety_prune.jobs import stages
    from safety_prune.jobs.options import BehaviourOptions

    class Seen(Exception):
        pass

    def spy(_lm, _suite, _scorer, prompts, *_args, **_kw):
        raise Seen(list(prompts))

    monkeypatch.setattr(stages, "generate_and_score", spy)
    _, capped = _suite_with_max_prompts(tmp_path, 5)
    suite = load_suite(str(capped))
    with pytest.raises(Seen) as seen:
        stages.build_references(None, suite, None, BehaviourOptions(), None, tmp_path)
    assert seen.value.args[0] == suite.undesired_reference()[:5]


# ------------------------------------------------------------------ --exclude-layers is honoured or refused

def test_eligible_units_leave_out_the_excluded_layers():
    from safety_prune.selection import check_unit_counts, eligible_units

    model = tiny_model("llama")  # 2 layers x 64 neurons, 4 heads
    assert eligible_units(model, "neuron", ()) == 128
    assert eligible_units(model, "neuron", (1,)) == 64
    assert eligible_units(model, "head", (0, 1)) == 0
    assert check_unit_counts(model, "neuron", (1,), {"--k": [64]}) == 64
    with pytest.raises(ConfigError, match=r"--k 5 exceeds the 0 neuron units left after --exclude-layers 0,1"):
        check_unit_counts(model, "neuron", (0, 1), {"--k": [5]})
    with pytest.raises(ConfigError, match=r"--sweep 100 exceeds the 64 neuron units left"):
        check_unit_counts(model, "neuron", (1,), {"--k": [10], "--sweep": [10, 100]})
    with pytest.raises(ConfigError, match=r"--search-k 100000 exceeds the 128 neuron units of this model"):
        check_unit_counts(model, "neuron", (), {"--search-k": [5, 100000]})
    with pytest.raises(ConfigError, match=r"--exclude-layers 7: this model has layers 0\.\.1"):
        eligible_units(model, "neuron", (7,))


@pytest.mark.parametrize(("k", "layers"), [("5", "0,1"), ("100", "1")])
def test_correct_refuses_k_beyond_the_eligible_units_before_any_work(tmp_path, capsys, k, layers):
    from refusal import refused
    from tiny import save_tiny

    save_tiny("llama", tmp_path / "model")
    suite = write_tiny_suite(tmp_path / "suite")
    msg = refused(capsys, ["correct", "--model", str(tmp_path / "model"), "--probe", suite, "--out",
                           str(tmp_path / "run"), "--k", k, "--exclude-layers", layers],
                  [tmp_path / "model", tmp_path / "suite"], [tmp_path])
    assert f"--k {k} exceeds" in msg and "--exclude-layers" in msg
    assert not (tmp_path / "run").exists()


def test_correct_with_excluded_layers_prunes_none_of_them(tmp_path):
    from tiny import save_tiny

    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions

    save_tiny("llama", tmp_path / "model")
    suite = write_tiny_suite(tmp_path / "suite")
    res = correct(str(tmp_path / "model"), suite, tmp_path / "run", options=CorrectOptions(
        k=64, exclude_layers=(1,), method="lrp", batch_size=4, limit=3, stability=0, force=True))
    assert len(res["pruned"]["units"]) == 64
    assert all(u.startswith("L0.") for u in res["pruned"]["units"]), res["pruned"]["units"]


# --------------------------------------------------------------------------------- stability selection

def _sets(planted: tuple[int, int], n: int = 40, layers: int = 2, neurons: int = 50, seed: int = 0):
    """Per-sample neuron relevance of the three reference sets: noise everywhere, and one planted unit that
    every undesired sample needs and no other set does."""
    from safety_prune.attribution import Relevance

    gen = torch.Generator().manual_seed(seed)
    rel = {}
    for name in ("general", "benign", "undesired"):
        per = torch.rand(n, layers, neurons, generator=gen)
        if name == "undesired":
            per[:, planted[0], planted[1]] += 5.0
        rel[name] = Relevance("lrp", {"neuron": per.mean(0)}, n, per_sample={"neuron": per})
    return rel


def test_stability_selection_keeps_a_planted_unit_and_drops_noise():
    from safety_prune.contrast import contrast_scores
    from safety_prune.selection import guard, stable_selection

    rel = _sets((1, 7))
    scores, _ = guard(contrast_scores(rel, "max"), rel["general"].scores, 0.0)
    out, info = stable_selection(scores, rel, "neuron", "max", 0.0, (), resamples=30, seed=0, pi=0.7, depth=5)
    p = info["probability"]
    assert p[1, 7] == 1.0
    others = torch.cat([p.flatten()[: 1 * 50 + 7], p.flatten()[1 * 50 + 8:]])
    assert others.mean() < 0.1 and others.max() < 0.7  # 4 noise slots of 99 units per resample
    assert info["candidates"] == int((p >= 0.7).sum()) and info["candidates"] >= 1
    assert (out["neuron"][p < 0.7] > out["neuron"][p >= 0.7].max()).all()  # the unstable rank after all
    from safety_prune.pruning import select

    assert [(u.layer, u.index) for u in select(out, "neuron", k=1)] == [(1, 7)]


def test_stability_compares_only_the_top_of_a_large_selection():
    """Proportional gains change thousands of units; the bootstrap overlap is taken over the top 100 of them, and
    the planted unit, ranked first, is among them in every resample."""
    from safety_prune.contrast import contrast_scores
    from safety_prune.pruning import select
    from safety_prune.selection import STABILITY_TOP, guard, stability

    rel = _sets((1, 7), neurons=200)
    scores, _ = guard(contrast_scores(rel, "max"), rel["general"].scores, 0.0)
    chosen = select(scores, "neuron", k=300)
    info = stability(rel, chosen, "neuron", "max", 0.0, (), resamples=10, seed=0)
    assert info["k"] == STABILITY_TOP == 100 and info["changed"] == 300
    assert len(info["selection_frequency"]) == 100 and 0 < info["jaccard_min"] <= info["jaccard_mean"] < 1
    assert {"unit": "L1.mlp.neuron[7]", "frequency": 1.0} in info["selection_frequency"]


def test_stability_selection_needs_per_sample_relevance():
    from safety_prune.attribution import Relevance
    from safety_prune.selection import stable_selection

    rel = {name: Relevance("wanda", {"neuron": torch.rand(2, 5)}, 3) for name in ("general", "benign", "undesired")}
    with pytest.raises(ConfigError, match=r"--stable needs per-sample relevance"):
        stable_selection({"neuron": torch.rand(2, 5)}, rel, "neuron", "max", 0.0, (), resamples=5, seed=0, pi=0.5,
                         depth=2)


@pytest.mark.parametrize(("extra", "match"), [
    (["--stable", "0"], "lies in \\(0, 1\\]"),
    (["--stable", "1.5"], "lies in \\(0, 1\\]"),
    (["--stable", "nan"], "lies in \\(0, 1\\]"),
    (["--stable", "0.6", "--stability", "1"], "too few to estimate a share"),
    (["--stable", "0.6", "--unit", "head"], "needs per-sample relevance of neurons"),
    (["--stable", "0.6", "--method", "wanda"], "needs per-sample relevance of neurons"),
])
def test_bad_stable_options_are_refused_before_any_work(tmp_path, capsys, extra, match):
    import re

    from refusal import refused

    suite = write_tiny_suite(tmp_path / "suite")
    msg = refused(capsys, ["correct", "--model", str(tmp_path / "none"), "--probe", suite, "--out",
                           str(tmp_path / "run"), *extra], [tmp_path / "suite"], [tmp_path])
    assert re.search(match, msg), msg
    assert not (tmp_path / "run").exists()


def test_correct_with_stable_records_the_selection_probability(tmp_path):
    from tiny import save_tiny

    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions

    save_tiny("llama", tmp_path / "model")
    suite = write_tiny_suite(tmp_path / "suite")
    res = correct(str(tmp_path / "model"), suite, tmp_path / "run", options=CorrectOptions(
        k=4, method="lrp", batch_size=4, limit=3, stability=10, stable=0.5, force=True))
    stable = res["selection"]["stable"]
    assert stable["pi"] == 0.5 and stable["resamples"] == 10 and stable["depth"] == 4
    assert len(stable["chosen"]) == 4 and stable["candidates"] >= 4  # (4 on this tiny model)
    assert all(row["probability"] >= 0.5 for row in stable["chosen"])


def test_constraints_one_perplexity_rule_and_their_record():
    """The search's early perplexity check and ``violations`` share one rule; ``info`` is what results.json keeps."""
    limits = Constraints(ppl_rise=0.02)
    assert limits.perplexity(100.0, 102.0) is None and limits.perplexity(100.0, 103.0) == "perplexity +3.0%"
    base = {"perplexity": 100.0, "distinct2": 0.5, "continuation_perplexity": 10.0}
    assert limits.violations(base, {**base, "perplexity": 103.0}) == ["perplexity +3.0%"]
    assert limits.info() == {"ppl_rise": 0.02, "distinct2_drop": 0.05, "continuation_ppl_rise": 0.1,
                             "capability_drop": 0.02}
    assert "capability_drop" not in limits.info(capability=False)


def test_stability_reading_bounds():
    """The report's word: stable from a mean Jaccard of 0.7 (the stability issue's bar), unstable below 0.4."""
    from safety_prune.selection import stability_reading

    assert [stability_reading(j) for j in (1.0, 0.7, 0.69, 0.4, 0.39, 0.0)] == [
        "stable", "stable", "moderate", "moderate", "unstable", "unstable"]


_BASE = {"behaviour_mean": 0.2, "behaviour_rate": 0.1, "perplexity": 10.0, "distinct2": 0.9,
         "continuation_perplexity": 3.0}


class _Grid:
    """A candidate edit as the search sees it: stronger means a higher strength at a reach no wider."""

    def __init__(self, strength: float, reach: float, ppl: float, name: str = ""):
        self.strength, self.reach, self.ppl, self.name = strength, reach, ppl, name

    def apply(self, _model):
        return self

    def dampening(self) -> float:
        return self.strength / self.reach

    def at_least_as_strong_as(self, other: "_Grid") -> bool:
        return self.strength >= other.strength and self.reach <= other.reach


def test_cost_rule_takes_the_costliest_setting_that_keeps_every_limit() -> None:
    base = _BASE
    edits = [_Grid(9.0, 1.0, 10.05, "mild"), _Grid(1.0, 1.0, 10.19, "costly"), _Grid(5.0, 1.0, 10.15, "loops"),
             _Grid(2.0, 1.0, 10.5, "over"), _Grid(3.0, 1.0, 10.1, "stronger")]
    generated = []

    def measure(m) -> dict:
        if not isinstance(m, _Grid):
            return base
        generated.append(m.name)
        loops = m.name == "costly"  # the costliest within the perplexity limit breaks distinct-2
        return {**base, "behaviour_mean": 0.1, "perplexity": m.ppl, "distinct2": 0.5 if loops else 0.9}

    lm = SimpleNamespace(model=object())
    candidates = [({"k": 1, "scale": None, "strength": e.strength, "reach": 1.0}, e) for e in edits]
    best, trail = search_settings(lm, measure, candidates, Constraints(), lambda e: e.ppl, "cost")
    assert generated == ["costly", "loops"]  # by validation perplexity, never by the sum of 1 - gain
    assert best["strength"] == 5.0 and trail[3]["reduction"] == pytest.approx(0.5)
    assert trail[4]["violations"] == ["perplexity +5.0%"] and not trail[4]["generated"]
    assert trail[1]["generated"] is False and "costs more perplexity" in trail[1]["note"]  # cheaper: not generated
    # at least as strong as a candidate over the limit: not measured (its perplexity would be read as within)
    assert trail[5]["perplexity"] is None and not trail[5]["generated"]


def _budget_search(edits: list[_Grid], loops: set[int]) -> tuple[dict | None, list[dict], list[int], list[int]]:
    """search_settings under the budget rule, with the indices whose perplexity was read and whose were generated;
    the candidates in ``loops`` break distinct-2."""
    read, generated = [], []

    def measure(m) -> dict:
        if not isinstance(m, _Grid):
            return _BASE
        generated.append(edits.index(m))
        return {**_BASE, "behaviour_mean": 0.1, "perplexity": m.ppl,
                "distinct2": 0.5 if edits.index(m) in loops else 0.9}

    def perplexity_of(m) -> float:
        read.append(edits.index(m))
        return m.ppl

    candidates = [({"k": 1, "scale": None, "strength": e.strength, "reach": e.reach}, e) for e in edits]
    best, trail = search_settings(SimpleNamespace(model=object()), measure, candidates, Constraints(), perplexity_of,
                                  "budget")
    return best, trail, read, generated


def test_budget_rule_reads_only_the_perplexities_that_can_change_its_choice() -> None:
    """Eight strengths at one reach, within +2% up to strength 5, and strength 5 loops: strength 4 is chosen,
    after reading fewer perplexities than candidates; the milder ones say why they were not read."""
    edits = [_Grid(s, 1.0, 10.0 + 0.04 * s) for s in range(1, 9)]
    best, trail, read, generated = _budget_search(edits, loops={4})
    assert best["strength"] == 4
    assert generated == [4, 3]  # the strongest within the limit first; it loops, so the next one down
    assert len(read) < len(edits) and 3 in read and 4 in read
    rows = trail[1:]
    assert rows[4]["violations"] == ["distinct-2 -44.4%"] and rows[4]["generated"]
    assert rows[3]["generated"] and not rows[3]["violations"]
    for i in (0, 1, 2):
        assert rows[i]["generated"] is False
        assert rows[i]["note"] in ("not measured: strength 4, reach 1 dampens more and keeps every limit",
                                   "not generated from: strength 4, reach 1 dampens more and keeps every limit")
    assert all(rows[i]["violations"] for i in (5, 6, 7))  # over the limit, read or implied


@pytest.mark.parametrize("seed", range(40))
def test_budget_rule_chooses_what_reading_every_perplexity_chooses(seed: int) -> None:
    """On random grids whose perplexity rises with strength (and with a narrower reach), with random candidates
    breaking distinct-2, the choice is the strongest candidate within every limit, as a full search finds."""
    gen = torch.Generator().manual_seed(seed)
    slope = float(torch.rand((), generator=gen)) * 0.01
    edits = [_Grid(s / 8, r, 10.0 * (1 + slope * s / r)) for r in (1.0, 0.3, 0.1, 0.03) for s in range(2, 9)]
    loops = {i for i in range(len(edits)) if float(torch.rand((), generator=gen)) < 0.2}
    best, trail, read, _ = _budget_search(edits, loops)
    feasible = [i for i, e in enumerate(edits) if e.ppl <= 10.2 and i not in loops]
    want = max(feasible, key=lambda i: (edits[i].dampening(), -i)) if feasible else None
    assert (None if best is None else (best["strength"], best["reach"])) == (
        None if want is None else (edits[want].strength, edits[want].reach))
    assert len(set(read)) == len(read)  # no perplexity read twice
    assert len(trail) == len(edits) + 1
