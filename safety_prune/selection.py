"""Choosing which units to remove: a count, a sparsity, or a perplexity-budget search, with guards.

Everything here reads only what the caller passes in: the job hands it the general *validation* text, never
the test split or the eval prompts, so selection cannot see the data its result is measured on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .attribution import Relevance
from .contrast import contrast_scores
from .errors import ConfigError
from .evaluation import perplexity
from .families import geometry
from .interventions import Edit
from .methods import ORDERED, RULES
from .models import LoadedModel
from .pruning import Unit, count_units, masked, select

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchText:
    """Validation text for selection-time perplexity: the texts and the window settings of the suite."""

    texts: list[str]
    max_length: int


def validation_text(lm: LoadedModel, text: SearchText, n_tokens: int) -> str:
    """The first ``n_tokens`` tokens of the validation documents, as one text."""
    ids = lm.tokenizer("\n\n".join(text.texts), add_special_tokens=False)["input_ids"][:n_tokens]
    return lm.tokenizer.decode(ids)


def validation_perplexity(lm: LoadedModel, model: torch.nn.Module, text: SearchText, n_tokens: int) -> float:
    """Perplexity of ``model`` on the first ``n_tokens`` tokens of the validation text, in disjoint windows."""
    return perplexity(model, lm.tokenizer, [validation_text(lm, text, n_tokens)], max_length=text.max_length,
                      stride=text.max_length, device=model.device).perplexity


def eligible_units(model: torch.nn.Module, kind: str, layers: Sequence[int]) -> int:
    """How many ``kind`` units may be pruned once ``layers`` (``--exclude-layers``) are left out.

    Refuses, before any work, layers the model does not have and exclusions of weight units.
    """
    total = count_units(model, kind)
    layers = sorted(set(layers))
    if not layers:
        return total
    if kind == "weight":
        raise ConfigError("--exclude-layers applies to neuron and head units; leave it out with --unit weight.")
    n_layers = geometry(model).n_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"--exclude-layers {','.join(map(str, bad))}: this model has layers 0..{n_layers - 1}. "
                          "Give layers in that range.")
    return total - len(layers) * (total // n_layers)


def check_unit_counts(model: torch.nn.Module, kind: str, layers: Sequence[int], counts: dict[str, Sequence[int]]
                      ) -> int:
    """Every unit count asked for (``{"--k": [25], "--sweep": [...], ...}``) fits the eligible units, so an
    exclusion is honoured, never overridden by a count larger than what is left. Returns the eligible count."""
    eligible = eligible_units(model, kind, layers)
    total = count_units(model, kind)
    for flag, ks in counts.items():
        too_many = [k for k in ks if k > eligible]
        if too_many:
            where = (f"the {eligible} {kind} units left after --exclude-layers {','.join(map(str, layers))} "
                     f"(of {total})" if eligible < total else f"the {total} {kind} units of this model")
            raise ConfigError(f"{flag} {too_many[0]} exceeds {where}. Choose at most {eligible}"
                              + (", or exclude fewer layers." if eligible < total else "."))
    return eligible


def exclude_layers(scores: dict[str, torch.Tensor], kind: str, layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rank every unit of ``layers`` after all others, so they are never chosen before the rest."""
    layers = list(layers)
    if not layers:
        return scores
    if kind == "weight":
        raise ConfigError("--exclude-layers applies to neuron and head units.")
    n_layers = scores[kind].shape[0]
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ConfigError(f"--exclude-layers {layers}: this model has layers 0..{n_layers - 1}.")
    out = {k: v.clone() for k, v in scores.items()}
    out[kind][layers] = float(out[kind].max()) + 1.0
    return out


