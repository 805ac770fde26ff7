"""``correct``: the audit's stages, then rank, select and prune a copy, and prove the effect on held-out data.

Selection may only read the reference prompts and the general *validation* text; every reported number comes
from the held-out ``eval`` prompts and the general *test* text. Each method is compared at the same k, on the
same prompts, with paired bootstrap intervals against the baseline and against random-k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..contrast import circuit_summary, save_relevance
from ..crossfit import check_folds, cross_fit
from ..errors import ConfigError, SaveRefused
from ..evaluation import paired_bootstrap_diff, perplexity
from ..evaluation.behaviour import Generations, evaluate
from ..evaluation.capability import CapabilitySet, capability_set, last_word_hits
from ..explain import heatmap
from ..interventions import REACHES, STRENGTHS, THRESHOLDS, Edit, gains_edit, proportional, random_like
from ..io import write_json
from ..methods import method_info
from ..models import LoadedModel
from ..pruning import MaskSet, count_units, fraction, intervention_info, save_masks, select
from ..render import model_card, render_report
from ..results import BehaviourResults, Release, Selection, circuit_info, flat_metrics, probe_info
from ..run import Staging, staged
from ..scorers import Scorer
from ..selection import (
    Constraints,
    SearchText,
    check_unit_counts,
    damage_screen,
    eligible_units,
    search_settings,
    stability,
    stable_selection,
    validation_search,
    validation_text,
)
from ..suite import ProbeSuite
from .common import Finish, check_save_target, header, limited, preflight_attribution, save_model_folder, start_run
from .options import SEARCH_K, CorrectOptions
from .stages import (
    Baseline,
    Ranked,
    build_references,
    contrast_info,
    explain_units,
    generation_cache,
    measure_baseline,
    rank,
    scorer_info,
    suite_scorer,
    suite_secondary,
    write_generations,
)


def correct(model: str, probe: str, out: str | Path, *, overwrite: bool = False,
            options: CorrectOptions | None = None, argv: Sequence[str] | None = None,
            fail_on: Sequence[str] = ()) -> dict[str, Any]:
    """The audit's stages, ranking, selection on validation data, pruning of a copy, held-out re-evaluation."""
    opt, started = options or CorrectOptions(), time.time()
    out, suite, lm = start_run("correct", model, probe, out, overwrite, opt)
    finish = Finish(opt.seed, argv, suite.data_files(), lm, started)
    save_to = check_save_target(opt.save_model, lm.folder, out)
    total = count_units(lm.model, opt.unit)
    check_unit_counts(lm.model, opt.unit, opt.exclude_layers, {
        "--k": [opt.k] if opt.k is not None else [], "--sweep": opt.sweep, "--search-k": opt.search_k,
        f"--sparsity {opt.sparsity} (as a count)": [max(1, round(opt.sparsity * total))] if opt.sparsity else []})
    if _searches(opt) and not suite.validation_prompts():
        raise ConfigError(f"Probe suite {suite.name!r} has no validation prompts (split.validation_fraction is 0), "
                          "so k (or the strength) cannot be chosen on held-out data. Give --k or --sparsity (one "
                          "--strength and one --threshold with --intervention proportional), or set "
                          "split.validation_fraction in the suite.")
    if opt.folds is not None and not _searches(opt):
        raise ConfigError(f"--folds {opt.folds} cross-fits the validation search, and this run searches nothing "
                          "(--k, --sparsity, one --strength and --threshold, or a method with its own gains): drop "
                          "--folds, or let the search run.")
    check_folds(opt.folds, len(limited(suite.validation_prompts(), opt.limit)))
    # built now: too few validation passages is an input error, found before any work
    val_capability = (capability_set(lm.tokenizer, suite.general_validation(), "general validation")
                      if suite.capability and _searches(opt) else None)
    kinds = (opt.unit,) if opt.unit == "weight" else ("neuron", "head")
    preflight_attribution(lm, suite, opt, kinds)
    torch.manual_seed(opt.seed)
    scorer, secondary = suite_scorer(suite), suite_secondary(suite)
    finish.lap("checks")
    with staged(out) as staging:
        cache = generation_cache(out, staging)
        base = measure_baseline(lm, suite, scorer, opt.limit, opt.seed, cache, secondary)
        finish.lap("baseline")
        refs = build_references(lm, suite, scorer, opt, cache, out, opt.pooling)
        c = refs.contrast
        finish.lap("references")
        methods = opt.methods()
        primary = methods[0]
        ranked = {}
        for m in ["random", *[m for m in methods if m != "random"]]:  # random first: the others pair against it
            ranked[m] = rank(c, m, opt.unit, kinds, suite.contrast.guard, opt.exclude_layers)
            finish.lap(f"ranking:{m}")
        probability = None
        if opt.stable is not None:
            ranked[primary], stable, probability = _stable(ranked[primary], lm, suite, opt)
        choice = _choose(lm, suite, scorer, ranked[primary], opt, val_capability)
        setting, selection, ranked[primary].scores = choice.setting, choice.selection, choice.scores
        if probability is not None:
            selection["stable"] = stable
        finish.lap("selection")
        rows, comparison, chosen = _compare_all(lm, suite, scorer, base, ranked, setting, primary, opt, secondary,
                                                lap=finish.lap)
        # a method with its own gains is not a relevance ranking: the bootstrap of R_diff would not describe it
        backs = ranked[primary].relevance if ranked[primary].gains is None else None
        selection["stability"] = stability(backs, chosen.units, opt.unit, suite.contrast.combine,
                                           suite.contrast.guard, opt.exclude_layers, opt.stability, opt.seed)
        finish.lap("stability")
        if probability is not None:
            selection["stable"]["chosen"] = [{"unit": str(u), "probability": float(probability[u.layer, u.index])}
                                             for u in list(chosen.units)[:200]]
        write_generations(staging, "samples.jsonl", (base.generations, "baseline"),
                          (chosen.generations, f"corrected:{primary}"))
        write_generations(staging, "reference_generations.jsonl", (refs.generations, "reference"))
        backing = next((ranked[m] for m in methods if ranked[m].relevance), None)
        rel = backing.relevance if backing else None
        diff = backing.scores if backing and opt.unit != "weight" else {}
        if rel:
            save_relevance(staging.path("relevance.safetensors"), rel, diff)
        save_masks(chosen.units, staging.path("masks.json"), staging.path("masks.safetensors"),
                   {"method": primary, "unit": opt.unit, "k": len(chosen.units), "seed": opt.seed,
                    **({"setting": chosen.edit.setting} if chosen.edit.setting else {})},
                   model=lm.model, scale=chosen.edit.scale)
        circuit = circuit_summary(diff, opt.top_k) if opt.unit != "weight" else {}
        write_json(staging.path("circuit.json"), circuit)
        removed = []
        if opt.unit == "neuron" and "neuron" in diff:
            removed = [{"layer": u.layer, "index": u.index, "r_diff": float(diff["neuron"][u.layer, u.index])}
                       for u in list(chosen.units)[:20]]
        corrected = {key: v for key, v in chosen.row.items() if key != "method"}
        results: BehaviourResults = {
            **header("correct", lm),
            "method": primary,
            "probe": probe_info(suite, len(base.prompts), len(refs.generations.prompts), limit=opt.limit),
            "scorer": scorer_info(scorer, suite, secondary),
            "baseline": flat_metrics(base.metrics),
            "corrected": corrected,
            "pruned": {"unit": opt.unit, "count": len(chosen.units), "fraction": fraction(lm.model, chosen.units),
                       "intervention": chosen.edit.info(), "units": [str(u) for u in chosen.units][:200]},
            "selection": selection,
            "contrast": contrast_info(suite, c, ranked[primary]),
            "comparison": comparison,
            "tradeoff": rows,
            "release": release_verdict(base.metrics, corrected, selection, choice.limits),
            "circuit": circuit_info(circuit, primary, len(c.sets.undesired), len(c.sets.general),
                                    {key: r.info for key, r in rel.items()}) if rel else {},
            "circuit_heatmap": heatmap(diff["neuron"]) if "neuron" in diff else [],
            "unit_examples": explain_units(lm, removed, {"undesired": c.sets.undesired, "general": c.sets.general},
                                           opt.batch_size),
        }
        def render(res: dict[str, Any], st: Staging) -> None:
            render_report(res, st.path("samples.jsonl"), st.path("report.html"))

        finish.lap("outputs")
        finish.conclude(results, fail_on)  # the card states the verdict and the run id: decided before the save
        release = results["release"]
        if save_to is not None and (release["allowed"] or opt.force):
            results["pruned"]["saved_model_sha256"] = save_model_folder(lm, chosen.model, save_to,
                                                                        model_card(results))
        finish.record(staging, results, render)
    if save_to is not None and not release["allowed"] and not opt.force:
        raise SaveRefused(f"--save-model {opt.save_model}: not written: {release['reason']} The report "
                          f"is in {out}. Pass --force to save it anyway.")
    return results


