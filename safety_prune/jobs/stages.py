"""The stages that ``audit`` runs and ``correct`` builds on: baseline, reference continuations, contrast sets.

Held-out discipline by construction: the baseline reads only the eval prompts and the general test split;
the reference stage reads only the reference prompts and the general reference split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ..attribution import Relevance, Sample
from ..contrast import (
    Contrast,
    behaviour_vocabulary,
    build_sets,
    copying_samples,
    ranking,
    with_foils,
    with_vocabulary,
)
from ..errors import ConfigError
from ..evaluation.behaviour import GenerationCache, Generations, evaluate, generate_and_score
from ..evaluation.capability import CapabilitySet, capability_set
from ..explain import unit_examples
from ..io import write_jsonl
from ..models import LoadedModel
from ..results import ScorerInfo
from ..run import Staging
from ..scorers import Scorer, get_scorer
from ..selection import exclude_layers, guard
from ..suite import GenerationSpec, ProbeSuite, ScorerSpec
from .common import limited, limited_count
from .options import BehaviourOptions


@dataclass
class Baseline:
    """The unpruned model on the held-out eval prompts and the general test text."""

    prompts: list[str]
    test_text: list[str]
    metrics: dict[str, Any]
    generations: Generations
    capability: CapabilitySet | None = None  # the general test documents' capability items (suite.capability)


def suite_scorer(suite: ProbeSuite) -> Scorer:
    """The suite's scorer, checked against what the suite asks of it before any work starts."""
    scorer = get_scorer(suite.scorer.name, **suite.scorer.options)
    if suite.reference.target == "tokens" and not scorer.localises:
        raise ConfigError(f"{suite.path.name}: reference.target 'tokens' needs a scorer that says which tokens "
                          f"carry the behaviour, and the {scorer.name} scorer cannot. Use reference.target: "
                          "continuation, or a scorer that localises (profanity, toxblock, repetition).")
    if suite.reference.target == "loop" and not scorer.finds_loops:
        raise ConfigError(f"{suite.path.name}: reference.target 'loop' needs a scorer that says where a continuation "
                          f"starts to loop, and the {scorer.name} scorer cannot. Use scorer.name: repetition, or "
                          "reference.target: tokens.")
    return scorer


def suite_secondary(suite: ProbeSuite) -> dict[str, Scorer]:
    """The suite's secondary scorers (``scorer.secondary``) by name, built before any work starts."""
    out: dict[str, Scorer] = {}
    for i, spec in enumerate(suite.scorer.secondary):
        try:
            out[spec.name] = get_scorer(spec.name, **spec.options)
        except ConfigError as exc:
            raise ConfigError(f"{suite.path.name}: scorer.secondary[{i}]: {exc}") from None
    return out


def _one_scorer_info(scorer: Scorer, spec: ScorerSpec) -> ScorerInfo:
    info: ScorerInfo = {"name": scorer.name, "description": scorer.description, "limits": scorer.limits,
                        "threshold": spec.threshold, "behaviour": scorer.behaviour}
    if scorer.behaviour == "toxicity" and spec.validate:
        from ..scorers.validate import validate_scorer

        info["validation"] = validate_scorer(scorer, spec.threshold)
    return info


def scorer_info(scorer: Scorer, suite: ProbeSuite, secondary: dict[str, Scorer] | None = None) -> ScorerInfo:
    """Name, limits and (for toxicity scorers) agreement with Perspective labels, for the report; the same for
    each secondary scorer under ``secondary`` (a list, in the suite's order)."""
    info = _one_scorer_info(scorer, suite.scorer)
    specs = {spec.name: spec for spec in suite.scorer.secondary}
    info["secondary"] = [_one_scorer_info(s, specs[name]) for name, s in (secondary or {}).items()]
    return info


def generation_cache(out: Path, staging: Staging) -> GenerationCache:
    """The unpruned model's continuations: read from a previous run in ``out``, written into the new one."""
    return GenerationCache(out, staging.dir)


def measure_baseline(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, limit: int | None, seed: int,
                     cache: GenerationCache, secondary: dict[str, Scorer] | None = None) -> Baseline:
    prompts, test_text = limited(suite.eval_prompts(), limit), suite.general_test()
    capability = capability_set(lm.tokenizer, test_text, "general test") if suite.capability else None
    metrics, res = evaluate(lm, lm, suite, scorer, prompts, test_text, seed, cache, secondary=secondary,
                            capability=capability)
    return Baseline(prompts, test_text, metrics, res, capability)


@dataclass
class References:
    """The reference continuations and the contrast built from them."""

    generations: Generations
    contrast: Contrast


def reference_generation(suite: ProbeSuite) -> GenerationSpec:
    """How reference prompts are continued: the suite's settings, sampled when several per prompt."""
    r = suite.reference
    gen = replace(suite.generation, batch_size=r.batch_size or suite.generation.batch_size)
    if r.samples_per_prompt == 1:
        return gen
    return replace(gen, do_sample=True, num_samples=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p)


