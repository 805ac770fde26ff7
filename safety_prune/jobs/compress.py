"""``compress``: prune a share of the weights by their relevance on general text (the paper's Sec. 4.1).

Every method ranks single weights of the transformer blocks on the same general reference samples; the
lowest-ranked ``sparsity`` share is zeroed (row-wise, as in Wanda, or globally) and perplexity is measured on
the held-out general test split. LRP ranks by mean |R| per weight: with epsilon-style rules relevance can be
negative, and a weight whose relevance is large of either sign matters.

Options that decide LRP's (and gradient x input's) ranking, so that they can be measured side by side:

- ``--calibration``/``--window``/``--n-windows``: calibrate on fixed windows cut from the general documents joined
  end to end (default 32 x 512 tokens; the paper: 128 x 2048) or on one short sample per document; windows give
  more context per explained token and a calibration size set directly. Every data-driven method (Wanda too)
  gets the very same samples.
- ``--target``: what is explained: the actual next token's logit (default), the model's own top token's logit
  (what the model does, not what the text says), or the actual token's log-probability (the loss the pruned
  model is measured on).
- ``--aggregation``: how a weight's per-token relevance ``R_t = W * g_t x_t^T`` becomes one score: |per-sample
  sum| (default; opposite-signed tokens cancel inside a sample), |overall sum| (signed), or per token as Wanda
  does for activations, sum |R_t| (token_l1) or sqrt(sum R_t^2) (token_l2, default), where nothing cancels.
- ``--variant``: AttnLRP's attention rules or CP-LRP's (q and k detached, so q/k weights get no relevance).

``results.json`` records the calibration (window, number of samples, tokens, a digest of the samples) and
each method's calibration time, so that LRP's cost against Wanda's can be read off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..attribution import Sample, attribute, require_samples, samples_from_texts
from ..calibration import DEFAULT_N_WINDOWS, calibration_windows, window_for
from ..checkpoint import data_digest
from ..evaluation import perplexity
from ..evaluation.capability import CapabilitySet, capability_metrics, capability_set
from ..models import LoadedModel
from ..preflight import check_attribution_memory
from ..pruning import count_units, fraction, pruned_copy, select
from ..render import render_task_report
from ..results import CompressResults, flat_metrics
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

def weight_scores(lm: LoadedModel, method: str, general: list[Sample], batch_size: int, seed: int, *,
                  target: str, aggregation: str, variant: str,
                  gradient_checkpointing: bool = False) -> dict[str, torch.Tensor]:
    """Per-weight importance (higher = keep): LRP and gradient x input relevance reduced by ``aggregation``
    (always non-negative: large relevance of either sign matters), the method's own score else."""
    backward = method in ("lrp", "gradient")
    per_token = aggregation in ("token_l1", "token_l2")
    rel = attribute(lm.model, general, method=method, units=("weight",), batch_size=batch_size,
                    absolute=backward and aggregation == "sample_abs", variant=variant, explain=target,
                    aggregation=aggregation if backward and per_token else "sample",
                    gradient_checkpointing=gradient_checkpointing, pad_token_id=lm.tokenizer.pad_token_id or 0,
                    seed=seed, desc=f"{method} weights")
    if backward and aggregation == "signed":
        return {key: score.abs_() for key, score in rel.scores.items()}
    return rel.scores


def calibration_samples(lm: LoadedModel, suite: ProbeSuite, opt: CompressOptions) -> list[Sample]:
    """The samples every data-driven method calibrates on: windows (``--window`` tokens, ``--n-windows`` of them,
    exactly when asked for, else up to the default as the text allows), or one sample per general reference
    document."""
    if opt.calibration == "documents":
        general_n = limited_count(suite.reference.general_n, opt.limit)
        return require_samples(samples_from_texts(lm.tokenizer, suite.general_reference(),
                                                  max_tokens=opt.max_tokens), general_n, "The general reference set")
    n = limited_count(opt.n_windows or DEFAULT_N_WINDOWS, opt.limit)
    return calibration_windows(lm.tokenizer, suite.general_calibration(), window_for(lm.model, opt.window, lm.spec),
                               n, up_to=opt.n_windows is None)


def preflight_calibration(lm: LoadedModel, suite: ProbeSuite, opt: CompressOptions) -> None:
    """Before any attribution: a window fits the model's positions, and one batch of windows fits in memory."""
    if opt.calibration == "documents":
        preflight_attribution(lm, suite, opt, ("weight",))
        return
    check_attribution_memory(lm.model, opt.batch_size, window_for(lm.model, opt.window, lm.spec), ("weight",),
                             opt.max_memory, gradient_checkpointing=opt.gradient_checkpointing)


def heldout_perplexity(lm: LoadedModel, model: torch.nn.Module, suite: ProbeSuite, seed: int) -> dict[str, Any]:
    p = suite.perplexity
    res = perplexity(model, lm.tokenizer, suite.general_test(), max_length=p.max_length, stride=p.stride,
                     device=model.device)
    lo, hi = res.ci(seed)
    return {"perplexity": res.perplexity, "perplexity_ci": [lo, hi], "n_tokens": res.n_tokens}


