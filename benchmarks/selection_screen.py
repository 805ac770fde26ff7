"""A finished `correct` run's proportional gains, chosen by another selection rule, held out beside the run's own.

    python benchmarks/selection_screen.py RUN_DIR [--order budget|cost] [--search-tokens N] [--strengths S1,S2,...]
        [--json FILE]

RUN_DIR: a `correct --method lrp --intervention proportional` run of the toxicity suite on the default model (its
relevance.safetensors holds the guarded LRP contrast it ranked by). The screen keeps the run's ranking and its
grid of settings (the search trail's strengths and reaches; ``--strengths`` replaces the strengths) and changes only
how one is chosen:

- ``--search-tokens``: how many validation-prose tokens each candidate's perplexity is measured on (correct's
  default is 4,096, about 8 windows of 512; the validation prose holds ~22,000); the fewer, the noisier the
  reading near the +2% limit;
- ``--order``: correct's ``--select-by`` rule: ``budget`` (the largest sum of 1 - gain within the limits) or
  ``cost`` (the largest validation perplexity within the limit first, then down until one keeps every other
  limit).

Held out: the chosen gains on the eval prompts and test prose, the same gains on permuted neurons (random
control), and paired differences against the baseline, the control and the run's own correction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from screening import gains_candidates, heldout, open_run


def main() -> None:
    from safety_prune.interventions import gains_edit, proportional
    from safety_prune.jobs.options import float_list
    from safety_prune.methods import check_strengths
    from safety_prune.selection import search_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--order", choices=("budget", "cost"), default="cost")
    parser.add_argument("--search-tokens", type=int, default=None,
                        help="validation tokens per candidate's perplexity (default: correct's --search-tokens)")
    parser.add_argument("--strengths", type=float_list, default=None, metavar="S1,S2,...",
                        help="strengths to search at each of the run's reaches, each in [0, 1] (default: the run's)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "selection_screen.json")
    args = parser.parse_args()
    if args.strengths is not None:
        check_strengths(args.strengths, "--strengths")
    if args.search_tokens is not None and args.search_tokens < 1:
        raise SystemExit(f"--search-tokens {args.search_tokens}: give a positive number of tokens.")

    started = time.time()
    sc = open_run(args.run, args.search_tokens)
    grid, candidates, scores = gains_candidates(sc, args.strengths)
    n_tokens = len(sc.lm.tokenizer(sc.val_text[0], add_special_tokens=False)["input_ids"])
    print(f"{len(candidates)} candidates; validation perplexity on {n_tokens} tokens; {args.order} order", flush=True)
    best, trail = search_settings(sc.lm, sc.measure, candidates, sc.limits, sc.perplexity_of, args.order)
    result: dict = {"what": __doc__.split("\n\n")[0], "run": str(args.run), "seed": sc.opt.seed,
                    "chosen_by": f"{args.order} order", "validation_tokens": n_tokens,
                    "validation": {"trail": trail, "chosen": best,
                                   "reduction": next((r["reduction"] for r in trail[1:]
                                                      if r.get("generated") and not r["violations"]), None)}}
    print("chosen", best, "validation reduction", result["validation"]["reduction"], flush=True)
    if best is not None:
        setting = (best["strength"], best.get("threshold", 0.0), best["reach"])
        chosen = candidates[grid.index(setting)][1]  # the edit the search measured
        dense = proportional(scores, "neuron", *setting)
        order = torch.randperm(dense.numel(), generator=torch.Generator().manual_seed(sc.opt.seed))
        control = gains_edit("neuron", dense.flatten()[order].view_as(dense), {"kind": "random"})
        result["heldout"] = heldout(sc, "gains", chosen, control)
        print(json.dumps({k: result["heldout"][k] for k in ("paired_vs_baseline", "paired_vs_random",
                                                            "gains_minus_run_correction")}), flush=True)
    result["seconds"] = round(time.time() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