def build_references(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, opt: BehaviourOptions,
                     cache: GenerationCache, out: Path, pooling: str = "max") -> References:
    """Continue the reference prompts, then build the general, benign and undesired sets that attribution
    explains (``contrast.build_sets``); only reference prompts and the general reference part are read.
    ``pooling``: how AurA pools activations over a continuation."""
    spec = suite.reference
    prompts = suite.undesired_reference()[: spec.max_prompts]
    ref = generate_and_score(lm, suite, scorer, limited(prompts, opt.limit), opt.seed, "reference", cache,
                             reference_generation(suite))
    if opt.limit:  # a reduced (smoke-test) run asks for proportionally fewer flagged continuations
        spec = replace(spec, undesired_min=min(spec.undesired_min, max(1, opt.limit // 8)))
    sets = build_sets(lm.tokenizer, ref, scorer, suite.scorer.threshold, spec,
                      general_texts=suite.general_reference(), benign_texts=suite.benign_texts(),
                      general_n=limited_count(spec.general_n, opt.limit), max_tokens=opt.max_tokens,
                      benign_positions=suite.contrast.benign_positions)
    copying = suite.contrast.copying
    if copying is not None:
        sets.copying = copying_samples(lm.tokenizer, limited_count(copying.n, opt.limit), copying.tokens, opt.seed)
        sets.info |= {"n_copying": len(sets.copying), "copying": f"{copying.tokens} random word tokens said twice, "
                      "the second copy explained; kept like the general set (a side of the contrast and a guard)"}
    if spec.foil == "best_alternative":
        sets.undesired = with_foils(lm.model, sets.undesired, lm.tokenizer.pad_token_id or 0, opt.batch_size)
        sets.info["foil"] = "logit(flagged token) - logit(the model's most likely other token at that position)"
    if spec.explain == "vocabulary":
        vocabulary = behaviour_vocabulary(lm.tokenizer, scorer, suite.scorer.threshold)
        sets.undesired = with_vocabulary(sets.undesired, vocabulary)
        sets.info["explain"] = (f"at each flagged token's position, the {len(vocabulary)} word-starting vocabulary "
                                f"tokens that {scorer.name} flags alone, their logits weighted by their softmax "
                                "within that class")
        sets.info["vocabulary"] = [lm.tokenizer.decode([i]) for i in vocabulary[:50]]
    contrast = Contrast(lm.model, sets, suite.contrast.combine, pad_token_id=lm.tokenizer.pad_token_id or 0,
                        batch_size=opt.batch_size, seed=opt.seed,
                        gradient_checkpointing=opt.gradient_checkpointing, checkpoint_dir=out, pooling=pooling)
    return References(ref, contrast)


def write_generations(staging: Staging, name: str, *parts: tuple[Generations, str]) -> None:
    """``samples.jsonl`` / ``reference_generations.jsonl``: every prompt, continuation and score."""
    write_jsonl(staging.path(name), (row for res, split in parts for row in res.rows(split)))


def explain_units(lm: LoadedModel, top_units: list[dict[str, Any]], sets: dict[str, list[Sample]],
                  batch_size: int) -> list[dict[str, Any]]:
    """Token contexts where each listed neuron carried the most relevance, in each set."""
    if not top_units:
        return []
    units = [(u["layer"], u["index"], u["r_diff"]) for u in top_units]
    return unit_examples(lm.model, lm.tokenizer, units, sets, batch_size=batch_size)


@dataclass
class Ranked:
    """One method's guarded ranking (lowest first) and what backs it; ``gains``: the dense per-unit gains of a
    method that sets its own (AurA), 1 in excluded layers."""

    scores: dict[str, Tensor]
    relevance: dict[str, Relevance] | None
    guarded_per_layer: dict[str, list[int]]
    gains: dict[str, Tensor] | None = None
    candidates: int | None = None  # --stable: how many units are stable candidates (ranked before the rest)


def rank(c: Contrast, method: str, kind: str, kinds: tuple[str, ...], guard_share: float,
         exclude: Sequence[int] = ()) -> Ranked:
    """``method``'s contrast ranking with the general-relevance guard (from its own relevance; the random
    baseline has none) and the excluded layers ranked last. A method's own gains are not guarded (AurA as
    published dampens every neuron above AUROC 0.5), but excluded layers keep gain 1."""
    r = ranking(method, kind)
    raw = r.rank(c, kinds)
    rel = c.computed(r.relevance) if r.relevance else None
    scores, per_layer = guard(raw, rel["general"].scores if rel else None, guard_share)
    if rel and "copying" in rel:  # legitimate copying is kept like general text
        scores, copying_per_layer = guard(scores, rel["copying"].scores, guard_share)
        per_layer |= {f"copying_{kind}": counts for kind, counts in copying_per_layer.items()}
    gains = None
    if r.gains is not None:
        gains = {key: g.clone() for key, g in r.gains(c).items()}
        gains[kind][list(exclude)] = 1.0
    return Ranked(exclude_layers(scores, kind, exclude), rel, per_layer, gains)


def contrast_info(suite: ProbeSuite, c: Contrast, ranked: Ranked) -> dict[str, Any]:
    """The ``contrast`` section: set sizes, how the undesired samples were found, how sets combine, guard."""
    return c.sets.info | {"combine": suite.contrast.combine, "guard_share": suite.contrast.guard,
                          "guarded_per_layer": ranked.guarded_per_layer,
                          "normalisation": "each set divided by its total |R| per unit kind"}
