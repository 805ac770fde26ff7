"""``correct``: attribute, select the circuit, prune a copy, and prove the effect on held-out data.

Selection may only read the reference prompts and the general *validation* text;
every reported number comes from the held-out ``eval`` prompts and the general
*test* text. Each method is compared at the same k, on the same prompts, with
paired bootstrap intervals against the baseline and against random-k.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attribution import METHODS, Relevance, attribute, aura_auroc, differential
from .distributed import is_main_process
from .errors import ConfigError, OutputError
from .evaluation import paired_bootstrap_diff, perplexity
from .explain import heatmap
from .io import atomic_dir, write_json
from .models import LoadedModel
from .pipeline import (
    AuditOptions,
    GenerationCache,
    Generations,
    circuit_results,
    circuit_summary,
    evaluate,
    explain_units,
    flat_metrics,
    generate_and_score,
    model_info,
    preflight_attribution,
    reference_sets,
    relevance_pair,
    sample_rows,
    save_relevance,
    scorer_info,
    start_run,
)
from .pruning import MaskSet, count_units, fraction, masked, pruned_copy, save_masks, select
from .report import evaluate_gate, render_report
from .run import SCHEMA_VERSION, Staging, manifest, staged
from .scorers import get_scorer
from .suite import ProbeSuite

log = logging.getLogger(__name__)

COMPARED = ("lrp", "gradient", "wanda", "activation", "aura", "random")
METHOD_CHOICES = (*METHODS, "aura")  # aura: AurA's per-neuron AUROC, from the activation pass
UNIT_KINDS = ("neuron", "head", "weight")


@dataclass
class CorrectOptions(AuditOptions):
    method: str = "lrp"  # a METHODS entry or "all"
    unit: str = "neuron"
    k: int | None = None
    sparsity: float | None = None
    ppl_budget: float | None = 0.02
    sweep: list[int] = field(default_factory=list)
    save_model: str | None = None
    search_tokens: int = 4096  # validation tokens per perplexity-budget probe
    max_search_k: int = 1024
    screen: int = 0  # damage screen: test this many top candidates one by one (0: off)
    screen_max: float = 0.005  # ... and drop those whose own ablation raises validation perplexity more
    screen_tokens: int = 1024
    exclude_layers: list[int] = field(default_factory=list)  # never prune units of these layers

    def validate(self) -> None:
        if self.method != "all" and self.method not in METHOD_CHOICES:
            raise ConfigError(f"--method {self.method} is unknown. Choose one of: all, {', '.join(METHOD_CHOICES)}.")
        if self.method == "aura" and self.unit != "neuron":
            raise ConfigError("--method aura ranks MLP neurons only; use --unit neuron.")
        if self.unit not in UNIT_KINDS:
            raise ConfigError(f"--unit {self.unit} is unknown. Choose one of: {', '.join(UNIT_KINDS)}.")
        if self.k is not None and self.sparsity is not None:
            raise ConfigError("Give either --k or --sparsity, not both.")
        if self.k is not None and self.k <= 0:
            raise ConfigError(f"--k must be a positive number of units, got {self.k}.")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ConfigError(f"--sparsity must lie strictly between 0 and 1, got {self.sparsity}.")
        if self.k is None and self.sparsity is None and (self.ppl_budget is None or self.ppl_budget <= 0):
            raise ConfigError("Give --k, --sparsity, or a positive --ppl-budget (relative perplexity rise).")
        if any(k <= 0 for k in self.sweep):
            raise ConfigError(f"--sweep values must be positive unit counts, got {self.sweep}.")


def check_save_target(target: str | None, lm_folder: Path | None) -> Path | None:
    """Refuse a save path inside the input model's folder or a non-empty folder; writes nothing."""
    if target is None:
        return None
    path = Path(target).expanduser().resolve()
    if lm_folder is not None:
        src = lm_folder.resolve()
        if path == src or src in path.parents:
            raise OutputError(f"--save-model {target} lies inside the input model folder {lm_folder}. The "
                              "input model is never modified: choose a folder outside it.")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"--save-model {target} exists and is not an empty folder. Choose a new folder.")
    return path


def _validation_ppl(lm: LoadedModel, model: torch.nn.Module, texts: list[str], suite: ProbeSuite,
                    n_tokens: int) -> float:
    ids = lm.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:n_tokens]
    text = lm.tokenizer.decode(ids)
    p = suite.perplexity
    return perplexity(model, lm.tokenizer, [text], max_length=p.max_length, stride=p.max_length,
                      device=model.device).perplexity


