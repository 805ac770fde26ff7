"""LRP-weighted affine transport of MLP neurons against the proportional gains of a finished `correct` run.

    python benchmarks/transport_screen.py RUN_DIR [--order budget|cost] [--strengths L1,L2,...] [--fixed LAMBDA REACH]
        [--json FILE]

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

Validation: correct's limits over lambda (``--strengths``, default 0.5 and 1) x reach on the validation prompts and
prose, the candidates ordered by correct's budget rule (strongest = largest sum of t) or, with ``--order cost``, by
what they cost (the largest validation perplexity within the limit first: across reaches the sum of t does not
follow the cost). Held out: the chosen setting on the eval prompts and test prose (with the second scorer and
capability), the same shares given to random neurons (their own omega and beta), and paired differences against the
baseline, the random control and the run's own correction. Nothing here reads eval prompts or test prose before the
chosen setting is fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from screening import heldout, open_run
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
    from safety_prune.interventions import proportional
    from safety_prune.jobs.options import float_list
    from safety_prune.methods import check_strengths
    from safety_prune.selection import search_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "transport_screen.json")
    parser.add_argument("--fixed", nargs=2, type=float, metavar=("LAMBDA", "REACH"),
                        help="measure this one setting (validation and held out) instead of letting the budget "
                             "rule choose: a setting chosen by hand, reported as fixed, never as validated")
    parser.add_argument("--strengths", type=float_list, default=LAMBDAS, metavar="L1,L2,...",
                        help="the lambdas searched, each in [0, 1] (default 0.5,1)")
    parser.add_argument("--order", choices=("budget", "cost"), default="budget",
                        help="how candidates within the limits are ordered: correct's budget rule (largest sum of "
                             "t) or by cost (largest validation perplexity)")
    args = parser.parse_args()
    check_strengths(args.strengths, "--strengths")

    started = time.time()
    sc = open_run(args.run)
    lm, suite, scores = sc.lm, sc.suite, {"neuron": load_file(str(args.run / "relevance.safetensors"))["diff.neuron"]}
    lines = (args.run / "reference_generations.jsonl").read_text(encoding="utf-8").splitlines()
    refs = [json.loads(line) for line in lines if line.strip()]
    flagged = [r for r in refs if r["score"] >= suite.scorer.threshold]
    mu_f, sd_f, n_f = token_statistics(lm, flagged)
    mu_u, sd_u, n_u = token_statistics(lm, [r for r in refs if r["score"] < suite.scorer.threshold])
    omega = (sd_u / sd_f).clamp(max=1.0)
    beta = mu_u - omega * mu_f
    print(f"statistics: {len(flagged)} flagged continuations ({n_f} tokens), {len(refs) - len(flagged)} unflagged "
          f"({n_u} tokens); median omega {float(omega.median()):.3f}", flush=True)

    def transport(lam: float, reach: float) -> Transport:
        return Transport(lam * (1 - proportional(scores, "neuron", 1.0, 0.0, reach)).float(), omega, beta)

    candidates = []
    for lam, reach in [tuple(args.fixed)] if args.fixed else [(lam, r) for r in REACHES for lam in args.strengths]:
        edit = transport(lam, reach)
        candidates.append(({"k": int((edit.share > 0).sum()), "scale": None, "strength": lam, "reach": reach}, edit))
    rule = "budget" if args.fixed else args.order
    best, trail = search_settings(lm, sc.measure, candidates, sc.limits, sc.perplexity_of, rule)
    if args.fixed:  # measured on validation like any candidate, held out whatever that showed
        best = {key: trail[1][key] for key in ("k", "scale", "strength", "reach", "dampening")}
    result: dict = {"what": __doc__.split("\n\n")[0], "run": str(args.run), "seed": sc.opt.seed,
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

    chosen = transport(best["strength"], best["reach"])
    order = torch.randperm(chosen.share.numel(), generator=torch.Generator().manual_seed(sc.opt.seed))
    control = Transport(chosen.share.flatten()[order].view_as(chosen.share), omega, beta)
    held = heldout(sc, "transport", chosen, control)
    result["heldout"] = held
    result["seconds"] = round(time.time() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: held[k] for k in ("paired_vs_baseline", "paired_vs_random",
                                           "transport_minus_run_correction")}), f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
