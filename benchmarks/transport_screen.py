"""LRP-weighted affine transport of MLP neurons against the proportional gains of a finished `correct` run.

    python benchmarks/transport_screen.py RUN_DIR [--order budget|cost] [--fixed LAMBDA REACH] [--json FILE]

RUN_DIR: a `correct --method lrp` run of the toxicity suite on the default model. Its relevance.safetensors holds
the guarded LRP contrast the run ranked by, reference_generations.jsonl the scored reference continuations,
samples.jsonl the held-out per-prompt scores of its baseline and correction (paired against below), and its
generation cache the baseline's continuations (reused, so the baseline is not generated again).

The map (Mean-AcT, Rodriguez et al. 2025, shrink-only, per MLP neuron = the down projection's input): token
statistics at the positions that produce the reference continuations, flagged (score >= the suite's threshold)
against unflagged, give ``omega = min(1, sd_unflagged / sd_flagged)`` and ``beta = mu_unflagged - omega *
mu_flagged``. Each neuron is moved by a share ``t = lambda * min(1, n / reach)`` of the way, ``n`` its normalised
LRP contrast as in proportional gains: ``a -> a + t * ((omega - 1) * a + beta)``, i.e. a gain ``1 + t (omega - 1)``
on its down-projection column and an offset ``t * beta * column`` on the projection's output (foldable into a
bias). Proportional gains move a neuron toward 0; the transport moves its flagged statistics onto the unflagged
ones, so a neuron that behaves alike on both sets is barely touched whatever its LRP score.

Validation: correct's limits over lambda x reach on the validation prompts and prose, the candidates ordered by
correct's budget rule (strongest = largest sum of t) or, with ``--order cost``, by what they cost (the largest
validation perplexity within the limit first: across reaches the sum of t does not follow the cost). Held out:
the chosen setting on the eval prompts and test prose (with the second scorer and capability), the same shares
given to random neurons (their own omega and beta), and paired differences against the baseline, the random
control and the run's own correction. Nothing here reads eval prompts or test prose
before the chosen setting is fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from correction_front import _per_prompt
from mean_dampening import measure_validation
from safetensors.torch import load_file
from torch import Tensor, nn

LAMBDAS = (0.5, 1.0)
REACHES = (1.0, 0.3, 0.1, 0.03, 0.01)


@dataclass(frozen=True)
class Transport:
    """One transport setting, shaped as the validation search reads an edit."""

    share: Tensor  # [layers, neurons]: t, the share of the way each neuron is moved
    omega: Tensor
    beta: Tensor

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy with the gains folded into its down projections and the offsets added by forward hooks on the
        copy (``model`` is not touched)."""
        from safety_prune.families import architecture, blocks

        out = copy.deepcopy(model)
        arch = architecture(out)
        with torch.no_grad():
            for i, block in enumerate(blocks(out)):
                t = self.share[i].double()
                if not t.any():
                    continue
                down = block.get_submodule(arch.down)
                w = down.weight.double()
                offset = (w @ (t * self.beta[i].double())).to(down.weight.dtype)
                down.weight.copy_((w * (1 + t * (self.omega[i].double() - 1))).to(down.weight.dtype))
                down.register_forward_hook(lambda _m, _a, y, o=offset: y + o)
        return out

    def dampening(self) -> float:
        return float(self.share.double().sum())

    def at_least_as_strong_as(self, other: Transport) -> bool:
        return bool((self.share >= other.share).all())


def by_cost(lm, measure, candidates, limits, perplexity_of) -> tuple[dict | None, list[dict]]:
    """The ``cost`` order: every candidate's validation perplexity, then generation from the costliest within the
    perplexity limit down, stopping at the first that keeps every other limit (the trail as ``search_settings``
    writes it)."""
    base = measure(lm.model)
    trail = [{"k": 0, "scale": None, **base, "violations": [], "reduction": 0.0, "generated": True,
              "dampening": 0.0}]
    within = []
    for setting, edit in candidates:
        ppl = perplexity_of(edit.apply(lm.model))
        over = limits.perplexity(base["perplexity"], ppl)
        trail.append({**setting, "dampening": edit.dampening(), "perplexity": ppl, "violations": [over] if over
                      else [], "reduction": None, "generated": False})
        if not over:
            within.append((ppl, len(trail) - 1))
    for _, i in sorted(within, reverse=True):
        got = measure(candidates[i - 1][1].apply(lm.model))
        bad = limits.violations(base, got)
        trail[i] |= {**got, "violations": bad, "reduction": 1 - got["behaviour_mean"] / base["behaviour_mean"],
                     "generated": True}
        if not bad:
            return {key: trail[i][key] for key in ("k", "scale", "strength", "reach", "dampening")}, trail
    return None, trail


