"""``circuit``: keep only what a task needs (the paper's circuit discovery, on IOI).

Units are ranked by mean |R| on reference IOI prompts (explaining the logit of
the correct name) and pruned least relevant first, step by step. Accuracy is
measured on *other* IOI prompts (a different seed, overlapping texts dropped).
The circuit is what remains at the largest pruned share whose accuracy stays at
or above ``threshold`` times the unpruned accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attribution import Sample, attribute
from .errors import ConfigError
from .evaluation.ioi import ioi_prompts, ioi_scores
from .io import sha256_file, write_json
from .pipeline import AuditOptions, model_info, open_model
from .pruning import count_units, masked, select
from .report import render_task_report
from .resources import resource_dir
from .run import SCHEMA_VERSION, check_out_dir, manifest, staged

TASKS = ("ioi",)
CIRCUIT_METHODS = ("lrp", "gradient", "activation", "magnitude", "random")
GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class CircuitOptions(AuditOptions):
    task: str = "ioi"
    unit: str = "head"
    methods: list[str] = field(default_factory=lambda: ["lrp", "gradient", "activation", "random"])
    threshold: float = 0.9
    n_reference: int = 64
    n_eval: int = 256

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task} is unknown. Available tasks: {', '.join(TASKS)}.")
        if self.unit not in ("neuron", "head"):
            raise ConfigError(f"--unit {self.unit}: circuits are found over neuron or head units.")
        bad = [m for m in self.methods if m not in CIRCUIT_METHODS]
        if bad or not self.methods:
            raise ConfigError(f"--method {','.join(bad) or '(none)'}: choose from {', '.join(CIRCUIT_METHODS)}.")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold must lie in (0, 1], got {self.threshold}.")


def circuit(model: str, out: str | Path, *, overwrite: bool = False, options: CircuitOptions | None = None,
            argv: Sequence[str] | None = None) -> dict[str, Any]:
    opt = options or CircuitOptions()
    opt.validate()
    started = time.time()
    out = check_out_dir(out, overwrite)
    lm = open_model(model, opt)
    tok = lm.tokenizer
    reference = ioi_prompts(tok, opt.n_reference, opt.seed)
    seen = {p.text for p in reference}
    held_out = [p for p in ioi_prompts(tok, opt.n_eval, opt.seed + 1) if p.text not in seen]
    samples = []
    for p in reference:
        ids = tok(p.text, add_special_tokens=True)["input_ids"]
        samples.append(Sample((*ids, p.io_id), len(ids)))
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
    results = {
        "schema_version": SCHEMA_VERSION, "job": "circuit", "task": opt.task, "model": model_info(lm),
        "settings": {"task": opt.task, "unit": opt.unit, "threshold": opt.threshold,
                     "n_reference": len(reference), "n_eval": len(held_out), "total_units": total},
        "baseline": base,
        "chance": "accuracy 0.5 (two candidate names)",
        "curves": curves, "comparison": rows,
        "circuit": {"method": primary, "unit": opt.unit, "threshold": opt.threshold, "kept": total - best["k"],
                    "total": total, "accuracy": best["accuracy"], "fraction_pruned": best["fraction_pruned"],
                    "per_layer": [{"layer": i, "kept": per - gone[i]} for i in range(n_layers)]},
    }
    data = resource_dir("data") / "ioi.json"
    results["manifest"] = manifest(seed=opt.seed, argv=list(argv) if argv else None,
                                   data_files={str(data): sha256_file(data)},
                                   model_files=lm.weights_sha256, started=started)
    with staged(out) as staging:
        write_json(staging.path("results.json"), results)
        render_task_report(results, staging.path("report.html"))
    return results