def release_verdict(base: dict[str, Any], corrected: dict[str, Any], selection: Selection | dict[str, Any],
                    limits: Constraints) -> Release:
    """Whether the corrected model may be handed out: it keeps the limits on held-out data, lowers the
    behaviour (the paired interval of the mean change lies below 0), and lowers it more than the same change
    on random units (the paired interval against the random control lies below 0 too: a correction that
    random units match is not a targeted one). ``limits``: the same ones the selection kept on validation data."""
    flat = {key: corrected[key] for key in ("perplexity", "distinct2", "continuation_perplexity")}
    reasons = limits.violations({key: base[key]["value"] for key in flat}, flat)
    for key, words in (("last_word_accuracy_drop", "last-word accuracy"), ("continuation_f1_drop",
                                                                           "continuation token-F1")):
        if key in corrected and corrected[key] > limits.capability_drop:
            reasons.append(f"{words} fell by {corrected[key]:.3f}, more than the limit {limits.capability_drop:g}")
    paired = corrected["paired_vs_baseline"]
    if paired["ci_high"] >= 0:
        reasons.append(f"the mean behaviour score did not fall for certain (paired change {paired['delta']:+.4f}, "
                       f"95% CI [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}])")
    vs_random = corrected.get("paired_vs_random")
    if vs_random is None:
        reasons.append("it has no random control at the same budget to be compared with")
    elif vs_random["ci_high"] >= 0:
        reasons.append(f"it did not lower the behaviour more than the same change on random units for certain "
                       f"(paired change against random {vs_random['delta']:+.4f}, 95% CI "
                       f"[{vs_random['ci_low']:+.4f}, {vs_random['ci_high']:+.4f}]), so it is not a targeted "
                       "correction")
    if selection.get("feasible") is False:
        reasons.append("no candidate kept the limits on validation data")
    return {"allowed": not reasons, "reasons": reasons,
            "reason": ("on held-out data: " + "; ".join(reasons) + ".") if reasons else "",
            "limits": limits.info()}