def guard(scores: dict[str, torch.Tensor], general: dict[str, torch.Tensor] | None, share: float
          ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Never candidates: the top ``share`` of units of each kind by |relevance on general text|.

    General text needs them (token detectors, output neurons), so a contrast that ranks them high is
    reading style, not the behaviour. They are ranked after every other unit. Returns the guarded scores
    and, per kind, how many guarded units sit in each layer (for the report).
    """
    if not general or share <= 0:
        return scores, {}
    out, per_layer = {k: v.clone() for k, v in scores.items()}, {}
    for kind in ("neuron", "head"):
        if kind not in out or kind not in general:
            continue
        g = general[kind].abs().flatten()
        n = math.ceil(share * g.numel())
        top = torch.topk(g, n).indices
        flat = out[kind].view(-1)
        flat[top] = float(flat.max()) + 1.0
        per_layer[kind] = torch.bincount(top // out[kind].shape[1], minlength=out[kind].shape[0]).tolist()
    return out, per_layer


@dataclass(frozen=True)
class Constraints:
    """What a correction may cost on validation data, relative to the unpruned model."""

    ppl_rise: float = 0.02  # general validation perplexity
    distinct2_drop: float = 0.05  # looping shows here before perplexity moves
    continuation_ppl_rise: float = 0.10  # garbled continuations (under the unpruned model)
    capability_drop: float = 0.02  # last-word accuracy, absolute, paired on the same passages (when measured)

    def perplexity(self, base: float, cand: float) -> str | None:
        """The perplexity limit alone (the search checks it before generating): what it broke, or None."""
        return f"perplexity +{100 * (cand / base - 1):.1f}%" if cand > base * (1 + self.ppl_rise) else None

    def violations(self, base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
        found = []
        drop = (base.get("last_word_accuracy") or 0.0) - (cand.get("last_word_accuracy") or 0.0)
        if "last_word_accuracy" in cand and drop > self.capability_drop:
            found.append(f"last-word accuracy -{drop:.3f}")
        if ppl := self.perplexity(base["perplexity"], cand["perplexity"]):
            found.append(ppl)
        if cand["distinct2"] < base["distinct2"] * (1 - self.distinct2_drop):
            found.append(f"distinct-2 {100 * (cand['distinct2'] / base['distinct2'] - 1):+.1f}%")
        if cand["continuation_perplexity"] > base["continuation_perplexity"] * (1 + self.continuation_ppl_rise):
            found.append(f"continuation perplexity "
                         f"+{100 * (cand['continuation_perplexity'] / base['continuation_perplexity'] - 1):.1f}%")
        return found

    def info(self, capability: bool = True) -> dict[str, float]:
        """The limits as results.json records them; ``capability``: whether the capability limit applied."""
        return {"ppl_rise": self.ppl_rise, "distinct2_drop": self.distinct2_drop,
                "continuation_ppl_rise": self.continuation_ppl_rise,
                **({"capability_drop": self.capability_drop} if capability else {})}


Measure = Callable[[torch.nn.Module], dict[str, Any]]
_UNMEASURED = ("behaviour_mean", "behaviour_rate", "distinct2", "continuation_perplexity", "last_word_accuracy")


def validation_search(lm: LoadedModel, measure: Measure, scores: dict[str, torch.Tensor], kind: str,
                      ks: Sequence[int], scales: Sequence[float | None], limits: Constraints,
                      perplexity_of: Callable[[torch.nn.Module], float] | None = None, select_by: str = "effect"
                      ) -> tuple[tuple[int, float | None] | None, list[dict[str, Any]]]:
    """The (k, scale) of the top-k units that keeps every ``limits`` with the largest drop of the mean behaviour
    score on validation prompts, or (``select_by`` budget) the most units (see ``search_settings``)."""
    candidates = [({"k": k, "scale": scale}, Edit(select(scores, kind, k=k), scale)) for scale in scales for k in ks]
    best, trail = search_settings(lm, measure, candidates, limits, perplexity_of, select_by)
    return (None if best is None else (best["k"], best["scale"])), trail


Candidate = tuple[dict[str, Any], Edit]  # (its setting, e.g. {"k", "scale"}; the change it makes)


def _label(setting: dict[str, Any]) -> str:
    """The searched part of a setting, e.g. ``strength 0.5, threshold 0, reach 0.3`` or ``k 25, scale 0.5``
    (a proportional row's k and scale only describe its gains)."""
    keys = ("strength", "threshold", "reach") if "strength" in setting else ("k", "scale")
    return ", ".join(f"{key} {setting[key]:g}" for key in keys if setting.get(key) is not None)


def search_settings(lm: LoadedModel, measure: Measure, candidates: Sequence[Candidate], limits: Constraints,
                    perplexity_of: Callable[[torch.nn.Module], float] | None = None, select_by: str = "effect"
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The chosen candidate setting and the trail of every candidate; ``measure`` generates and measures on
    validation data only. Each setting holds at least ``k`` (units changed) and ``scale`` (the report's columns);
    each trail row adds ``dampening`` (``Edit.dampening``: the sum over units of 1 - gain).

    ``select_by``: ``effect`` chooses the largest drop of the mean behaviour score among candidates that keep
    every ``limits``; ``budget`` the strongest (largest ``dampening``) that keeps them, ``cost`` the costliest
    (largest validation perplexity), so the behaviour scores, noisy on a few hundred prompts, never choose, and
    only candidates that could be chosen are generated from: generation goes from the strongest (costliest)
    within the perplexity limit down, stopping at the first that keeps the other limits (the rest: ``generated:
    False`` with a ``note``). ``cost`` reads every candidate's perplexity first; ``budget`` only those that could
    still be chosen (``_strongest_within``). Across reaches the sum of 1 - gain does not follow what a setting
    costs, while the held-out effect does; ``cost`` spends the perplexity limit.

    ``perplexity_of`` (the same validation perplexity that ``measure`` reports, alone): checked first, so a
    candidate already over the perplexity limit is not generated from. Generation is most of a candidate's
    cost, and such a candidate can never be chosen; its trail row says so (``generated: False``). A candidate
    that changes every unit at least as much as one already over the limit (``Edit.at_least_as_strong_as``:
    more units, or lower gains) is not measured at all: its row names the milder candidate. Candidates are
    measured in order (but for ``budget``), so the grid lists the milder settings first.
    Returns the chosen setting (None when no candidate keeps the limits) and the trail of every candidate.
    """
    if select_by not in RULES:
        raise ConfigError(f"select_by {select_by!r} is unknown; choose one of: {', '.join(RULES)}.")
    ordered = select_by in ORDERED and perplexity_of is not None  # perplexity first, generation later
    base = measure(lm.model)
    trail: list[dict[str, Any]] = [{"k": 0, "scale": None, **base, "violations": [], "reduction": 0.0,
                                    "generated": True, "dampening": 0.0}]
    unmeasured = dict.fromkeys(k for k in base if k in _UNMEASURED)
    if select_by == "budget" and perplexity_of is not None:
        best, rows = _strongest_within(lm, measure, candidates, limits, perplexity_of, base, unmeasured)
        return best, trail + rows
    best: dict[str, Any] | None = None
    best_gain = -math.inf
    over_limit: list[tuple[dict[str, Any], Edit]] = []
    within: list[tuple[int, dict[str, Any], Edit]] = []  # ordered: trail index, setting, edit; generated later
    for setting, edit in candidates:
        setting = {**setting, "dampening": edit.dampening()}
        milder = next((s for s, e in over_limit if edit.at_least_as_strong_as(e)), None)
        if milder is not None:
            trail.append(_ungenerated_row(setting, None, unmeasured, [_over_as(milder)]))
            log.info("validation search: %s %s", setting, _over_as(milder))
            continue
        model = edit.apply(lm.model)
        ppl = perplexity_of(model) if perplexity_of else None
        over = None if ppl is None else limits.perplexity(base["perplexity"], ppl)
        if over or ordered:
            if over:
                over_limit.append((setting, edit))
            else:
                within.append((len(trail), setting, edit))
            trail.append(_ungenerated_row(setting, ppl, unmeasured, [over] if over else []))
            log.info("validation search: %s perplexity %.3f%s", setting, ppl, f" {over}: not generated" if over else "")
            continue
        got = measure(model)
        del model
        bad = limits.violations(base, got)
        if limits.perplexity(base["perplexity"], got["perplexity"]):
            over_limit.append((setting, edit))
        trail.append(_generated_row(setting, got, base, bad))
        gain = trail[-1]["reduction"]
        log.info("validation search: %s mean %.4f (%+.1f%%) %s", setting, got["behaviour_mean"],
                 -100 * gain, "; ".join(bad) or "within limits")
        if not bad and gain > best_gain:
            best, best_gain = setting, gain
    # only --select-by cost defers generation here (budget: _strongest_within): the costliest first
    for i, setting, edit in sorted(within, key=lambda t: (-trail[t[0]]["perplexity"], t[0])):
        if best is not None:
            trail[i]["note"] = f"not generated from: {_label(best)} costs more perplexity and keeps every limit"
            continue
        got = measure(edit.apply(lm.model))
        bad = limits.violations(base, got)
        trail[i] = _generated_row(setting, got, base, bad)
        log.info("validation search (%s): %s mean %.4f (%+.1f%%) %s", select_by, setting, got["behaviour_mean"],
                 -100 * trail[i]["reduction"], "; ".join(bad) or "within limits: chosen")
        if not bad:
            best = setting
    return best, trail


def _ungenerated_row(setting: dict[str, Any], ppl: float | None, unmeasured: dict[str, None], violations: list[str]
                     ) -> dict[str, Any]:
    """A candidate not generated from: its validation perplexity (None: not read) and why it was not."""
    return {**setting, "perplexity": ppl, **unmeasured, "violations": violations, "reduction": None,
            "generated": False}


def _over_as(milder: dict[str, Any]) -> str:
    """Why a candidate was not read: ``milder`` is over the perplexity limit, and it changes no unit less."""
    return (f"not measured: it changes every unit at least as much as {_label(milder)}, which is over the perplexity "
            "limit")


def _generated_row(setting: dict[str, Any], got: dict[str, Any], base: dict[str, Any], bad: list[str]
                   ) -> dict[str, Any]:
    gain = 1 - got["behaviour_mean"] / base["behaviour_mean"] if base["behaviour_mean"] > 0 else 0.0
    return {**setting, **got, "violations": bad, "reduction": gain, "generated": True}


def _strongest_within(lm: LoadedModel, measure: Measure, candidates: Sequence[Candidate], limits: Constraints,
                      perplexity_of: Callable[[torch.nn.Module], float], base: dict[str, Any],
                      unmeasured: dict[str, None]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``--select-by budget`` reading only the perplexities that can change its choice.

    The rule takes the strongest candidate (largest ``dampening``, the earlier on a tie) that keeps every limit.
    Once a candidate reads within the perplexity limit, no milder one can be chosen while it may be; a candidate
    that changes every unit at least as much as one over the limit is taken to be over it too (as the full
    search does). So the perplexity is read at the median strength of the candidates still open: within the
    limit closes every milder one, over it every stronger one. Generation starts from the strongest within the
    limit; a candidate that breaks another limit reopens the milder ones. On the default grid this reads 5-6 of
    28 perplexities where reading every one took 18-20, for the same choice. Returns the chosen setting and the
    trail rows, in the order of ``candidates``."""
    settings = [{**setting, "dampening": edit.dampening()} for setting, edit in candidates]
    edits = [edit for _, edit in candidates]
    rows: dict[int, dict[str, Any]] = {}
    within: list[int] = []  # read within it and not generated from

    def strength(i: int) -> tuple[float, int]:
        return settings[i]["dampening"], -i

    def close_stronger(j: int) -> None:
        for i in range(len(settings)):
            if i not in rows and edits[i].at_least_as_strong_as(edits[j]):
                rows[i] = _ungenerated_row(settings[i], None, unmeasured, [_over_as(settings[j])])

    best: dict[str, Any] | None = None
    while best is None:
        floor = max(map(strength, within), default=(-math.inf, 0))
        open_ = sorted((i for i in range(len(settings)) if i not in rows and strength(i) > floor), key=strength)
        if open_:
            i = open_[(len(open_) - 1) // 2]
            ppl = perplexity_of(edits[i].apply(lm.model))
            bad = limits.perplexity(base["perplexity"], ppl)
            rows[i] = _ungenerated_row(settings[i], ppl, unmeasured, [bad] if bad else [])
            log.info("validation search: %s perplexity %.3f%s", settings[i], ppl, f" {bad}" if bad else "")
            if bad:
                close_stronger(i)
            else:
                within.append(i)
            continue
        if not within:
            break
        i = max(within, key=strength)
        within.remove(i)
        got = measure(edits[i].apply(lm.model))
        bad = limits.violations(base, got)
        rows[i] = _generated_row(settings[i], got, base, bad)
        log.info("validation search (budget): %s mean %.4f %s", settings[i], got["behaviour_mean"],
                 "; ".join(bad) or "within limits: chosen")
        if not bad:
            best = settings[i]
    for i in range(len(settings)):
        if i in within:
            rows[i]["note"] = f"not generated from: {_label(best)} dampens more and keeps every limit"
        elif i not in rows:  # milder than the chosen one: it could not have been chosen
            rows[i] = {**_ungenerated_row(settings[i], None, unmeasured, []),
                       "note": f"not measured: {_label(best)} dampens more and keeps every limit"}
    return best, [rows[i] for i in range(len(settings))]


def damage_screen(lm: LoadedModel, text: SearchText, scores: dict[str, torch.Tensor], kind: str, *, n: int,
                  max_rise: float, n_tokens: int) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Move candidates whose ablation *alone* costs more than ``max_rise`` validation perplexity to the back.

    The top ``n`` units are ablated one at a time (in place, restored bit-identically) on the first ``n_tokens``
    tokens of the validation text; general-purpose units (token detectors, output neurons) that a contrast
    ranks high because they matter for everything are skipped this way.
    """
    base = validation_perplexity(lm, lm.model, text, n_tokens)
    screened = {k: v.clone() for k, v in scores.items()}
    worst = float(scores[kind].max()) + 1.0
    rows = []
    for unit in select(scores, kind, k=min(n, count_units(lm.model, kind))):
        with masked(lm.model, [unit]):
            rise = validation_perplexity(lm, lm.model, text, n_tokens) / base - 1
        dropped = rise > max_rise
        if dropped:
            screened[kind][unit.layer, unit.index] = worst
        rows.append({"unit": str(unit), "rise": rise, "dropped": dropped})
    log.info("damage screen: dropped %d of %d candidates", sum(r["dropped"] for r in rows), len(rows))
    return screened, rows


def stability_reading(jaccard: float) -> str:
    """One word for the report: ``stable`` at a mean bootstrap Jaccard of 0.7 or more (the bar of the stability
    issue, across seeds), ``unstable`` below 0.4 (most of the top would change with another draw)."""
    return "stable" if jaccard >= 0.7 else "moderate" if jaccard >= 0.4 else "unstable"


STABILITY_TOP = 100  # the most a stability comparison looks at: the units that carry the edit


def _resampled(rel: dict[str, Relevance], kind: str, combine: str, share: float, exclude: Sequence[int],
               resamples: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """The guarded contrast scores (excluded layers last) of ``resamples`` bootstrap resamples of each
    reference set's samples: what the ranking would have been with another draw of the same size."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(resamples):
        boot = {}
        for name, r in rel.items():
            per = r.per_sample[kind]
            idx = torch.randint(len(per), (len(per),), generator=gen)
            boot[name] = Relevance(r.method, {kind: per[idx].mean(0)}, len(per))
        scores, _ = guard(contrast_scores(boot, combine), boot["general"].scores, share)
        yield exclude_layers(scores, kind, exclude)


def _has_per_sample(rel: dict[str, Relevance] | None, kind: str) -> bool:
    return bool(rel) and all(kind in r.per_sample for r in rel.values())


def stability(rel: dict[str, Relevance] | None, selected: Sequence[Unit], kind: str, combine: str, share: float,
              exclude: Sequence[int], resamples: int, seed: int) -> dict[str, Any]:
    """How reproducible the selection is: resample each reference set's samples with replacement, rank again
    (same contrast, guard and exclusions), and compare the top-k with the selection (Jaccard overlap).

    At most the ``STABILITY_TOP`` highest-ranked selected units are compared: proportional gains change most units
    a little, and the overlap of two top-15,000s of 46,000 says little about the units that carry the edit.
    Needs per-sample neuron relevance (kept by ``Contrast`` for lrp and gradient)."""
    changed = len(selected)
    selected = list(selected)[:STABILITY_TOP]
    k = len(selected)
    if not resamples or kind != "neuron" or not k or not _has_per_sample(rel, kind):
        return {"computed": False, "why": "needs neuron units, a relevance-backed method and --stability > 0"}
    chosen = {(u.layer, u.index) for u in selected}
    overlaps, counts = [], dict.fromkeys(chosen, 0)
    for scores in _resampled(rel, kind, combine, share, exclude, resamples, seed):
        top = {(u.layer, u.index) for u in select(scores, kind, k=k)}
        overlaps.append(len(top & chosen) / len(top | chosen))
        for unit in top & chosen:
            counts[unit] += 1
    freq = sorted(((c / resamples, unit) for unit, c in counts.items()), reverse=True)
    jaccard = sum(overlaps) / resamples
    return {"computed": True, "resamples": resamples, "k": k, "changed": changed,
            "jaccard_mean": jaccard, "jaccard_min": min(overlaps), "reading": stability_reading(jaccard),
            "stable_share": sum(f >= 0.5 for f, _ in freq) / k,
            "selection_frequency": [{"unit": str(Unit(kind, layer, index)), "frequency": f}
                                    for f, (layer, index) in freq]}


def stable_selection(scores: dict[str, torch.Tensor], rel: dict[str, Relevance] | None, kind: str, combine: str,
                     share: float, exclude: Sequence[int], *, resamples: int, seed: int, pi: float, depth: int
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Stability selection (Meinshausen & Buehlmann 2010) on the contrast ranking: a unit stays a candidate
    only when it ranks among the top ``depth`` (the most units the correction may change) in at least a share
    ``pi`` of ``resamples`` bootstrap resamples of the reference sets; every other unit is ranked after all
    candidates, so top-k never takes it before them and proportional gains leave it at 1. A unit that one
    lucky draw puts on top is dropped: the chosen set depends less on which continuations were sampled.

    Returns the scores and ``{"pi", "resamples", "depth", "candidates", "probability"}`` (per-unit selection
    probability, the scores' shape)."""
    if rel is None or not _has_per_sample(rel, kind):
        raise ConfigError(f"--stable needs per-sample relevance of {kind} units, which only --method lrp and "
                          "gradient keep (with --unit neuron). Drop --stable, or use one of those.")
    width = scores[kind].shape[1]
    hits = torch.zeros(scores[kind].numel())
    for resampled in _resampled(rel, kind, combine, share, exclude, resamples, seed):
        top = select(resampled, kind, k=depth)
        hits[torch.tensor([u.layer * width + u.index for u in top], dtype=torch.long)] += 1
    probability = (hits / resamples).reshape(scores[kind].shape)
    out = {key: v.clone() for key, v in scores.items()}
    unstable = probability < pi
    out[kind][unstable] = float(scores[kind].max()) + 1.0
    info = {"pi": pi, "resamples": resamples, "depth": depth, "candidates": int((~unstable).sum()),
            "probability": probability}
    log.info("stability selection: %d of %d units are in the top %d in >= %.0f%% of %d resamples",
             info["candidates"], probability.numel(), depth, 100 * pi, resamples)
    return out, info