def token_statistics(lm, rows: list[dict]) -> tuple[Tensor, Tensor, int]:
    """Per neuron ``[layers, neurons]`` mean and standard deviation of the down projection's input over the
    positions that produce each row's continuation tokens (last prompt token to the second-to-last continuation
    token), and the number of such positions."""
    from safety_prune.families import architecture, blocks

    arch, layers = architecture(lm.model), blocks(lm.model)
    s1: list[Tensor | float] = [0.0] * len(layers)
    s2: list[Tensor | float] = [0.0] * len(layers)
    start, n = {"at": 0}, {"tokens": 0}

    def hook(i: int):
        def pre(_module, args):
            x = args[0][0, start["at"]:].double()
            s1[i] = s1[i] + x.sum(0)
            s2[i] = s2[i] + (x * x).sum(0)
        return pre

    handles = [b.get_submodule(arch.down).register_forward_pre_hook(hook(i)) for i, b in enumerate(layers)]
    try:
        with torch.inference_mode():
            for row in rows:
                prompt = lm.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
                cont = lm.tokenizer(row["continuation"], add_special_tokens=False)["input_ids"]
                if not cont:
                    continue
                start["at"] = len(prompt) - 1
                n["tokens"] += len(cont)
                lm.model(input_ids=torch.tensor([(prompt + cont)[:-1]]))
    finally:
        for h in handles:
            h.remove()
    mean = torch.stack([s / n["tokens"] for s in s1])
    sd = (torch.stack([s / n["tokens"] for s in s2]) - mean**2).clamp_min(1e-12).sqrt()
    return mean, sd, n["tokens"]


