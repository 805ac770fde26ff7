"""The model card (README.md) of a corrected copy saved with ``--save-model``.

It states the run the way the report does (the same run id, counts behind the rates, p-value wording, check states
and reduced-run note, from ``facts``), so the card and the page never disagree; the text is the template
``reports/model_card.md.j2``.
"""

from __future__ import annotations

from typing import Any

from ..gate import check_state, overall
from ..results import BehaviourResults
from .facts import STATE_WORDS, as_count, rate_totals, reduced_limit, run_id_of
from .templates import markdown
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


def model_card(results: BehaviourResults) -> str:
    """The saved copy's README.md (``correct --save-model``, template ``reports/model_card.md.j2``): what was done
    to the model, the release verdict (allowed, or refused and saved only with --force), the deployment gate, and
    the held-out numbers with their counts and intervals."""
    b, c = results["baseline"], results["corrected"]
    totals = rate_totals(results)
    gate = results.get("gate") if isinstance(results.get("gate"), dict) else {}
    checks = [{**ch, "state": check_state(ch)} for ch in gate.get("checks") or []
              if isinstance(ch, dict) and "failed" in ch]
    release = results.get("release") if isinstance(results.get("release"), dict) else {}

    def cell(d: dict, key: str) -> str:
        lo, hi = d[f"{key}_ci"]
        n = as_count(d[key], totals.get(key)) if key in totals else ""
        return f"{d[key]:.4g}{f' ({n})' if n else ''} [{lo:.4g}, {hi:.4g}]"

    paired = c.get("paired_vs_baseline")
    return markdown().get_template("model_card.md.j2").render(
        model=results["model"], probe=results["probe"], scorer=results["scorer"], pruned=results["pruned"],
        selection=results["selection"], gate=gate, checks=checks, state=overall([ch["state"] for ch in checks]),
        state_words=STATE_WORDS, release=release, release_title=_RELEASE_TITLES.get(release.get("allowed"),
                                                                                    "release check not recorded"),
        limit=reduced_limit(results), run_id=run_id_of(results.get("manifest") or {}),
        model_words=model_words_of(results["model"]), how=_how(results["method"], results["pruned"]),
        sums=results["pruned"].get("saved_model_sha256"), paired=paired if isinstance(paired, dict) else None,
        rows=[(key, cell(b, key), cell(c, key)) for key in _CARD_METRICS])


_RELEASE_TITLES = {True: "release check passed", False: "release check REFUSED, saved only because --force was given"}
_CARD_METRICS = ("behaviour_rate", "behaviour_mean", "perplexity", "distinct2", "continuation_perplexity")