def limits_of(opt: CorrectOptions) -> Constraints:
    """What a correction may cost on validation and held-out data (``--ppl-budget`` and the other limits)."""
    return Constraints(opt.ppl_budget, opt.max_distinct2_drop, opt.max_continuation_ppl_rise,
                       opt.max_capability_drop)


def _searches(opt: CorrectOptions) -> bool:
    """Whether the setting is chosen on validation data (not given, and not fixed by the method)."""
    if opt.method != "all" and method_info(opt.method).own_gains:
        return False
    if opt.intervention == "proportional":
        return len(opt.strength or STRENGTHS) * len(opt.threshold or THRESHOLDS) * len(opt.reach or REACHES) > 1
    return opt.k is None and opt.sparsity is None


@dataclass
class Choice:
    """What the selection decided for the primary method: its ``setting`` (``{"k", "scale"}`` for top k,
    ``{"strength", "threshold", "reach"}`` for proportional gains, ``{}`` for a method with its own gains), the
    ``selection`` section of results.json, the ``scores`` it ranked (reordered by the optional damage screen), and
    the ``limits`` it kept, which the release check applies again on held-out data."""

    setting: dict[str, Any]
    selection: Selection
    scores: dict[str, torch.Tensor]
    limits: Constraints


def _choose(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, ranked: Ranked, opt: CorrectOptions,
            capability: CapabilitySet | None = None) -> Choice:
    """The primary method's setting: given, from a sparsity, or the search on validation prompts and validation
    text (after the optional damage screen). ``capability`` (the general validation passages): each generated
    candidate's last-word accuracy, kept within ``--max-capability-drop`` of the unpruned model's (continuation F1
    would cost a generation per candidate, so it is checked held out, by the release check)."""
    scores, limits = ranked.scores, limits_of(opt)
    selection: dict[str, Any] = {"unit": opt.unit, "exclude_layers": list(opt.exclude_layers),
                                 "guard": {"share": suite.contrast.guard, "by": "|relevance on general text|"}}
    scale = opt.dampen[0] if opt.dampen else None
    total = count_units(lm.model, opt.unit)
    if ranked.gains is not None:
        edit = _edit(ranked, {}, opt)
        selection |= {"rule": "fixed", "k": len(edit.units), "intervention": edit.info(),
                      "guard": {"share": 0.0, "by": "none: the method's own gains, as published"}}
        return Choice({}, Selection(**selection), scores, limits)
    grid = [{"strength": s, "threshold": t, "reach": r} for r in (opt.reach or REACHES)
            for t in (opt.threshold or THRESHOLDS) for s in (opt.strength or STRENGTHS)]
    if opt.intervention == "proportional" and not _searches(opt):
        edit = _edit(ranked, grid[0], opt)
        selection |= {"rule": "given", "k": len(edit.units), "intervention": edit.info()}
        return Choice(grid[0], Selection(**selection), scores, limits)
    if opt.k is not None:
        selection |= {"rule": "k", "k": opt.k, "intervention": intervention_info(scale)}
        return Choice({"k": opt.k, "scale": scale}, Selection(**selection), scores, limits)
    if opt.sparsity is not None:
        k = max(1, round(opt.sparsity * total))
        selection |= {"rule": "sparsity", "k": k, "intervention": intervention_info(scale)}
        return Choice({"k": k, "scale": scale}, Selection(**selection), scores, limits)
    text = SearchText(suite.general_validation(), suite.perplexity.max_length)
    if opt.screen and opt.unit != "weight":
        scores, selection["screen"] = damage_screen(lm, text, scores, opt.unit, n=opt.screen,
                                                    max_rise=opt.screen_max, n_tokens=opt.screen_tokens)
    prompts = limited(suite.validation_prompts(), opt.limit)
    val_text = [validation_text(lm, text, opt.search_tokens)]
    n_tokens = len(lm.tokenizer(val_text[0], add_special_tokens=False)["input_ids"])  # what perplexity scores

    measured: dict[str, Any] = {}  # the candidate whose validation perplexity was just checked, and its result

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        pruned = replace(lm, model=model)
        known = measured.pop("result") if measured.pop("model", None) is model else None
        metrics, res = evaluate(pruned, lm, suite, scorer, prompts, val_text, opt.seed, general_perplexity=known)
        out = {"behaviour_mean": metrics["behaviour_mean"]["value"],
               "behaviour_rate": metrics["behaviour_rate"]["value"],
               **{key: metrics[key]["value"] for key in ("perplexity", "distinct2", "continuation_perplexity")},
               "per_prompt": res.per_prompt_mean()}  # for cross-fitting; taken out of the trail below
        if capability is not None:
            hits = last_word_hits(model, lm.tokenizer, capability.passages, suite.generation.batch_size)
            out["last_word_accuracy"] = sum(hits) / len(hits)
        return out

    def perplexity_of(model: torch.nn.Module) -> float:
        p = suite.perplexity
        measured["model"], measured["result"] = model, perplexity(model, lm.tokenizer, val_text,
                                                                  max_length=p.max_length, stride=p.stride,
                                                                  device=model.device)
        return measured["result"].perplexity

    if opt.intervention == "proportional":
        ranked = replace(ranked, scores=scores)  # as screened
        edits = [(g, _edit(ranked, g, opt)) for g in grid]
        # the report's columns: k = units dampened, scale = the most dampened unit's gain
        candidates = [({"k": len(e.units), "scale": 1 - g["strength"], **g}, e) for g, e in edits]
        best, trail = search_settings(lm, measure, candidates, limits, perplexity_of, opt.select_by)
        keys = ("strength", "threshold", "reach")
        fallback = min(grid, key=lambda g: (g["strength"], -g["threshold"], -g["reach"]))
    else:
        ks = _search_ks(lm, opt)
        if ranked.candidates is not None:  # --stable: no k that would reach past the stable candidates
            ks = [k for k in ks if k <= ranked.candidates] or [min(ks)]
        found, trail = validation_search(lm, measure, scores, opt.unit, ks, [None, *opt.dampen], limits,
                                         perplexity_of, opt.select_by)
        best = None if found is None else {"k": found[0], "scale": found[1]}
        keys, fallback = ("k", "scale"), {"k": min(ks), "scale": None}
    per_prompt = {i: row.pop("per_prompt") for i, row in enumerate(trail) if "per_prompt" in row}
    objective = {"budget": "the strongest setting (largest sum of 1 - gain) within every limit; the behaviour scores "
                           "do not choose",
                 "cost": "the costliest setting (largest validation perplexity) within every limit; the behaviour "
                         "scores do not choose",
                 }.get(opt.select_by, "largest relative drop of the mean behaviour score on the validation prompts")
    if opt.folds:
        candidates_ok = {i: v for i, v in per_prompt.items() if i and not trail[i]["violations"]}
        pick, selection["cross_fit"] = cross_fit(trail, candidates_ok, per_prompt[0], opt.folds, opt.seed,
                                                 opt.select_by)
        best = None if pick is None else trail[pick]
        if opt.select_by == "effect":
            objective = (f"the simplest setting within one standard error of the largest mean drop of the behaviour "
                         f"score over {opt.folds} folds of the validation prompts")
    setting = {key: best[key] for key in keys} if best else fallback  # no feasible one: the mildest
    if opt.intervention == "proportional":
        edit = _edit(ranked, setting, opt)
        k, how = len(edit.units), edit.info()
    else:
        k, how = setting["k"], intervention_info(setting["scale"])
    feasible = best is not None
    selection |= {"rule": "validation", "k": k, "intervention": how, "feasible": feasible,
                  "search": trail, "split": {"prompts": "validation prompts", "n_prompts": len(prompts),
                                             "text": "general validation", "n_tokens": n_tokens},
                  "limits": limits.info(capability is not None),
                  "objective": objective}
    return Choice(setting, Selection(**selection), scores, limits)


