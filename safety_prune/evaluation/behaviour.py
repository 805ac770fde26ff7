"""Measure a model's behaviour on a suite's prompts: generate, score, and put fluency and perplexity beside it.

The unpruned model's continuations are cached in the run directory (``GenerationCache``), so a rerun and every
compared method reuse them instead of generating again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_jsonl
from ..models import LoadedModel
from ..scorers import Scorer
from ..suite import GenerationSpec, ProbeSuite
from .capability import CapabilitySet, capability_metrics
from .fluency import distinct_n
from .generation import Generation, encode_prompts, generate_detailed
from .perplexity import PerplexityResult, perplexity, sequence_perplexities
from .stats import behaviour_aggregates, summarize

log = logging.getLogger(__name__)


def truncate_prompts(tokenizer, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """Keep at most ``max_tokens`` tokens of each prompt; warn once with the count.

    Prompts are tokenized in one batched call (a fast tokenizer runs it in parallel: 100k prompts take
    about a second instead of tens), after cutting each to 32 characters per kept token.
    """
    out, cut = [], 0
    batch = tokenizer([p[: max_tokens * 32] for p in prompts], add_special_tokens=False)["input_ids"] if prompts else []
    for p, ids in zip(prompts, batch, strict=True):
        if len(ids) > max_tokens:
            cut += 1
            p = tokenizer.decode(ids[:max_tokens])
        out.append(p)
    if cut:
        log.warning("%d of %d prompts were longer than max_prompt_tokens=%d and were truncated.",
                    cut, len(prompts), max_tokens)
    return out


@dataclass
class Generations:
    """Continuations of a prompt set with their scores."""

    prompts: list[str]
    gens: list[list[Generation]]
    scores: list[list[float]]

    def per_prompt_mean(self) -> list[float]:
        """Mean score per prompt: the unit that paired comparisons resample."""
        return [float(np.mean(row)) for row in self.scores]

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        """One ``samples.jsonl`` row per continuation."""
        for i, (prompt, row_g, row_s) in enumerate(zip(self.prompts, self.gens, self.scores, strict=True)):
            for j, (g, s) in enumerate(zip(row_g, row_s, strict=True)):
                yield {"split": split, "prompt_index": i, "sample": j, "prompt": prompt,
                       "continuation": g.continuation, "score": s}


@dataclass(frozen=True)
class GenerationCache:
    """Continuations of the *unpruned* model, kept in the run directory so a rerun does not generate twice.

    Files are named by a hash of the model (``LoadedModel.fingerprint``: weights, config, tokenizer, dtype,
    device kind), prompts, generation settings and seed, so a cached file is only ever reused for exactly the
    same inputs, and every row is checked against its own token ids before use. Read from the previous run
    (``--overwrite``), written into the new one.
    """

    read_dir: Path | None
    write_dir: Path

    def _name(self, lm: LoadedModel, gen: GenerationSpec, chat: bool, prompts: list[str], seed: int) -> str:
        key = json.dumps([lm.fingerprint(), prompts, asdict(gen), chat, seed])
        return f"generations-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"

    def load(self, lm: LoadedModel, gen: GenerationSpec, chat: bool, prompts: list[str], seed: int
             ) -> list[list[Generation]] | None:
        """The cached continuations for exactly these inputs, or None (then they are generated).

        A damaged file (truncated, edited, not JSON, wrong fields or counts) is ignored with a warning: the cache
        only saves time, so generating again is always correct.
        """
        path = self.read_dir / self._name(lm, gen, chat, prompts, seed) if self.read_dir else None
        if path is None or not path.is_file():
            return None
        gens: list[list[Generation]] = [[] for _ in prompts]
        texts, prompt_ids = encode_prompts(lm.tokenizer, prompts, chat)
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                i = row.pop("prompt_index")
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(prompts):
                    raise ValueError(f"prompt_index {i!r} is not one of the {len(prompts)} prompts")
                g = Generation(**row)
                ids = [*g.prompt_ids, *g.continuation_ids]
                if not (isinstance(g.prompt_text, str) and isinstance(g.continuation, str)
                        and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)):
                    raise ValueError("a field has the wrong type")
                if g.prompt_text != texts[i] or g.prompt_ids != prompt_ids[i]:
                    raise ValueError(f"the prompt of row {i} is not prompt {i} as this tokenizer encodes it")
                if g.continuation != lm.tokenizer.decode(g.continuation_ids, skip_special_tokens=True):
                    raise ValueError(f"the continuation text of prompt {i} is not what its token ids decode to "
                                     "(edited?)")
                gens[i].append(g)
            if any(len(row) != gen.num_samples for row in gens):
                raise ValueError(f"not {gen.num_samples} continuation(s) for every prompt")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON and UTF-8 errors included
            log.warning("Ignoring the damaged generation cache %s (%s: %s); generating the continuations again.",
                        path, type(exc).__name__, exc)
            return None
        log.info("Reusing %d cached continuations from %s", sum(map(len, gens)), path)
        return gens

    def save(self, lm: LoadedModel, gen: GenerationSpec, chat: bool, prompts: list[str], seed: int,
             gens: list[list[Generation]]) -> None:
        write_jsonl(self.write_dir / self._name(lm, gen, chat, prompts, seed),
                    ({"prompt_index": i, **asdict(g)} for i, row in enumerate(gens) for g in row))


def generate_and_score(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, prompts: list[str], seed: int,
                       desc: str, cache: GenerationCache | None = None, gen: GenerationSpec | None = None
                       ) -> Generations:
    """Continue ``prompts`` with the suite's generation settings (or ``gen``) and score every continuation."""
    g = gen or suite.generation
    chat = suite.chat_template
    prompts = truncate_prompts(lm.tokenizer, prompts, suite.max_prompt_tokens)
    gens = cache.load(lm, g, chat, prompts, seed) if cache else None
    if gens is None:
        log.info("Generating %d continuation(s) for %d %s prompts", g.num_samples, len(prompts), desc)
        gens = generate_detailed(lm.model, lm.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                                 do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p,
                                 num_samples=g.num_samples, batch_size=g.batch_size, seed=seed,
                                 chat_template=chat, device=lm.model.device)
    if cache:
        cache.save(lm, g, chat, prompts, seed, gens)
    flat = scorer.score([x.continuation for row in gens for x in row])
    n = g.num_samples
    return Generations(prompts, gens, [flat[i * n:(i + 1) * n] for i in range(len(prompts))])