def budget_search(lm: LoadedModel, suite: ProbeSuite, scores: dict[str, torch.Tensor], kind: str,
                  budget: float, opt: CorrectOptions) -> tuple[int, list[dict[str, float]]]:
    """Largest k on a geometric grid whose *validation* perplexity rise stays within ``budget``.

    Reads only ``suite.general_validation()``; the test split is never touched here.
    """
    texts = suite.general_validation()
    base = _validation_ppl(lm, lm.model, texts, suite, opt.search_tokens)
    total = count_units(lm.model, kind)
    trail: list[dict[str, float]] = [{"k": 0, "validation_perplexity": base, "rise": 0.0}]
    best, k = 0, 1
    while k <= min(opt.max_search_k, total):  # geometric grid with ratio ~1.5: 1, 2, 3, 5, 8, 12, 18, ...
        units = select(scores, kind, k=k)
        pruned = pruned_copy(lm.model, units)
        ppl = _validation_ppl(lm, pruned, texts, suite, opt.search_tokens)
        del pruned
        rise = ppl / base - 1
        trail.append({"k": k, "validation_perplexity": ppl, "rise": rise})
        log.info("budget search: k=%d validation ppl %.3f (%+.2f%%)", k, ppl, 100 * rise)
        if rise > budget:
            break
        best, k = k, max(k + 1, round(k * 1.5))
    if best == 0:
        raise ConfigError(f"Even k=1 raises validation perplexity by {100 * trail[-1]['rise']:.1f}%, above "
                          f"--ppl-budget {budget}. Raise the budget or give --k explicitly.")
    return best, trail


