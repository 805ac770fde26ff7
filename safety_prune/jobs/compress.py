"""``compress``: prune a share of the weights by their relevance on general text (the paper's Sec. 4.1).

Every method ranks single weights of the transformer blocks on the same general reference samples; the
lowest-ranked ``sparsity`` share is zeroed (row-wise, as in Wanda, or globally) and perplexity is measured on
the held-out general test split. LRP ranks by mean |R| per weight: with epsilon-style rules relevance can be
negative, and a weight whose relevance is large of either sign matters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..attribution import Sample, attribute, require_samples, samples_from_texts
from ..evaluation import perplexity
from ..models import LoadedModel
from ..pruning import count_units, fraction, pruned_copy, select
from ..render import render_task_report
from ..run import staged
from ..suite import ProbeSuite
from .common import (
    Finish,
    check_save_target,
    header,
    limited_count,
    preflight_attribution,
    save_model_folder,
    start_run,
)
from .options import CompressOptions

log = logging.getLogger(__name__)

def weight_scores(lm: LoadedModel, method: str, general: list[Sample], batch_size: int, seed: int
                  ) -> dict[str, torch.Tensor]:
    """Per-weight importance (higher = keep): mean |R| for LRP and gradient x input, the method's own score else."""
    rel = attribute(lm.model, general, method=method, units=("weight",), batch_size=batch_size,
                    absolute=method in ("lrp", "gradient"), pad_token_id=lm.tokenizer.pad_token_id or 0,
                    seed=seed, desc=f"{method} weights")
    return rel.scores


def _test_ppl(lm: LoadedModel, model: torch.nn.Module, suite: ProbeSuite, seed: int) -> dict[str, Any]:
    p = suite.perplexity
    res = perplexity(model, lm.tokenizer, suite.general_test(), max_length=p.max_length, stride=p.stride,
                     device=model.device)
    lo, hi = res.ci(seed)
    return {"perplexity": res.perplexity, "perplexity_ci": [lo, hi], "n_tokens": res.n_tokens}


def compress(model: str, probe: str, out: str | Path, *, overwrite: bool = False,
             options: CompressOptions | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prune ``sparsity`` of the block weights by each method's ranking; perplexity side by side."""
    opt, started = options or CompressOptions(), time.time()
    out, suite, lm = start_run(model, probe, out, overwrite, opt)
    finish = Finish(opt.seed, argv, suite.data_files(), lm.weights_sha256, started)
    preflight_attribution(lm, suite, opt, ("weight",))
    save_to = check_save_target(opt.save_model, lm.folder)
    general_n = limited_count(suite.reference.general_n, opt.limit)
    general = require_samples(samples_from_texts(lm.tokenizer, suite.general_reference(), max_tokens=opt.max_tokens),
                              general_n, "The general reference set")
    with staged(out) as staging:
        baseline = _test_ppl(lm, lm.model, suite, opt.seed)
        rows, first = [], None
        for method in opt.methods:
            units = select(weight_scores(lm, method, general, opt.batch_size, opt.seed), "weight",
                           sparsity=opt.sparsity, scope=opt.granularity, largest=False)
            pruned = pruned_copy(lm.model, units)
            row = {"method": method, "sparsity_requested": opt.sparsity, "sparsity": fraction(lm.model, units),
                   "pruned_weights": len(units), **_test_ppl(lm, pruned, suite, opt.seed)}
            log.info("compress %s: sparsity %.3f perplexity %.3f", method, row["sparsity"], row["perplexity"])
            rows.append(row)
            first = first if first is not None else pruned
        wanda = next((r["perplexity"] for r in rows if r["method"] == "wanda"), None)
        for row in rows:
            row["ratio_vs_wanda"] = row["perplexity"] / wanda if wanda else None
        results = header("compress", lm) | {
            "probe": {"name": suite.name, "description": suite.description},
            "settings": {"sparsity": opt.sparsity, "granularity": opt.granularity, "n_general": len(general),
                         "max_tokens": opt.max_tokens, "total_weights": count_units(lm.model, "weight"),
                         "scope": "every Linear weight inside the transformer blocks"},
            "baseline": baseline, "comparison": rows,
        }
        finish.write(staging, results, lambda res, st: render_task_report(res, st.path("report.html")))
        if save_to is not None:
            save_model_folder(lm, first, save_to, compress_card(results))
    return results


def compress_card(results: dict[str, Any]) -> str:
    row = results["comparison"][0]
    return (f"# Compressed {results['model']['name']}\n\nBase model: `{results['model']['spec']}`. safety_prune "
            f"`compress` zeroed {100 * row['sparsity']:.1f}% of the block weights "
            f"({results['settings']['granularity']}) "
            f"ranked by `{row['method']}` relevance on general text.\n\nHeld-out perplexity: "
            f"{results['baseline']['perplexity']:.3f} before, {row['perplexity']:.3f} after.\n")
