"""``audit``: the behaviour on held-out prompts with fluency and perplexity beside it, and the circuit behind it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..contrast import circuit_summary, save_relevance
from ..explain import heatmap
from ..io import write_json
from ..render import render_report
from ..results import BehaviourResults, circuit_info, flat_metrics, probe_info
from ..run import staged
from . import stages
from .common import Finish, header, preflight_attribution, start_run
from .options import AuditOptions


def audit(model: str, probe: str, out: str | Path, *, overwrite: bool = False, options: AuditOptions | None = None,
          argv: Sequence[str] | None = None, fail_on: Sequence[str] = ()) -> dict[str, Any]:
    """Baseline behaviour, fluency and perplexity, plus the circuit from differential LRP relevance."""
    opt, started = options or AuditOptions(), time.time()
    out, suite, lm = start_run("audit", model, probe, out, overwrite, opt)
    finish = Finish(opt.seed, argv, suite.data_files(), lm, started)
    preflight_attribution(lm, suite, opt, ("neuron", "head"))
    torch.manual_seed(opt.seed)
    scorer, secondary = stages.suite_scorer(suite), stages.suite_secondary(suite)
    finish.lap("checks")
    with staged(out) as staging:
        cache = stages.generation_cache(out, staging)
        base = stages.measure_baseline(lm, suite, scorer, opt.limit, opt.seed, cache, secondary)
        stages.write_generations(staging, "samples.jsonl", (base.generations, "baseline"))
        finish.lap("baseline")
        refs = stages.build_references(lm, suite, scorer, opt, cache, out)
        stages.write_generations(staging, "reference_generations.jsonl", (refs.generations, "reference"))
        c = refs.contrast
        finish.lap("references")
        ranked = stages.rank(c, "lrp", "neuron", ("neuron", "head"), suite.contrast.guard)
        finish.lap("ranking:lrp")
        rel, diff = ranked.relevance, ranked.scores
        circuit = circuit_summary(diff, opt.top_k)
        save_relevance(staging.path("relevance.safetensors"), rel, diff)
        write_json(staging.path("circuit.json"), circuit)
        results: BehaviourResults = {
            **header("audit", lm),
            "probe": probe_info(suite, len(base.prompts), len(refs.generations.prompts), limit=opt.limit),
            "scorer": stages.scorer_info(scorer, suite, secondary),
            "baseline": flat_metrics(base.metrics),
            "contrast": stages.contrast_info(suite, c, ranked),
            "circuit": circuit_info(circuit, "lrp", len(c.sets.undesired), len(c.sets.general),
                                    {k: r.info for k, r in rel.items()}),
            "circuit_heatmap": heatmap(diff["neuron"]),
            "unit_examples": stages.explain_units(lm, circuit.get("neuron", {}).get("top_units", [])[:20],
                                                  {"undesired": c.sets.undesired, "general": c.sets.general},
                                                  opt.batch_size),
        }
        finish.lap("outputs")
        return finish.write(staging, results, lambda res, st: render_report(res, st.path("samples.jsonl"),
                                                                              st.path("report.html")), fail_on)
