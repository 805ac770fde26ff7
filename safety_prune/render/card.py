"""The model card (README.md) of a corrected copy saved with ``--save-model``.

It states the run the way the report does (the same run id, counts behind the rates, p-value wording, check states
and reduced-run note, from ``facts``), so the card and the page never disagree.
"""

from __future__ import annotations

from typing import Any

from ..gate import check_state, overall
from .facts import STATE_WORDS, as_count, pvalue, rate_totals, reduced_limit, run_id_of
from .words import model_words_of


def _how(method: str, pruned: dict[str, Any]) -> str:
    """Which units the model card says were changed, and how."""
    how = pruned.get("intervention") or {}
    kind = how.get("kind")
    if kind == "aura":
        return (f"with AUROC > 0.5 (AurA: each neuron's {how.get('pooling')}-pooled activation, flagged vs unflagged "
                f"reference continuations) were dampened by the gain 1 - 2 (AUROC - 0.5), down to "
                f"{how.get('min_gain', 0):.3g}")
    units = (f"with the most negative differential relevance (method `{method}`, R_diff = R_general - "
             "R_undesired) were ")
    if kind == "proportional":
        return (units + f"dampened by per-unit gains 1 - {how.get('strength')} * min(1, score / top score / "
                f"{how.get('reach', 1)}), down to {how.get('min_gain', 0):.3g} (threshold {how.get('threshold')})")
    if kind == "dampen":
        return units + f"dampened to {how.get('scale')} of their output"
    return units + "set to zero"


def model_card(results: dict[str, Any]) -> str:
    """The saved copy's README.md (``correct --save-model``): what was done to the model, the release verdict
    (allowed, or refused and saved only with --force), the deployment gate, and the held-out numbers with their
    counts and intervals."""
    b, c, p = results["baseline"], results["corrected"], results["pruned"]
    totals = rate_totals(results)
    gate = results.get("gate") if isinstance(results.get("gate"), dict) else {}
    checks = [{**ch, "state": check_state(ch)} for ch in gate.get("checks") or []
              if isinstance(ch, dict) and "failed" in ch]
    state = overall([ch["state"] for ch in checks])
    limit = reduced_limit(results)
    release = results.get("release") if isinstance(results.get("release"), dict) else {}
    allowed = release.get("allowed")
    verdict = {True: "release check passed", False: "release check REFUSED, saved only because --force was given"
               }.get(allowed, "release check not recorded")

    def cell(d: dict, key: str) -> str:
        lo, hi = d[f"{key}_ci"]
        n = as_count(d[key], totals.get(key)) if key in totals else ""
        return f"{d[key]:.4g}{f' ({n})' if n else ''} [{lo:.4g}, {hi:.4g}]"

    rows = "\n".join(f"| {key} | {cell(b, key)} | {cell(c, key)} |"
                     for key in ("behaviour_rate", "behaviour_mean", "perplexity", "distinct2",
                                 "continuation_perplexity"))
    if allowed is True:
        release_text = ("**Release check: passed.** On the held-out data the copy stayed within the limits "
                        + ", ".join(f"{k} {v:g}" for k, v in (release.get("limits") or {}).items())
                        + " and lowered the mean behaviour score (paired 95% interval below 0).")
    elif allowed is False:
        release_text = ("**Release check: REFUSED.** This copy was written only because `--force` was given. "
                        "Reasons (on held-out data):\n\n" + "\n".join(f"- {r}" for r in release.get("reasons") or []))
    else:
        release_text = "**Release check: not recorded** in this run's results."
    if checks:
        gate_text = (f"**Deployment gate ({gate.get('source')}, on the {gate.get('target')} metrics): "
                     f"{STATE_WORDS[state]}.**\n\n" + "\n".join(
                         f"- `{ch['expr']}`: {ch['value']:.4g}"
                         + (f" (95% CI [{ch['ci'][0]:.4g}, {ch['ci'][1]:.4g}])" if ch.get("ci") else "")
                         + f": {STATE_WORDS[ch['state']]}" for ch in checks))
        if state == "unsettled":
            gate_text += ("\n\nNOT SETTLED: a 95% interval contains its threshold, so these prompts cannot tell "
                          "whether the copy meets it; measure more prompts before relying on it.")
    else:
        gate_text = "**Deployment gate: no threshold was set**, so nothing was checked against one."
    paired = c.get("paired_vs_baseline") if isinstance(c.get("paired_vs_baseline"), dict) else None
    paired_text = (f"Paired change of the mean behaviour score per prompt (pruned − original): "
                   f"{paired['delta']:+.4g}, 95% CI [{paired['ci_low']:+.4g}, {paired['ci_high']:+.4g}], "
                   f"{pvalue(paired)}.\n\n") if paired else ""
    reduced = (f"**Reduced run (--limit {limit['n']}): not a full measurement.** The numbers below come from "
               "the first prompts of each set only.\n\n") if limit else ""
    sums = p.get("saved_model_sha256")
    sums_text = ("Saved weights (sha256): " + ", ".join(f"`{f}` {h}" for f, h in sums.items()) + "\n\n"
                 if isinstance(sums, dict) and sums else f"Saved weights (sha256): {sums}\n\n"
                 if isinstance(sums, str) else "")
    n_prompts = results["probe"].get("n_eval_prompts")
    gate_title = (f", deployment gate {STATE_WORDS[state]}" if checks else
                  ", no deployment gate")
    return (f"# Corrected copy of {results['model']['name']}: {verdict}{gate_title}\n\n"
            f"{reduced}{release_text}\n\n{gate_text}\n\n"
            f"Base model: `{results['model']['spec']}`, {model_words_of(results['model'])}.\n\n"
            f"Produced by safety_prune `correct` (probe suite `{results['probe']['name']}`, run id "
            f"`{run_id_of(results.get('manifest') or {})}`; the run directory's report.html has the full audit trail): "
            f"{p['count']} {p['unit']} units ({100 * p['fraction']:.3f}%) {_how(results['method'], p)}. "
            f"Selection rule: {results['selection']['rule']}.\n\n{sums_text}"
            f"Held-out measurements on {n_prompts} prompts (95% bootstrap CI; a rate also as the count of flagged "
            f"continuations), scorer `{results['scorer']['name']}`:\n\n"
            f"| metric | before | after |\n|---|---|---|\n{rows}\n\n{paired_text}"
            f"Scorer limits: {results['scorer']['limits']}\n")
