"""``circuit``: keep only what a task needs (the paper's circuit discovery, on IOI).

Units are ranked by mean |R| on reference IOI prompts (explaining the task metric logit(IO) - logit(S), or
with ``--target io`` the logit of the correct name) and pruned least relevant first, step by step. Accuracy
is measured on *other* IOI prompts (a different seed, overlapping texts dropped). The circuit is what remains
at the largest pruned share whose accuracy stays at or above ``threshold`` times the unpruned accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..attribution import Sample, attribute
from ..evaluation.ioi import ioi_prompts, ioi_scores
from ..io import sha256_file
from ..pruning import count_units, masked, select
from ..render import render_task_report
from ..resources import resource_dir
from ..run import check_not_inside, check_out_dir, staged
from .common import Finish, header, open_model
from .options import CircuitOptions

GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

def circuit(model: str, out: str | Path, *, overwrite: bool = False, options: CircuitOptions | None = None,
            argv: Sequence[str] | None = None) -> dict[str, Any]:
    opt, started = options or CircuitOptions(), time.time()
    opt.validate()
    out = check_out_dir(out, overwrite)
    lm = open_model(model, opt)
    check_not_inside(out, lm.folder, "--out")
    data = resource_dir("data") / "ioi.json"
    finish = Finish(opt.seed, argv, {str(data): sha256_file(data)}, lm.weights_sha256, started)
    tok = lm.tokenizer
    reference = ioi_prompts(tok, opt.n_reference, opt.seed)
    seen = {p.text for p in reference}
    held_out = [p for p in ioi_prompts(tok, opt.n_eval, opt.seed + 1) if p.text not in seen]
    samples = []
    for p in reference:
        ids = tok(p.text, add_special_tokens=True)["input_ids"]
        samples.append(Sample((*ids, p.io_id), len(ids), foil=p.s_id if opt.target == "logit_diff" else None))
    base = ioi_scores(lm.model, tok, held_out)
    total = count_units(lm.model, opt.unit)
    curves: dict[str, list[dict[str, float]]] = {}
    ranked: dict[str, dict] = {}
    for method in opt.methods:
        scores = ranked[method] = attribute(
            lm.model, samples, method=method, units=(opt.unit,), batch_size=opt.batch_size,
            absolute=method in ("lrp", "gradient"), pad_token_id=tok.pad_token_id or 0, seed=opt.seed,
            desc=f"{method} ioi").scores
        curve = []
        for frac in GRID:
            k = round(frac * total)
            units = select(scores, opt.unit, k=k) if k else []
            with masked(lm.model, units):
                score = ioi_scores(lm.model, tok, held_out)
            curve.append({"fraction_pruned": k / total, "k": k, **score})
        curves[method] = curve
    primary = opt.methods[0]
    keep = [p for p in curves[primary] if p["accuracy"] >= opt.threshold * base["accuracy"]]
    best = max(keep, key=lambda p: p["k"]) if keep else curves[primary][0]
    scores = ranked[primary]
    pruned = select(scores, opt.unit, k=best["k"]) if best["k"] else []
    n_layers, per = scores[opt.unit].shape
    gone = [0] * n_layers
    for u in pruned:
        gone[u.layer] += 1
    rows = [{"method": m, "max_fraction_at_threshold": max((p["fraction_pruned"] for p in c
                                                            if p["accuracy"] >= opt.threshold * base["accuracy"]),
                                                           default=0.0),
             "accuracy_at_50pct": next(p["accuracy"] for p in c if abs(p["fraction_pruned"] - 0.5) < 0.01)}
            for m, c in curves.items()]
    results = header("circuit", lm) | {
        "task": opt.task,
        "settings": {"task": opt.task, "unit": opt.unit, "threshold": opt.threshold, "target": opt.target,
                     "n_reference": len(reference), "n_eval": len(held_out), "total_units": total},
        "baseline": base,
        "chance": "accuracy 0.5 (two candidate names)",
        "curves": curves, "comparison": rows,
        "circuit": {"method": primary, "unit": opt.unit, "threshold": opt.threshold, "kept": total - best["k"],
                    "total": total, "accuracy": best["accuracy"], "fraction_pruned": best["fraction_pruned"],
                    "per_layer": [{"layer": i, "kept": per - gone[i]} for i in range(n_layers)]},
    }
    with staged(out) as staging:
        return finish.write(staging, results, lambda res, st: render_task_report(res, st.path("report.html")))