def main() -> None:
    from safety_prune.evaluation.behaviour import GenerationCache, evaluate
    from safety_prune.evaluation.capability import capability_set
    from safety_prune.evaluation.perplexity import perplexity
    from safety_prune.evaluation.stats import paired_bootstrap_diff
    from safety_prune.interventions import proportional
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.correct import limits_of
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import measure_baseline, suite_scorer, suite_secondary
    from safety_prune.results import flat_metrics
    from safety_prune.selection import SearchText, search_settings, validation_text
    from safety_prune.suite import load_suite

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "transport_screen.json")
    parser.add_argument("--fixed", nargs=2, type=float, metavar=("LAMBDA", "REACH"),
                        help="measure this one setting (validation and held out) instead of letting the budget "
                             "rule choose: a setting chosen by hand, reported as fixed, never as validated")
    parser.add_argument("--order", choices=("budget", "cost"), default="budget",
                        help="how candidates within the limits are ordered: correct's budget rule (largest sum of "
                             "t) or by cost (largest validation perplexity)")
    args = parser.parse_args()

    started = time.time()
    res = json.loads((args.run / "results.json").read_text(encoding="utf-8"))
    opt = CorrectOptions(seed=res["manifest"]["seed"])
    suite, lm = load_suite(res["probe"]["name"]), open_model("default", opt)
    scorer, secondary = suite_scorer(suite), suite_secondary(suite)
    scores = {"neuron": load_file(str(args.run / "relevance.safetensors"))["diff.neuron"]}
    lines = (args.run / "reference_generations.jsonl").read_text(encoding="utf-8").splitlines()
    refs = [json.loads(line) for line in lines if line.strip()]
    flagged = [r for r in refs if r["score"] >= suite.scorer.threshold]
    mu_f, sd_f, n_f = token_statistics(lm, flagged)
    mu_u, sd_u, n_u = token_statistics(lm, [r for r in refs if r["score"] < suite.scorer.threshold])
    omega = (sd_u / sd_f).clamp(max=1.0)
    beta = mu_u - omega * mu_f
    print(f"statistics: {len(flagged)} flagged continuations ({n_f} tokens), {len(refs) - len(flagged)} unflagged "
          f"({n_u} tokens); median omega {float(omega.median()):.3f}", flush=True)

    limits, p = limits_of(opt), suite.perplexity
    prompts = suite.validation_prompts()
    val_text = [validation_text(lm, SearchText(suite.general_validation(), p.max_length), opt.search_tokens)]
    val_cap = capability_set(lm.tokenizer, suite.general_validation(), "general validation")

    def measure(model: nn.Module) -> dict:
        got = measure_validation(lm, model, suite, scorer, prompts, val_text, val_cap, opt.seed)
        del got["per_prompt"]  # no cross-fitting here: the trail keeps the aggregates only
        return got

    def perplexity_of(model: nn.Module) -> float:
        return perplexity(model, lm.tokenizer, val_text, max_length=p.max_length, stride=p.stride).perplexity

    def transport(lam: float, reach: float) -> Transport:
        return Transport(lam * (1 - proportional(scores, "neuron", 1.0, 0.0, reach)).float(), omega, beta)

    candidates = []
    for lam, reach in [tuple(args.fixed)] if args.fixed else [(lam, r) for r in REACHES for lam in LAMBDAS]:
        edit = transport(lam, reach)
        candidates.append(({"k": int((edit.share > 0).sum()), "scale": None, "strength": lam, "reach": reach}, edit))
    if args.order == "cost" and not args.fixed:
        best, trail = by_cost(lm, measure, candidates, limits, perplexity_of)
    else:
        best, trail = search_settings(lm, measure, candidates, limits, perplexity_of, "budget")
    if args.fixed:  # measured on validation like any candidate, held out whatever that showed
        best = {key: trail[1][key] for key in ("k", "scale", "strength", "reach", "dampening")}
    result: dict = {"what": __doc__.split("\n\n")[0], "run": str(args.run), "seed": opt.seed,
                    "chosen_by": "fixed by hand" if args.fixed else f"{args.order} order",
                    "statistics": {"flagged": len(flagged), "flagged_tokens": n_f,
                                   "unflagged": len(refs) - len(flagged), "unflagged_tokens": n_u,
                                   "median_omega": float(omega.median())},
                    "validation": {"trail": trail, "chosen": best,
                                   "reduction": next((r["reduction"] for r in trail[1:]
                                                      if r.get("generated") and not r["violations"]), None)}}
    print("chosen", best, "validation reduction", result["validation"]["reduction"], flush=True)
    if best is None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return

    with tempfile.TemporaryDirectory() as scratch:
        base = measure_baseline(lm, suite, scorer, None, opt.seed, GenerationCache(args.run, Path(scratch)),
                                secondary)
    keys = ("behaviour_rate", "behaviour_rate_ci", "behaviour_mean", "behaviour_mean_ci", "perplexity",
            "distinct2", "continuation_perplexity", "last_word_accuracy_drop", "secondary")
    chosen = transport(best["strength"], best["reach"])
    order = torch.randperm(chosen.share.numel(), generator=torch.Generator().manual_seed(opt.seed))
    control = Transport(chosen.share.flatten()[order].view_as(chosen.share), omega, beta)
    held: dict = {"unpruned": {k: flat_metrics(base.metrics).get(k) for k in keys}}
    per_prompt = {"baseline": base.generations.per_prompt_mean()}
    for label, edit in (("transport", chosen), ("random", control)):
        metrics, out = evaluate(replace(lm, model=edit.apply(lm.model)), lm, suite, scorer, base.prompts,
                                base.test_text, opt.seed, secondary=secondary, capability=base.capability)
        held[label] = {k: flat_metrics(metrics).get(k) for k in keys}
        per_prompt[label] = out.per_prompt_mean()
        print(label, json.dumps({k: held[label][k] for k in ("behaviour_rate", "behaviour_mean", "perplexity")}),
              flush=True)
    run_rows = _per_prompt(args.run)
    run_base = [m for _, m in run_rows["baseline"].values()]
    run_corrected = [m for _, m in next(v for k, v in run_rows.items() if k.startswith("corrected:")).values()]
    if run_base != per_prompt["baseline"]:
        raise SystemExit("The run's baseline scores differ from this baseline: the run is not this model, suite "
                         "and seed, so its correction cannot be paired with the transport.")
    held["paired_vs_baseline"] = paired_bootstrap_diff(per_prompt["baseline"], per_prompt["transport"], seed=0)
    held["paired_vs_random"] = paired_bootstrap_diff(per_prompt["random"], per_prompt["transport"], seed=0)
    held["transport_minus_run_correction"] = paired_bootstrap_diff(run_corrected, per_prompt["transport"], seed=0)
    held["run_correction"] = res["selection"]["intervention"]
    result["heldout"] = held
    result["seconds"] = round(time.time() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: held[k] for k in ("paired_vs_baseline", "paired_vs_random",
                                           "transport_minus_run_correction")}), f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
