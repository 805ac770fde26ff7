"""The model card (README.md) of a corrected copy saved with ``--save-model``.

It states the run the way the report does (the same run id, counts behind the rates, p-value wording, check states
and reduced-run note, from ``facts``), so the card and the page never disagree; the text is the template
``reports/model_card.md.j2``.
"""

from __future__ import annotations

from ..gate import check_state, overall
from ..metrics import metric_ci
from ..results import BehaviourResults, GateCheck, MetricBlock, MetricKey, Pruned, State
from .facts import STATE_WORDS, as_count, pruned_of, rate_totals, reduced_limit, run_id_of
from .templates import markdown
from .words import model_words_of


class ShownCheck(GateCheck):
    """A gate check as the card lists it, with its state."""

    state: State | None


def _how(method: str, pruned: Pruned) -> str:
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
    b, c, pruned = results["baseline"], results["corrected"], pruned_of(results)
    if c is None or pruned is None:
        raise ValueError("a model card describes a correction: results.json records no corrected model")
    totals = rate_totals(results)
    gate = results.get("gate")
    checks: list[ShownCheck] = [{**ch, "state": check_state(ch)} for ch in (gate["checks"] if gate else [])
                                if "failed" in ch]
    release = results.get("release")

    def cell(d: MetricBlock, key: MetricKey) -> str:
        ci, n = metric_ci(d, key), as_count(d[key], totals.get(key)) if key in totals else ""
        return f"{d[key]:.4g}{f' ({n})' if n else ''}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")

    return markdown().get_template("model_card.md.j2").render(
        model=results["model"], probe=results["probe"], scorer=results["scorer"], pruned=pruned,
        selection=results["selection"], gate=gate or {}, checks=checks, state=overall([ch["state"] for ch in checks]),
        state_words=STATE_WORDS, release=release or {}, release_title=_RELEASE_TITLES.get(
            release["allowed"] if release else None, "release check not recorded"),
        limit=reduced_limit(results), run_id=run_id_of(results["manifest"]),
        model_words=model_words_of(results["model"]), how=_how(results["method"], pruned),
        sums=pruned.get("saved_model_sha256"), paired=c.get("paired_vs_baseline"),
        rows=[(key, cell(b, key), cell(c, key)) for key in _CARD_METRICS])


_RELEASE_TITLES: dict[bool | None, str] = {True: "release check passed",
                                            False: "release check REFUSED, saved only because --force was given"}
_CARD_METRICS: tuple[MetricKey, ...] = ("behaviour_rate", "behaviour_mean", "perplexity", "distinct2",
                                        "continuation_perplexity")
