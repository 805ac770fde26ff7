"""Dampen toward the mean instead of toward zero: does the same ranking buy more at the same perplexity?

    python benchmarks/mean_dampening.py --root runs/ranking-stability --seed 0 \
        --json benchmarks/results/mean_dampening.json

Proportional gains scale a neuron's output column by g (toward 0). A neuron's average output is part of what
every later layer expects, so removing it moves the residual stream off its usual range and costs perplexity
before it removes the behaviour. Mean-AcT (Rodriguez et al. 2025) moves activations toward a target mean
instead; the cheapest form of that here keeps each dampened neuron's mean on general text:
``a -> g * a + (1 - g) * mean``, i.e. the column scaled by g plus a constant (1 - g) * mean * column added to the
down projection's output (foldable into a bias). This script measures it beside zero-dampening, from one
reference draw of ``ranking_stability.py draw`` (the seed's LRP scores, guarded as ``correct`` guards them):

- validation: every setting of make correct's grid, both variants, on the 125 validation prompts and the
  validation prose with ``correct``'s limits (a candidate over +2% perplexity is not generated from); the choice
  is ``correct``'s, by 5-fold cross-fitting with the one-standard-error rule;
- held out: each variant's chosen setting on the 312 eval prompts and the test prose, with the same change on
  random neurons beside it (their own means), paired as ``correct`` pairs them.

The means come from the general *reference* documents (the ranking's own side), never validation or test text.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from ranking_stability import SETS, _guarded, _path, _relevance
from safetensors.torch import load_file

GRID = [(s, r) for r in (1.0, 0.3, 0.1, 0.03) for s in (0.5, 1.0)]  # make correct's, mildest first


def general_means(lm, texts: list[str], max_tokens: int = 512) -> torch.Tensor:
    """[layers, neurons]: each MLP neuron's mean activation (the down projection's input) over every token of
    ``texts``, each cut to ``max_tokens`` tokens."""
    from safety_prune.families import architecture, blocks

    arch, layers = architecture(lm.model), blocks(lm.model)
    sums = [torch.zeros(layers[0].get_submodule(arch.down).weight.shape[1], dtype=torch.float64) for _ in layers]
    count = 0

    def hook(i):
        def add(_module, args):
            sums[i].add_(args[0][0].double().sum(0))
        return add

    handles = [b.get_submodule(arch.down).register_forward_pre_hook(hook(i)) for i, b in enumerate(layers)]
    try:
        with torch.inference_mode():
            for text in texts:
                ids = lm.tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
                lm.model(input_ids=ids)
                count += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    return torch.stack(sums) / count


def toward_mean(lm, edit, means: torch.Tensor) -> torch.nn.Module:
    """``edit`` applied to a copy, each changed neuron's lost share of its mean put back as a constant on the
    down projection's output (a forward hook on the copy: the input model is untouched)."""
    from safety_prune.families import architecture, blocks

    model = edit.apply(lm.model)
    arch, src, dst = architecture(lm.model), blocks(lm.model), blocks(model)
    gains = edit.scale.double() if isinstance(edit.scale, torch.Tensor) else torch.zeros(len(edit.units))
    per_layer: dict[int, list[tuple[int, float]]] = {}
    for unit, g in zip(edit.units, gains.tolist(), strict=True):
        per_layer.setdefault(unit.layer, []).append((unit.index, g))
    for layer, pairs in per_layer.items():
        idx = torch.tensor([i for i, _ in pairs])
        keep = torch.tensor([1 - g for _, g in pairs], dtype=torch.float64) * means[layer, idx]
        weight = src[layer].get_submodule(arch.down).weight.detach()
        offset = (weight[:, idx].double() @ keep).to(weight.dtype)
        dst[layer].get_submodule(arch.down).register_forward_hook(lambda _m, _a, out, o=offset: out + o)
    return model


def measure_validation(lm, model: torch.nn.Module, suite, scorer, prompts: list[str], text: list[str], capability,
                       seed: int) -> dict:
    """What correct's validation search reads of a candidate: behaviour, perplexity, distinct-2, continuation
    perplexity, last-word accuracy on ``capability``'s passages, and the per-prompt means (for cross-fitting)."""
    from safety_prune.evaluation.behaviour import evaluate
    from safety_prune.evaluation.capability import last_word_hits

    metrics, res = evaluate(replace(lm, model=model), lm, suite, scorer, prompts, text, seed)
    hits = last_word_hits(model, lm.tokenizer, capability.passages, suite.generation.batch_size)
    return {"behaviour_mean": metrics["behaviour_mean"]["value"], "behaviour_rate": metrics["behaviour_rate"]["value"],
            **{k: metrics[k]["value"] for k in ("perplexity", "distinct2", "continuation_perplexity")},
            "last_word_accuracy": sum(hits) / len(hits), "per_prompt": res.per_prompt_mean()}