def heldout_capability(lm: LoadedModel, model: torch.nn.Module, items: CapabilitySet | None, seed: int
                       ) -> dict[str, Any]:
    """Last-word accuracy, continuation F1 and their paired drops from the unpruned model, flat with ``_ci``
    (``{}`` when the suite sets ``capability: false``)."""
    if items is None:
        return {}
    flat = flat_metrics(capability_metrics(model, lm.model, lm.tokenizer, items, seed))
    return {key: value for key, value in flat.items() if key not in ("secondary", "details")}


def compress(model: str, probe: str, out: str | Path, *, overwrite: bool = False,
             options: CompressOptions | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prune ``sparsity`` of the block weights by each method's ranking; perplexity side by side."""
    opt, started = options or CompressOptions(), time.time()
    out, suite, lm = start_run("compress", model, probe, out, overwrite, opt)
    finish = Finish(opt.seed, argv, suite.data_files(), lm, started)
    preflight_calibration(lm, suite, opt)
    capability = capability_set(lm.tokenizer, suite.general_test(), "general test") if suite.capability else None
    save_to = check_save_target(opt.save_model, lm.folder, out)
    general = calibration_samples(lm, suite, opt)
    finish.lap("checks")
    with staged(out) as staging:
        baseline = heldout_perplexity(lm, lm.model, suite, opt.seed) | heldout_capability(lm, lm.model, capability,
                                                                                           opt.seed)
        finish.lap("baseline")
        rows, first = [], None
        for method in opt.methods:
            clock = time.perf_counter()
            scores = weight_scores(lm, method, general, opt.batch_size, opt.seed, target=opt.target,
                                   aggregation=opt.aggregation, variant=opt.variant,
                                   gradient_checkpointing=opt.gradient_checkpointing)
            seconds = time.perf_counter() - clock
            units = select(scores, "weight", sparsity=opt.sparsity, scope=opt.granularity, largest=False)
            del scores  # weight-sized: freed before the pruned copy is made
            pruned = pruned_copy(lm.model, units)
            row = {"method": method, "sparsity_requested": opt.sparsity, "sparsity": fraction(lm.model, units),
                   "pruned_weights": len(units), "calibration_seconds": seconds,
                   **heldout_perplexity(lm, pruned, suite, opt.seed),
                   **heldout_capability(lm, pruned, capability, opt.seed)}
            log.info("compress %s: sparsity %.3f perplexity %.3f, calibration %.1f s", method, row["sparsity"],
                     row["perplexity"], seconds)
            rows.append(row)
            first = first if first is not None else pruned
            finish.lap(f"method:{method}")
        wanda = next((r for r in rows if r["method"] == "wanda"), None)
        for row in rows:
            row["ratio_vs_wanda"] = row["perplexity"] / wanda["perplexity"] if wanda else None
            row["time_vs_wanda"] = (row["calibration_seconds"] / wanda["calibration_seconds"]
                                    if wanda and wanda["calibration_seconds"] > 0 else None)
        results: CompressResults = {
            **header("compress", lm),
            "probe": {"name": suite.name, "description": suite.description},
            "settings": {"sparsity": opt.sparsity, "granularity": opt.granularity, "n_general": len(general),
                         **calibration_settings(general, opt),
                         "calibration_tokens": sum(len(s.input_ids) for s in general),
                         "calibration_digest": data_digest(general), "target": opt.target,
                         "aggregation": opt.aggregation, "variant": opt.variant,
                         "total_weights": count_units(lm.model, "weight"),
                         "scope": "every Linear weight inside the transformer blocks"},
            "baseline": baseline, "comparison": rows,
        }
        finish.write(staging, results, lambda res, st: render_task_report(res, st.path("report.html")))
        if save_to is not None:
            save_model_folder(lm, first, save_to, compress_card(results))
    return results


def calibration_settings(general: list[Sample], opt: CompressOptions) -> dict[str, Any]:
    """What was calibrated on, for results.json: the window and count actually used (defaults resolved)."""
    if opt.calibration == "documents":
        return {"calibration": "documents", "max_tokens": opt.max_tokens, "window": None, "n_windows": None}
    return {"calibration": "windows of joined documents", "max_tokens": None, "window": len(general[0].input_ids),
            "n_windows": len(general)}


def compress_card(results: dict[str, Any]) -> str:
    row = results["comparison"][0]
    return (f"# Compressed {results['model']['name']}\n\nBase model: `{results['model']['spec']}`. safety_prune "
            f"`compress` zeroed {100 * row['sparsity']:.1f}% of the block weights "
            f"({results['settings']['granularity']}) "
            f"ranked by `{row['method']}` relevance on general text.\n\nHeld-out perplexity: "
            f"{results['baseline']['perplexity']:.3f} before, {row['perplexity']:.3f} after.\n")