@dataclass
class Corrected:
    """The primary method's edited copy at the chosen setting, with its held-out row and continuations."""

    edit: Edit
    row: dict[str, Any]
    model: torch.nn.Module
    generations: Generations

    @property
    def units(self) -> MaskSet:
        return self.edit.units


def _search_ks(lm: LoadedModel, opt: CorrectOptions) -> list[int]:
    """The k values the validation search tries: --search-k, or the unit's defaults up to half the eligible
    units."""
    eligible = eligible_units(lm.model, opt.unit, opt.exclude_layers)
    return list(opt.search_k) or [k for k in SEARCH_K[opt.unit] if k <= eligible // 2] or [1]


def _stable(r: Ranked, lm: LoadedModel, suite: ProbeSuite, opt: CorrectOptions
            ) -> tuple[Ranked, dict[str, Any], torch.Tensor]:
    """``--stable``: stability selection of the primary's candidates to the depth the correction can reach (the
    given or largest searched k; under proportional gains every unit with a negative score). Returns the
    ranking, its results.json summary and the per-unit selection probability."""
    if opt.intervention == "proportional":
        depth = int((r.scores[opt.unit] < 0).sum())
    elif opt.k is not None or opt.sparsity is not None:
        depth = opt.k or max(1, round(opt.sparsity * count_units(lm.model, opt.unit)))
    else:
        depth = max(_search_ks(lm, opt))
    scores, info = stable_selection(r.scores, r.relevance, opt.unit, suite.contrast.combine, suite.contrast.guard,
                                    opt.exclude_layers, resamples=opt.stability, seed=opt.seed, pi=opt.stable,
                                    depth=max(depth, 1))
    probability = info.pop("probability")
    return replace(r, scores=scores, candidates=info["candidates"]), info, probability


def _edit(r: Ranked, setting: dict[str, Any], opt: CorrectOptions) -> Edit:
    """A method's change at ``setting``: its own gains (AurA), proportional gains, or its top k."""
    if r.gains is not None:
        return gains_edit(opt.unit, r.gains[opt.unit], {"kind": "aura", "pooling": opt.pooling})
    if "strength" in setting:
        gains = proportional(r.scores, opt.unit, setting["strength"], setting["threshold"], setting["reach"])
        return gains_edit(opt.unit, gains, {"kind": "proportional", **{key: setting[key] for key in
                                                                      ("strength", "threshold", "reach")}})
    return Edit(select(r.scores, opt.unit, k=setting["k"]), setting["scale"])


def _compare_all(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, base: Baseline, ranked: dict[str, Ranked],
                 setting: dict[str, Any], primary: str, opt: CorrectOptions,
                 secondary: dict[str, Scorer] | None = None, lap: Callable[[str], None] = lambda stage: None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Corrected]:
    """Every method at the chosen setting (top k: also at each --sweep k; a method with its own gains once),
    measured on the held-out eval prompts and test text (and by each ``secondary`` scorer on the same
    continuations). Returns the rows along the k sweep (every row when there is none), the rows at the chosen
    setting (a method with its own gains among them), and the primary's.

    The random control gets the primary's change on randomly ranked units (top k: k random units; gains: the
    same gains); a row is paired against it when the budgets match (as many units, the same gains)."""
    baseline_scores = base.generations.per_prompt_mean()
    settings = [setting | {"k": kk} for kk in sorted({setting["k"], *opt.sweep})] if "k" in setting else [setting]
    at = settings.index(setting)
    controls = [random_like(_edit(ranked[primary], st, opt), ranked["random"].scores, opt.unit) for st in settings]
    control_scores: dict[int, list[float]] = {}
    rows: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []
    chosen: Corrected | None = None
    for method, r in ranked.items():  # random first
        for i, st in enumerate(settings):
            if r.gains is not None and i:  # its own gains: one row
                continue
            edit = controls[i] if method == "random" else _edit(r, st, opt)
            model = edit.apply(lm.model)
            pruned = replace(lm, model=model)
            metrics, res = evaluate(pruned, lm, suite, scorer, base.prompts, base.test_text, opt.seed,
                                    secondary=secondary, capability=base.capability)
            scores = res.per_prompt_mean()
            row = {"method": method, "k": len(edit.units), "intervention": edit.info(),
                   **{key: v for key, v in flat_metrics(metrics).items() if key != "details"},
                   "paired_vs_baseline": paired_bootstrap_diff(baseline_scores, scores, seed=opt.seed)}
            if method == "random":
                control_scores[i] = scores
            elif edit.matches(controls[i]):
                row["paired_vs_random"] = paired_bootstrap_diff(control_scores[i], scores, seed=opt.seed)
            row["fraction"] = fraction(lm.model, edit.units)
            if r.gains is None or len(settings) == 1:  # the sweep is over k, which a method's own gains lack
                rows.append(row)
            if i == at or r.gains is not None:
                comparison.append(row)
            if method == primary and i == at:
                chosen = Corrected(edit, row, model, res)
        lap(f"held-out:{method}")
    assert chosen is not None  # the primary method is always compared at its setting
    return rows, comparison, chosen
