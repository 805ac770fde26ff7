"""``circuit``: keep only what a task needs (the paper's circuit discovery, on IOI).

Units are ranked by their mean relevance on reference IOI prompts (explaining the task metric
logit(IO) - logit(S), or with ``--target io`` the logit of the correct name) and pruned least relevant first,
step by step along ``GRID``. How the ranking is made is a set of options, so variants can be measured side by
side: per-prompt |R| or signed relevance (``--relevance``), each prompt normalised by its total |R| or not
(``--normalise``), and one ranking or a fresh one of the pruned model at every step (``--schedule``).
Accuracy is measured on *other* IOI prompts (a different seed, overlapping texts dropped). The circuit is what
remains at the largest pruned share whose accuracy stays at or above ``threshold`` times the unpruned accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import Sample, attribute
from ..evaluation.ioi import IOIPrompt, ioi_prompts, ioi_samples, ioi_scores
from ..families import geometry
from ..io import sha256_file
from ..pruning import MaskSet, count_units, masked, select
from ..render import render_task_report
from ..resources import resource_dir
from ..results import CircuitResults
from ..run import check_not_inside, check_not_over_inputs, check_out_dir, staged
from .common import Finish, header, open_model
from .options import CircuitOptions

GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SIGNED = ("lrp", "gradient")  # the methods whose relevance has a sign, so --relevance applies to them


def unit_scores(model: nn.Module, samples: Sequence[Sample], method: str, opt: CircuitOptions,
                pad_token_id: int) -> Tensor:
    """[layers, units] ranking scores of ``method`` under ``opt``'s relevance and normalisation; lowest first.

    ``relevance="positive"`` averages each prompt's positive part, max(R, 0): what removing the unit costs the
    prompts it helps. Its harm on other prompts cannot cancel that cost (as in the signed mean, where a unit that
    decides some prompts and hurts others can look idle), and units that only work against the task rank lowest
    (the mean of |R| ranks them by size). ``normalise="sample"`` divides each prompt's relevance by its own total
    |R| over all units of the kind before the mean (not by its explained logit difference, which is near 0 or
    negative on prompts the model gets wrong). ``attribute`` returns per-prompt values for neurons only, so the
    per-prompt options attribute each prompt on its own (a batch of one): one code path for heads, neurons and
    every method, at n_reference passes instead of n_reference / batch_size.
    """
    relevance = opt.relevance if method in SIGNED else "signed"  # other methods' scores are kept as they come

    def run(batch: Sequence[Sample], size: int, absolute: bool) -> Tensor:
        return attribute(model, batch, method=method, units=(opt.unit,), batch_size=size, absolute=absolute,
                         pad_token_id=pad_token_id, seed=opt.seed, desc=f"{method} ioi").scores[opt.unit]

    if opt.normalise == "none" and relevance != "positive":  # a mean of per-prompt R or |R|: one batched pass
        return run(samples, opt.batch_size, relevance == "abs")
    per = torch.stack([run([s], 1, False) for s in samples])  # [samples, layers, units], signed
    if opt.normalise == "sample":
        per = per / per.abs().sum((1, 2), keepdim=True).clamp_min(torch.finfo(per.dtype).tiny)
    return {"signed": per, "abs": per.abs(), "positive": per.clamp_min(0)}[relevance].mean(0)


def prune_curve(model: nn.Module, tokenizer, samples: Sequence[Sample], held_out: list[IOIPrompt], method: str,
                opt: CircuitOptions) -> tuple[list[dict[str, float]], list[MaskSet]]:
    """Accuracy at every ``GRID`` share pruned, and the units pruned there (each set contains the previous).

    One-shot ranks once on the intact model. Iterative re-attributes with the units pruned so far masked and adds
    the least relevant survivors, so a unit's rank reflects the model it will actually be removed from.
    """
    total = count_units(model, opt.unit)
    pad = tokenizer.pad_token_id or 0
    pruned, scores = MaskSet(), None
    curve, masks = [], []
    for frac in GRID:
        k = round(frac * total)
        if k > len(pruned):
            if scores is None or opt.schedule == "iterative":
                with masked(model, pruned):
                    scores = unit_scores(model, samples, method, opt, pad)
            pruned = MaskSet([*pruned, *select({opt.unit: scores}, opt.unit, k=k - len(pruned), exclude=pruned)])
        with masked(model, pruned):
            score = ioi_scores(model, tokenizer, held_out)
        curve.append({"fraction_pruned": k / total, "k": k, **score})
        masks.append(pruned)
    return curve, masks


def circuit(model: str, out: str | Path, *, overwrite: bool = False, options: CircuitOptions | None = None,
            argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the circuit job into ``out`` and return its results (``curves`` and ``comparison`` per method), so a
    benchmark can call it once per variant of ``options`` in one process."""
    opt, started = options or CircuitOptions(), time.time()
    opt.validate()
    out = check_out_dir(out, overwrite, "circuit")
    lm = open_model(model, opt)
    check_not_inside(out, lm.folder, "--out")
    data = resource_dir("data") / "ioi.json"
    check_not_over_inputs(out, [data, *lm.weights_sha256], "--out")
    finish = Finish(opt.seed, argv, {str(data): sha256_file(data)}, lm, started)
    tok = lm.tokenizer
    reference = ioi_prompts(tok, opt.n_reference, opt.seed)
    seen = {p.text for p in reference}
    held_out = [p for p in ioi_prompts(tok, opt.n_eval, opt.seed + 1) if p.text not in seen]
    samples = ioi_samples(tok, reference, foil=opt.target == "logit_diff")
    base = ioi_scores(lm.model, tok, held_out)
    total = count_units(lm.model, opt.unit)
    finish.lap("baseline")
    runs = {}
    for m in opt.methods:
        runs[m] = prune_curve(lm.model, tok, samples, held_out, m, opt)
        finish.lap(f"curve:{m}")
    curves = {m: curve for m, (curve, _) in runs.items()}
    primary = opt.methods[0]
    curve, masks = runs[primary]
    keep = [i for i, p in enumerate(curve) if p["accuracy"] >= opt.threshold * base["accuracy"]]
    best = max(keep, key=lambda i: curve[i]["k"]) if keep else 0
    point, pruned = curve[best], masks[best]
    geo = geometry(lm.model)
    per = geo.n_heads if opt.unit == "head" else geo.n_neurons
    gone = [0] * geo.n_layers
    for u in pruned:
        gone[u.layer] += 1
    rows = [{"method": m, "max_fraction_at_threshold": max((p["fraction_pruned"] for p in c
                                                            if p["accuracy"] >= opt.threshold * base["accuracy"]),
                                                           default=0.0),
             "accuracy_at_50pct": next(p["accuracy"] for p in c if abs(p["fraction_pruned"] - 0.5) < 0.01)}
            for m, c in curves.items()]
    results: CircuitResults = {
        **header("circuit", lm),
        "task": opt.task,
        "settings": {"task": opt.task, "unit": opt.unit, "threshold": opt.threshold, "target": opt.target,
                     "relevance": opt.relevance, "normalise": opt.normalise, "schedule": opt.schedule,
                     "n_reference": len(reference), "n_eval": len(held_out), "total_units": total},
        "baseline": base,
        "chance": "accuracy 0.5 (two candidate names)",
        "curves": curves, "comparison": rows,
        "circuit": {"method": primary, "unit": opt.unit, "threshold": opt.threshold,
                    "kept": total - point["k"], "total": total, "accuracy": point["accuracy"],
                    "fraction_pruned": point["fraction_pruned"],
                    "per_layer": [{"layer": i, "kept": per - gone[i]} for i in range(geo.n_layers)]},
    }
    with staged(out) as staging:
        return finish.write(staging, results, lambda res, st: render_task_report(res, st.path("report.html")))
