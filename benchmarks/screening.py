"""What every screen of a finished `correct` run shares: its validation measures and the held-out measurement of a
chosen edit beside its random control and the run's own correction.

A screen re-decides one part of a finished run (the edit, or the rule that picks its setting) without running the
attribution again: the run's relevance.safetensors, reference_generations.jsonl, samples.jsonl and generation
cache hold what it needs. Nothing here reads eval prompts or test prose before ``heldout``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from correction_front import _per_prompt
from mean_dampening import measure_validation
from torch import nn


@dataclass
class Screen:
    """A finished run opened for screening: its results, options, suite, model, scorers, limits, and the two
    validation measures the search reads (``measure``: generation on the validation prompts; ``perplexity_of``:
    the validation prose alone, on ``n_tokens`` tokens)."""

    run: Path
    res: dict[str, Any]
    opt: Any
    suite: Any
    lm: Any
    scorer: Any
    secondary: Any
    limits: Any
    n_tokens: int

    def __post_init__(self) -> None:
        from safety_prune.evaluation.capability import capability_set
        from safety_prune.selection import SearchText, validation_text

        self.prompts = self.suite.validation_prompts()
        text = SearchText(self.suite.general_validation(), self.suite.perplexity.max_length)
        self.val_text = [validation_text(self.lm, text, self.n_tokens)]
        self.val_cap = capability_set(self.lm.tokenizer, self.suite.general_validation(), "general validation")

    def measure(self, model: nn.Module) -> dict:
        got = measure_validation(self.lm, model, self.suite, self.scorer, self.prompts, self.val_text, self.val_cap,
                                 self.opt.seed)
        del got["per_prompt"]  # no cross-fitting here: the trail keeps the aggregates only
        return got

    def perplexity_of(self, model: nn.Module) -> float:
        from safety_prune.evaluation.perplexity import perplexity

        p = self.suite.perplexity
        return perplexity(model, self.lm.tokenizer, self.val_text, max_length=p.max_length,
                          stride=p.stride).perplexity


def open_run(run: Path, n_tokens: int | None = None) -> Screen:
    """``run`` (a `correct` run of the default model) with correct's limits; ``n_tokens``: validation prose tokens
    per perplexity (correct's ``--search-tokens`` default when None)."""
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.correct import limits_of
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import suite_scorer, suite_secondary
    from safety_prune.suite import load_suite

    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    opt = CorrectOptions(seed=res["manifest"]["seed"])
    suite = load_suite(res["probe"]["name"])
    return Screen(run, res, opt, suite, open_model("default", opt), suite_scorer(suite), suite_secondary(suite),
                  limits_of(opt), n_tokens or opt.search_tokens)


def gains_candidates(sc: Screen, strengths: list[float] | None = None) -> tuple[list[tuple], list[tuple], dict]:
    """The run's grid of proportional settings (its search trail's strengths, thresholds and reaches, in its order;
    ``strengths`` replaces the strengths at each threshold and reach), as search candidates on the run's ranking:
    (grid, candidates, scores). Exits when the run searched no proportional settings."""
    from safetensors.torch import load_file

    from safety_prune.interventions import gains_edit, proportional

    scores = {"neuron": load_file(str(sc.run / "relevance.safetensors"))["diff.neuron"]}
    grid = [(row["strength"], row.get("threshold", 0.0), row["reach"])
            for row in sc.res["selection"]["search"][1:] if "strength" in row]
    if strengths is not None:
        grid = [(s, t, r) for t, r in dict.fromkeys((t, r) for _, t, r in grid) for s in strengths]
    if not grid:
        raise SystemExit(f"{sc.run}: its search trail has no proportional settings; screen a run of correct "
                         "--intervention proportional.")
    candidates = []
    for s, t, r in grid:
        edit = gains_edit("neuron", proportional(scores, "neuron", s, t, r),
                          {"kind": "proportional", "strength": s, "threshold": t, "reach": r})
        candidates.append(({"k": len(edit.units), "scale": 1 - s, "strength": s, "threshold": t, "reach": r}, edit))
    return grid, candidates, scores


def heldout(sc: Screen, label: str, edit, control) -> dict:
    """``edit`` (named ``label``) and its random ``control`` on the eval prompts and test prose of ``run`` (its
    cached baseline continuations reused), with paired differences against the baseline, the control and the
    run's own correction (its samples.jsonl; refused when the run's baseline differs from this one)."""
    from safety_prune.evaluation.behaviour import GenerationCache, evaluate
    from safety_prune.evaluation.stats import paired_bootstrap_diff
    from safety_prune.jobs.stages import measure_baseline
    from safety_prune.results import flat_metrics

    lm, suite, scorer, secondary, seed = sc.lm, sc.suite, sc.scorer, sc.secondary, sc.opt.seed
    with tempfile.TemporaryDirectory() as scratch:
        base = measure_baseline(lm, suite, scorer, None, seed, GenerationCache(sc.run, Path(scratch)), secondary)
    keys = ("behaviour_rate", "behaviour_rate_ci", "behaviour_mean", "behaviour_mean_ci", "perplexity",
            "distinct2", "continuation_perplexity", "last_word_accuracy_drop", "secondary")
    held: dict = {"unpruned": {k: flat_metrics(base.metrics).get(k) for k in keys}}
    per_prompt = {"baseline": base.generations.per_prompt_mean()}
    for name, e in ((label, edit), ("random", control)):
        metrics, out = evaluate(replace(lm, model=e.apply(lm.model)), lm, suite, scorer, base.prompts,
                                base.test_text, seed, secondary=secondary, capability=base.capability)
        held[name] = {k: flat_metrics(metrics).get(k) for k in keys}
        per_prompt[name] = out.per_prompt_mean()
        print(name, json.dumps({k: held[name][k] for k in ("behaviour_rate", "behaviour_mean", "perplexity")}),
              flush=True)
    run_rows = _per_prompt(sc.run)
    run_base = [m for _, m in run_rows["baseline"].values()]
    run_corrected = [m for _, m in next(v for k, v in run_rows.items() if k.startswith("corrected:")).values()]
    if run_base != per_prompt["baseline"]:
        raise SystemExit("The run's baseline scores differ from this baseline: the run is not this model, suite "
                         f"and seed, so its correction cannot be paired with the {label}.")
    held["paired_vs_baseline"] = paired_bootstrap_diff(per_prompt["baseline"], per_prompt[label], seed=0)
    held["paired_vs_random"] = paired_bootstrap_diff(per_prompt["random"], per_prompt[label], seed=0)
    held[f"{label}_minus_run_correction"] = paired_bootstrap_diff(run_corrected, per_prompt[label], seed=0)
    held["run_correction"] = sc.res["selection"]["intervention"]
    return held