def damage_screen(lm: LoadedModel, suite: ProbeSuite, scores: dict[str, torch.Tensor], kind: str,
                  opt: CorrectOptions) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Move candidates whose ablation *alone* costs more than ``screen_max`` validation perplexity to the back.

    The top ``screen`` units by R_diff are ablated one at a time (in place, restored bit-identically) on the
    first ``screen_tokens`` tokens of the validation split; general-purpose units (token detectors, output
    neurons) that LRP ranks high because they matter for everything are skipped this way. Reads only the
    validation split.
    """
    texts = suite.general_validation()
    base = _validation_ppl(lm, lm.model, texts, suite, opt.screen_tokens)
    screened = {k: v.clone() for k, v in scores.items()}
    worst = float(scores[kind].max()) + 1.0
    log_rows = []
    for unit in select(scores, kind, k=min(opt.screen, count_units(lm.model, kind))):
        with masked(lm.model, [unit]):
            rise = _validation_ppl(lm, lm.model, texts, suite, opt.screen_tokens) / base - 1
        dropped = rise > opt.screen_max
        if dropped:
            screened[kind][unit.layer, unit.index] = worst
        log_rows.append({"unit": str(unit), "rise": rise, "dropped": dropped})
    log.info("damage screen: dropped %d of %d candidates", sum(r["dropped"] for r in log_rows), len(log_rows))
    return screened, log_rows


def _per_prompt_toxicity(res: Generations) -> list[float]:
    return [float(np.mean(row)) for row in res.scores]


def _compare(lm: LoadedModel, suite: ProbeSuite, scorer, prompts: list[str], test_text: list[str],
             method: str, units: MaskSet, baseline_tox: list[float], seed: int
             ) -> tuple[dict[str, Any], Generations, list[float], torch.nn.Module]:
    pruned_model = pruned_copy(lm.model, units)
    pruned = LoadedModel(pruned_model, lm.tokenizer, lm.arch, lm.spec, lm.name, lm.folder, lm.weights_sha256)
    metrics, res = evaluate(pruned, lm, suite, scorer, prompts, test_text, seed)
    tox = _per_prompt_toxicity(res)
    row = {"method": method, "k": len(units), **{k: v for k, v in flat_metrics(metrics).items() if k != "details"},
           "paired_vs_baseline": paired_bootstrap_diff(baseline_tox, tox, seed=seed)}
    return row, res, tox, pruned_model


@dataclass
class _Run:
    lm: LoadedModel
    suite: ProbeSuite
    opt: CorrectOptions
    staging: Staging
    results: dict[str, Any] = field(default_factory=dict)


def correct(model: str, probe: str, out: str | Path, *, overwrite: bool = False,
            options: CorrectOptions | None = None, argv: list[str] | None = None,
            fail_on: Sequence[str] = ()) -> dict[str, Any]:
    """Baseline audit, attribution, selection, pruning of a copy, and held-out re-evaluation."""
    (options := options or CorrectOptions()).validate()
    started = time.time()
    out, opt, suite, lm = start_run(model, probe, out, overwrite, options)
    save_to = check_save_target(opt.save_model, lm.folder)
    if opt.k is not None and opt.k > count_units(lm.model, opt.unit):
        raise ConfigError(f"--k {opt.k} exceeds the {count_units(lm.model, opt.unit)} {opt.unit} units of "
                          "this model. Choose a smaller k.")
    preflight_attribution(lm, suite, opt, (opt.unit,) if opt.unit == "weight" else ("neuron", "head"))
    torch.manual_seed(opt.seed)
    with staged(out) as staging:
        results, corrected_model = _correct(lm, suite, opt, staging)
        results["manifest"] = manifest(seed=opt.seed, argv=argv, data_files=suite.data_files(),
                                       model_files=lm.weights_sha256, started=started)
        results["gate"] = evaluate_gate(results, fail_on)
        write_json(staging.path("results.json"), results)
        render_report(results, staging.path("samples.jsonl"), staging.path("report.html"))
        if save_to is not None and is_main_process():
            save_model_folder(lm, corrected_model, save_to, model_card(results))
    return results


def _correct(lm: LoadedModel, suite: ProbeSuite, opt: CorrectOptions, staging: Staging):
    from .io import write_jsonl

    scorer = get_scorer(suite.scorer.name, **suite.scorer.options)
    eval_prompts = suite.eval_prompts()[: opt.limit] if opt.limit else suite.eval_prompts()
    test_text = suite.general_test()
    cache = GenerationCache(opt.run_dir, staging.dir)  # the unpruned model's continuations only
    baseline, base_res = evaluate(lm, lm, suite, scorer, eval_prompts, test_text, opt.seed, cache)
    baseline_tox = _per_prompt_toxicity(base_res)
    ref = generate_and_score(lm, suite, scorer, suite.undesired_reference()[: opt.limit] if opt.limit
                             else suite.undesired_reference(), opt.seed, "reference", cache)
    general, undesired = reference_sets(lm, suite, ref, opt)
    methods = [m for m in COMPARED if m != "aura" or opt.unit == "neuron"] if opt.method == "all" else [opt.method]
    primary = methods[0]
    kinds = (opt.unit,) if opt.unit == "weight" else ("neuron", "head")
    rels: dict[str, dict[str, Relevance]] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for method in ["random", *[m for m in methods if m != "random"]]:
        if method == "random":  # ranks units by seeded noise; nothing to contrast
            scores[method] = attribute(lm.model, general, method="random", units=kinds, seed=opt.seed).scores
        elif method == "aura":  # most toxic-selective neurons (AUROC near 1) first
            act = rels.get("activation") or relevance_pair(lm, general, undesired, opt, method="activation",
                                                           units=("neuron",))
            scores[method] = {"neuron": 0.5 - aura_auroc(act["general"], act["undesired"])}
        else:
            rels[method] = relevance_pair(lm, general, undesired, opt, method=method, units=kinds)
            scores[method] = differential(rels[method]["general"], rels[method]["undesired"])
    if opt.exclude_layers:
        if opt.unit == "weight":
            raise ConfigError("--exclude-layers applies to neuron and head units.")
        n_layers = scores[primary][opt.unit].shape[0]
        if any(not 0 <= layer < n_layers for layer in opt.exclude_layers):
            raise ConfigError(f"--exclude-layers {opt.exclude_layers}: this model has layers 0..{n_layers - 1}.")
        for method, sc in scores.items():  # ranked after every other unit, for every method alike
            sc = scores[method] = {k: v.clone() for k, v in sc.items()}
            sc[opt.unit][opt.exclude_layers] = float(sc[opt.unit].max()) + 1.0
    selection: dict[str, Any] = {"unit": opt.unit, "exclude_layers": opt.exclude_layers}
    if opt.k is not None:
        k, selection["rule"] = opt.k, "k"
    elif opt.sparsity is not None:
        k, selection["rule"] = max(1, round(opt.sparsity * count_units(lm.model, opt.unit))), "sparsity"
    else:
        if opt.screen and opt.unit != "weight":
            scores[primary], selection["screen"] = damage_screen(lm, suite, scores[primary], opt.unit, opt)
        k, trail = budget_search(lm, suite, scores[primary], opt.unit, opt.ppl_budget, opt)
        selection |= {"rule": "ppl_budget", "budget": opt.ppl_budget, "search": trail,
                      "search_split": "general_validation", "search_tokens": opt.search_tokens}
    selection["k"] = k
    rows, random_tox, samples = [], {}, list(sample_rows(base_res, "baseline"))
    primary_state: dict[str, Any] = {}
    for method in scores:  # random first: every other method is paired against it
        for kk in sorted({k, *opt.sweep}):
            units = select(scores[method], opt.unit, k=kk)
            row, res, tox, pruned = _compare(lm, suite, scorer, eval_prompts, test_text, method, units,
                                             baseline_tox, opt.seed)
            if method == "random":
                random_tox[kk] = tox
            else:
                row["paired_vs_random"] = paired_bootstrap_diff(random_tox[kk], tox, seed=opt.seed)
            row["fraction"] = fraction(lm.model, units)
            rows.append(row)
            if method == primary and kk == k:
                primary_state = {"row": row, "units": units, "model": pruned}
                samples += sample_rows(res, f"corrected:{method}")
    write_jsonl(staging.path("samples.jsonl"), samples)
    write_jsonl(staging.path("reference_generations.jsonl"), sample_rows(ref, "reference"))
    main_rel = rels.get(primary) or next(iter(rels.values()), None)
    diff = differential(main_rel["general"], main_rel["undesired"]) if main_rel else {}
    if main_rel:
        save_relevance(staging, main_rel, diff)
    units = primary_state["units"]
    save_masks(units, staging.path("masks.json"), staging.path("masks.safetensors"),
               {"method": primary, "unit": opt.unit, "k": k, "seed": opt.seed}, model=lm.model)
    circuit = circuit_summary(diff, opt.top_k) if opt.unit != "weight" else {}
    write_json(staging.path("circuit.json"), circuit)
    row = primary_state["row"]
    removed = []
    if opt.unit == "neuron" and "neuron" in diff:
        removed = [{"layer": u.layer, "index": u.index, "r_diff": float(diff["neuron"][u.layer, u.index])}
                   for u in list(units)[:20]]
    results = {
        "schema_version": SCHEMA_VERSION,
        "job": "correct",
        "method": primary,
        "model": model_info(lm),
        "probe": {"name": suite.name, "description": suite.description, "n_eval_prompts": len(eval_prompts),
                  "n_reference_prompts": len(ref.prompts), "generation": asdict(suite.generation),
                  "thresholds": asdict(suite.thresholds), "chat_template": suite.chat_template},
        "scorer": scorer_info(scorer, suite),
        "baseline": flat_metrics(baseline),
        "corrected": {k: v for k, v in row.items() if k not in ("method",)},
        "pruned": {"unit": opt.unit, "count": len(units), "fraction": fraction(lm.model, units),
                   "units": [str(u) for u in units][:200]},
        "selection": selection,
        "comparison": rows,
        "circuit": circuit_results(circuit, main_rel, primary, len(undesired), len(general)) if main_rel else {},
        "circuit_heatmap": heatmap(diff["neuron"]) if "neuron" in diff else [],
        "unit_examples": explain_units(lm, removed, undesired, general, opt),
    }
    return results, primary_state["model"]


def save_model_folder(lm: LoadedModel, model: torch.nn.Module, target: Path, card: str) -> None:
    """A plain transformers folder (safetensors, tokenizer, model card), written atomically."""
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        _test_pause_in_save()
        lm.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")


def _test_pause_in_save() -> None:
    """Test-only hook: SAFETY_PRUNE_TEST_PAUSE_IN_SAVE=SECONDS stalls a save after its first file, so
    tests/test_reliability.py can SIGKILL the process there and check that the target stays whole or absent."""
    pause = os.environ.get("SAFETY_PRUNE_TEST_PAUSE_IN_SAVE")
    if pause:
        time.sleep(float(pause))


def model_card(results: dict[str, Any]) -> str:
    b, c, p = results["baseline"], results["corrected"], results["pruned"]

    def cell(d: dict, key: str) -> str:
        lo, hi = d[f"{key}_ci"]
        return f"{d[key]:.4g} [{lo:.4g}, {hi:.4g}]"

    rows = "\n".join(f"| {key} | {cell(b, key)} | {cell(c, key)} |"
                     for key in ("toxicity_rate", "toxicity_mean", "perplexity", "distinct2",
                                 "continuation_perplexity"))
    return (f"# Corrected {results['model']['name']}\n\n"
            f"Base model: `{results['model']['spec']}` ({results['model']['name']}).\n\n"
            f"Produced by safety_prune `correct` (probe suite `{results['probe']['name']}`): "
            f"{p['count']} {p['unit']} units ({100 * p['fraction']:.3f}%) with the most negative differential "
            f"relevance (method `{results['method']}`, R_diff = R_general - R_undesired) were set to zero. "
            f"Selection rule: {results['selection']['rule']}.\n\n"
            f"Held-out measurements (95% bootstrap CI), scorer `{results['scorer']['name']}`:\n\n"
            f"| metric | before | after |\n|---|---|---|\n{rows}\n\n"
            f"Scorer limits: {results['scorer']['limits']}\n")