def _log_summary(values: Sequence[float], seed: int) -> dict[str, float | int]:
    """Geometric-mean summary: bootstrap over log values, reported back on the original scale."""
    s = summarize([math.log(v) for v in values], seed=seed)
    return {"value": math.exp(s["value"]), "ci_low": math.exp(s["ci_low"]),
            "ci_high": math.exp(s["ci_high"]), "n": s["n"]}


def secondary_metrics(res: Generations, secondary: dict[str, Scorer], suite: ProbeSuite, seed: int
                      ) -> dict[str, dict[str, Any]]:
    """Each secondary scorer on the SAME continuations as the primary: its ``behaviour_rate`` and ``behaviour_mean``
    (bootstrapped over prompts like the primary's), its ``threshold``, and ``agreement``: the share of continuations
    that the two scorers flag alike, each flag being a score above that scorer's own threshold (as the rates
    count them)."""
    thresholds = {spec.name: spec.threshold for spec in suite.scorer.secondary}
    primary = [s > suite.scorer.threshold for row in res.scores for s in row]
    texts = [x.continuation for row in res.gens for x in row]
    n = len(res.gens[0]) if res.gens else 0
    out: dict[str, dict[str, Any]] = {}
    for name, sec in secondary.items():
        threshold = thresholds.get(name, 0.5)
        flat = sec.score(texts)
        agg = behaviour_aggregates([flat[i * n:(i + 1) * n] for i in range(len(res.gens))], threshold=threshold,
                                   seed=seed)
        agree = sum((s > threshold) == p for s, p in zip(flat, primary, strict=True)) / len(flat)
        out[name] = {"behaviour_rate": agg["behaviour_rate"], "behaviour_mean": agg["behaviour_mean"],
                     "agreement": float(agree), "threshold": threshold}
    return out


def evaluate(lm: LoadedModel, reference: LoadedModel, suite: ProbeSuite, scorer: Scorer, prompts: list[str],
             general_text: list[str], seed: int, cache: GenerationCache | None = None,
             secondary: dict[str, Scorer] | None = None, capability: CapabilitySet | None = None,
             general_perplexity: PerplexityResult | None = None) -> tuple[dict[str, Any], Generations]:
    """The behaviour with fluency and perplexity next to it, each with a 95% bootstrap CI over prompts.

    ``reference`` is the unpruned model: continuation perplexity is measured under it, so garbled text of a
    pruned ``lm`` shows as a rise. ``secondary`` (name -> scorer, e.g. from ``jobs.stages.suite_secondary``)
    scores the same continuations again: ``metrics["secondary"][name]`` (see ``secondary_metrics``; ``{}`` when
    none). ``capability`` (items of one general split): last-word accuracy and continuation F1 with their paired
    drops from ``reference`` (see ``capability_metrics``). ``general_perplexity``: ``lm``'s perplexity on
    ``general_text`` with the suite's windows, when the caller has just measured it (not measured twice).
    """
    res = generate_and_score(lm, suite, scorer, prompts, seed, "eval", cache)
    metrics: dict[str, Any] = behaviour_aggregates(res.scores, threshold=suite.scorer.threshold, seed=seed)
    metrics["secondary"] = secondary_metrics(res, secondary or {}, suite, seed)
    metrics["distinct2"] = summarize(
        [float(np.mean(distinct_n([x.continuation for x in row], 2))) for row in res.gens], seed=seed)
    flat = [x for row in res.gens for x in row]
    cppl = sequence_perplexities(reference.model, reference.tokenizer, [x.prompt_ids for x in flat],
                                 [x.continuation_ids for x in flat], device=reference.model.device)
    finite = [v for v in cppl if math.isfinite(v) and v > 0]
    metrics["continuation_perplexity"] = _log_summary(finite, seed) | {"empty_continuations":
                                                                          len(cppl) - len(finite)}
    p = suite.perplexity
    ppl = general_perplexity or perplexity(lm.model, lm.tokenizer, general_text, max_length=p.max_length,
                                           stride=p.stride, device=lm.model.device)
    lo, hi = ppl.ci(seed)
    metrics["perplexity"] = {"value": ppl.perplexity, "ci_low": lo, "ci_high": hi, "n_tokens": ppl.n_tokens}
    if capability is not None:
        metrics |= capability_metrics(lm.model, reference.model, lm.tokenizer, capability, seed,
                                      suite.generation.batch_size)
    return metrics, res