def main() -> None:
    from safety_prune.crossfit import cross_fit
    from safety_prune.evaluation.behaviour import GenerationCache, evaluate
    from safety_prune.evaluation.capability import capability_set
    from safety_prune.evaluation.perplexity import perplexity
    from safety_prune.evaluation.stats import behaviour_per_prompt, paired_bootstrap_diff
    from safety_prune.interventions import gains_edit, proportional, random_like
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import measure_baseline, suite_scorer
    from safety_prune.results import flat_metrics
    from safety_prune.selection import Constraints, SearchText, validation_text
    from safety_prune.suite import load_suite

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/ranking-stability"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "mean_dampening.json")
    args = parser.parse_args()

    started = time.time()
    opt = CorrectOptions(seed=0)
    suite = load_suite("toxicity")
    scorer = suite_scorer(suite)
    lm = open_model("default", opt)
    draw = load_file(str(_path(args.root, args.seed)))
    scores = _guarded(_relevance({n: draw[n] for n in SETS}))
    means = general_means(lm, suite.general_reference()[: suite.reference.general_n])
    limits = Constraints(opt.ppl_budget, opt.max_distinct2_drop, opt.max_continuation_ppl_rise,
                         opt.max_capability_drop)
    val_prompts = suite.validation_prompts()
    val_text = [validation_text(lm, SearchText(suite.general_validation(), suite.perplexity.max_length),
                                opt.search_tokens)]
    val_cap = capability_set(lm.tokenizer, suite.general_validation(), "general validation")
    p = suite.perplexity

    def build(variant: str, edit) -> torch.nn.Module:
        return toward_mean(lm, edit, means) if variant == "mean" else edit.apply(lm.model)

    def measure(model) -> dict:
        return measure_validation(lm, model, suite, scorer, val_prompts, val_text, val_cap, opt.seed)

    base_val = measure(lm.model)
    result: dict = {"what": __doc__.split("\n\n")[0], "draw_seed": args.seed, "validation": {}, "heldout": {}}
    chosen = {}
    for variant in ("zero", "mean"):
        trail = [{"k": 0, "scale": None, **base_val, "violations": []}]
        per_prompt = {0: base_val["per_prompt"]}
        for s, r in GRID:
            edit = gains_edit("neuron", proportional(scores, "neuron", s, 0.0, r),
                              {"kind": "proportional", "strength": s, "threshold": 0.0, "reach": r})
            model = build(variant, edit)
            ppl = perplexity(model, lm.tokenizer, val_text, max_length=p.max_length, stride=p.stride).perplexity
            row = {"k": len(edit.units), "scale": 1 - s, "strength": s, "threshold": 0.0, "reach": r,
                   "perplexity": ppl}
            if over := limits.perplexity(base_val["perplexity"], ppl):
                row |= {"violations": [over], "generated": False}
            else:
                got = measure(model)
                per_prompt[len(trail)] = got.pop("per_prompt")
                row |= got | {"violations": limits.violations(base_val, got), "generated": True}
            del model
            trail.append(row)
            print(variant, s, r, {k: row.get(k) for k in ("perplexity", "behaviour_mean", "violations")}, flush=True)
        feasible = {i: v for i, v in per_prompt.items() if i and not trail[i]["violations"]}
        pick, estimate = cross_fit(trail, feasible, per_prompt[0], 5, opt.seed)
        chosen[variant] = trail[pick] if pick is not None else None
        trail[0] = {k: v for k, v in trail[0].items() if k != "per_prompt"}
        result["validation"][variant] = {"trail": trail, "cross_fit": estimate, "chosen": chosen[variant]}

    base = measure_baseline(lm, suite, scorer, None, opt.seed, GenerationCache(None, args.root / "heldout"))
    base_scores = base.generations.per_prompt_mean()
    keys = ("behaviour_rate", "behaviour_rate_ci", "behaviour_mean", "behaviour_mean_ci", "perplexity",
            "distinct2", "continuation_perplexity", "last_word_accuracy_drop")
    result["heldout"]["unpruned"] = {k: flat_metrics(base.metrics)[k] for k in keys}
    noise = {"neuron": torch.rand(scores["neuron"].shape, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64)}
    per_edit = {}
    for variant, row in chosen.items():
        if row is None:
            continue
        edit = gains_edit("neuron", proportional(scores, "neuron", row["strength"], 0.0, row["reach"]),
                          {"kind": "proportional", "strength": row["strength"], "threshold": 0.0,
                           "reach": row["reach"]})
        out = {}
        for label, e in (("edit", edit), ("random", random_like(edit, noise, "neuron"))):
            metrics, res = evaluate(replace(lm, model=build(variant, e)), lm, suite, scorer, base.prompts,
                                    base.test_text, opt.seed, capability=base.capability)
            out[label] = {"metrics": {k: flat_metrics(metrics)[k] for k in keys},
                          "per_prompt_mean": res.per_prompt_mean(),
                          "per_prompt_flagged": behaviour_per_prompt(res.scores, suite.scorer.threshold)[
                              "behaviour_rate"]}
        per_edit[variant] = out["edit"]
        result["heldout"][variant] = {
            "setting": {"strength": row["strength"], "reach": row["reach"]}, **out["edit"]["metrics"],
            "paired_vs_baseline": paired_bootstrap_diff(base_scores, out["edit"]["per_prompt_mean"], seed=0),
            "paired_vs_random": paired_bootstrap_diff(out["random"]["per_prompt_mean"],
                                                      out["edit"]["per_prompt_mean"], seed=0),
            "random": out["random"]["metrics"]}
        print(variant, json.dumps({k: result["heldout"][variant][k] for k in (
            "setting", "behaviour_rate", "behaviour_mean", "perplexity", "paired_vs_random")}), flush=True)
        args.json.with_suffix(".partial.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if len(per_edit) == 2:
        result["heldout"]["mean_minus_zero"] = {
            key: paired_bootstrap_diff(per_edit["zero"][f"per_prompt_{key}"], per_edit["mean"][f"per_prompt_{key}"],
                                       seed=0) for key in ("mean", "flagged")}
    result["seconds"] = round(time.time() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    args.json.with_suffix(".partial.json").unlink(missing_ok=True)
    print(json.dumps(result["heldout"].get("mean_minus_zero")), f"{result['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
