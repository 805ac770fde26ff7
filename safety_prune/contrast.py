"""The contrastive reference sets, their relevance, and how each method turns them into a unit ranking.

A ranking scores every unit so that the *lowest* score is pruned first. Each method's ``Ranking`` is defined
here and registered by name in ``methods.RANKINGS`` (like zennit's composites): differential relevance for the
attribution methods, AurA's AUROC (``aura``, which also sets its own per-unit gains, and ``aura-topk``), and the
seeded random baseline.
Relevance is computed once per method and reused by every ranking that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import aura
from .attribution import (
    Relevance,
    Sample,
    attribute,
    batches,
    collate,
    require_samples,
    samples_from_texts,
)
from .errors import ConfigError, DataSourceError
from .evaluation.behaviour import Generations
from .evaluation.generation import Generation
from .io import atomic_path, short_name
from .methods import RANKINGS, check_ranking
from .scorers import Scorer
from .suite import ReferenceSpec

SETS = ("general", "benign", "undesired")


@dataclass
class ContrastSets:
    """The samples each set explains, and how they were found (``info`` goes into results.json).

    ``flagged`` / ``unflagged``: every reference continuation the scorer flags / does not flag (the prompt and
    the whole continuation, which is explained), AurA's labelled sets; when empty (a contrast built by hand)
    AurA uses ``undesired`` / ``benign``.
    """

    general: list[Sample]
    benign: list[Sample]
    undesired: list[Sample]
    info: dict[str, Any]
    flagged: list[Sample] = field(default_factory=list)
    unflagged: list[Sample] = field(default_factory=list)
    copying: list[Sample] = field(default_factory=list)  # legitimate copying to keep (``copying_samples``)

    def named(self) -> dict[str, list[Sample]]:
        sets = {"general": self.general, "benign": self.benign, "undesired": self.undesired}
        return sets | ({"copying": self.copying} if self.copying else {})


def _flat(ref: Generations) -> list[tuple[float, Generation]]:
    return [(s, g) for row_s, row_g in zip(ref.scores, ref.gens, strict=True)
            for s, g in zip(row_s, row_g, strict=True) if g.continuation_ids]


def _token_samples(tokenizer, scorer: Scorer, flagged: list[Generation], threshold: float, per_continuation: int,
                   limit: int) -> tuple[list[Sample], list[str], int]:
    """One sample per token that carries the behaviour (the first ``per_continuation`` of each continuation,
    ``limit`` in all): prompt + continuation up to that token, explaining that token's logit only. Returns the
    samples, the tokens' text, and how many continuations had none."""
    pieces = [[tokenizer.decode([t]) for t in g.continuation_ids] for g in flagged]
    scores = scorer.token_scores(pieces)
    samples, tokens, without = [], [], 0
    for g, row, text in zip(flagged, scores, pieces, strict=True):
        hits = [j for j, v in enumerate(row) if v >= threshold]
        without += not hits
        for j in hits[:per_continuation]:
            if len(samples) == limit:
                break
            ids = tuple(g.prompt_ids) + tuple(g.continuation_ids[: j + 1])
            samples.append(Sample(ids, len(ids) - 1))
            tokens.append(text[j])
    return samples, tokens, without


def _loop_samples(tokenizer, scorer: Scorer, flagged: list[Generation], benign_positions: str | None
                  ) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Per flagged continuation that loops: the undesired sample explains every token from the loop's start on
    (each copied from one period back); the benign sample, of the same continuation, every token before the start
    (``before_loop``) or only the pattern's first occurrence (``first_occurrence``). Ordinary prediction of the
    same text then weighs on both sides and cancels in the contrast."""
    spans = scorer.loops([[tokenizer.decode([t]) for t in g.continuation_ids] for g in flagged])
    undesired, benign, periods = [], [], []
    for g, loop in zip(flagged, spans, strict=True):
        if loop is None:
            continue
        ids, n = tuple(g.prompt_ids) + tuple(g.continuation_ids[:loop.end]), len(g.prompt_ids)
        undesired.append(Sample(ids, n + loop.start))
        first = loop.start - loop.period if benign_positions == "first_occurrence" else 0
        benign.append(Sample(ids[: n + loop.start], n + first))
        periods.append(loop.period)
    info = {"how": f"the tokens of each flagged continuation from the start of its loop ({scorer.name} scorer: the "
                   "earliest run of tokens that each repeat the token one period back) are explained",
            "n_loops": len(undesired), "continuations_without_loop": len(flagged) - len(undesired),
            "loop_periods": sorted(periods)}
    return undesired, benign, info


def copying_samples(tokenizer, n: int, length: int, seed: int) -> list[Sample]:
    """Legitimate copying to keep: ``n`` strings of ``length`` seeded random word tokens, each said twice; the
    second copy is explained from its second token on (where copying, not guessing, predicts it). Units that
    induction needs then rank as a set to keep, like the general set."""
    words = [i for i in range(len(tokenizer)) if _is_word(tokenizer.decode([i]))]
    if len(words) < length:
        raise DataSourceError(f"The tokenizer has only {len(words)} word tokens (a space, then letters), too few for "
                              f"copying strings of {length}; lower contrast.copying.tokens.")
    gen = torch.Generator().manual_seed(seed)
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for _ in range(n):
        words_ = [words[i] for i in torch.randperm(len(words), generator=gen)[:length].tolist()]
        out.append(Sample(tuple(prefix + words_ + words_), len(prefix) + length + 1))
    return out


def _is_word(piece: str) -> bool:
    return len(piece) > 2 and piece[0] == " " and piece[1:].isalpha()


def build_sets(tokenizer, ref: Generations, scorer: Scorer, threshold: float, spec: ReferenceSpec, *,
               general_texts: list[str], benign_texts: list[str], general_n: int, max_tokens: int,
               undesired_max: int | None = None, benign_positions: str | None = None) -> ContrastSets:
    """The three contrast sets from the model's reference continuations (see ``suite.ReferenceSpec``).

    Undesired: continuations the scorer flags (>= ``threshold``), most flagged first; a clear error when fewer
    than ``spec.undesired_min``. Benign: the least-scoring continuations of the same prompts, the suite's
    benign texts, or (``benign_positions``, target ``loop``) the looping continuations before their loops.
    General: prose, every next token explained.
    """
    if benign_positions and spec.target != "loop":
        raise ConfigError(f"Benign positions {benign_positions!r} are the looping continuations' own tokens before "
                          f"their loops, so they need reference.target: loop (got {spec.target!r}).")
    flat = _flat(ref)
    flagged = sorted(((s, g) for s, g in flat if s >= threshold), key=lambda sg: -sg[0])
    if len(flagged) < spec.undesired_min:
        raise DataSourceError(
            f"Only {len(flagged)} of {len(flat)} reference continuations score >= {threshold} with the "
            f"{scorer.name} scorer, but reference.undesired_min asks for {spec.undesired_min}. Explaining "
            "unflagged text would isolate ordinary prediction, not the behaviour: raise "
            "reference.samples_per_prompt, add reference prompts, or lower reference.undesired_min.")
    used = [g for _, g in flagged[: undesired_max or spec.undesired_max]]
    info: dict[str, Any] = {"target": spec.target, "threshold": threshold, "n_continuations": len(flat),
                            "n_flagged": len(flagged), "n_undesired_continuations": len(used)}
    if spec.target == "tokens":
        if not scorer.localises:
            scorer.token_scores([])  # raises the scorer's own explanation
        undesired, tokens, without = _token_samples(tokenizer, scorer, used, threshold,
                                                    spec.tokens_per_continuation, undesired_max or spec.undesired_max)
        if not undesired:
            raise DataSourceError(
                f"None of the {len(used)} flagged continuations has a single token that the {scorer.name} "
                "scorer flags on its own, so the 'tokens' target has nothing to explain. Use "
                "reference.target: continuation.")
        counts: dict[str, int] = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        info |= {"how": f"each word of a flagged continuation scored alone by {scorer.name} (repetition: the "
                        f"words that repeat an earlier word pair); the first token of the first "
                        f"{spec.tokens_per_continuation} such words per continuation is explained (its logit only)",
                 "n_token_samples": len(undesired), "continuations_without_token": without,
                 "tokens": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:50]}
    elif spec.target == "loop":
        undesired, before, loop_info = _loop_samples(tokenizer, scorer, used, benign_positions)
        if len(undesired) < spec.undesired_min:
            raise DataSourceError(
                f"Only {len(undesired)} of the {len(used)} flagged reference continuations loop (the {scorer.name} "
                f"scorer found no loop in the rest), but reference.undesired_min asks for {spec.undesired_min}. "
                "Add reference prompts, lower reference.undesired_min, or use reference.target: tokens.")
        info |= loop_info
    else:
        undesired = [Sample(tuple(g.prompt_ids) + tuple(g.continuation_ids), len(g.prompt_ids)) for g in used]
    if benign_positions:
        benign = before
        info["benign_source"] = f"the same looping continuations, {benign_positions.replace('_', ' ')}"
    elif benign_texts:
        benign = samples_from_texts(tokenizer, benign_texts, max_tokens=max_tokens)
        info["benign_source"] = "contrast.benign texts"
    else:
        calm = sorted(((s, g) for s, g in flat if s < threshold), key=lambda sg: sg[0])
        benign = [Sample(tuple(g.prompt_ids) + tuple(g.continuation_ids), len(g.prompt_ids)) for _, g in calm]
        info["benign_source"] = "the model's least-scoring continuations of the reference prompts"
    benign = require_samples(benign, min(spec.benign_n, len(benign)) or 1, "The benign contrast set")
    general = require_samples(samples_from_texts(tokenizer, general_texts, max_tokens=max_tokens), general_n,
                              "The general reference set")
    info |= {"n_general": len(general), "n_benign": len(benign), "n_undesired": len(undesired)}
    whole = [(s, Sample(tuple(g.prompt_ids) + tuple(g.continuation_ids), len(g.prompt_ids))) for s, g in flat]
    return ContrastSets(general, benign, undesired, info, flagged=[x for s, x in whole if s >= threshold],
                        unflagged=[x for s, x in whole if s < threshold])


def behaviour_vocabulary(tokenizer, scorer: Scorer, threshold: float) -> tuple[int, ...]:
    """Every vocabulary token that starts a word (a leading space) and is a word of letters the scorer flags
    alone (>= ``threshold``): the class ``reference.explain: vocabulary`` explains."""
    words = [(i, text.strip()) for i in range(len(tokenizer))
             if (text := tokenizer.decode([i])).startswith(" ") and text.strip().isalpha()]
    scores = scorer.score([w for _, w in words]) if words else []
    return tuple(i for (i, _), s in zip(words, scores, strict=True) if s >= threshold)


def with_vocabulary(samples: list[Sample], vocabulary: tuple[int, ...]) -> list[Sample]:
    """Each single-token sample explaining the behaviour's vocabulary at its position instead of its own token."""
    if not vocabulary:
        raise DataSourceError("No vocabulary token starts a word that the scorer flags on its own, so "
                              "reference.explain: vocabulary has no class to explain. Use explain: token.")
    return [replace(s, classes=vocabulary) for s in samples]


def with_foils(model: nn.Module, samples: list[Sample], pad_token_id: int, batch_size: int) -> list[Sample]:
    """Each single-token sample with the model's most likely *other* token at that position as its foil."""
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batches(samples, batch_size):
            b = collate(batch, pad_token_id, 1, device)
            logits = model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False).logits
            for i, s in enumerate(batch):
                top = torch.topk(logits[i, len(s.input_ids) - 2], 2).indices.tolist()
                out.append(replace(s, foil=top[1] if top[0] == s.input_ids[-1] else top[0]))
    return out


@dataclass
class Contrast:
    """The two reference sets of a run and the relevance computed over them, each method attributed once.

    ``checkpoint_dir``: the run directory; attribution checkpoints are kept beside it (hidden siblings), so
    --out stays empty until the run succeeds and a rerun resumes. ``pooling``: how AurA pools a neuron's
    activations over a continuation (``methods.POOLINGS``).
    """

    model: nn.Module
    sets: ContrastSets
    combine: str = "max"
    pad_token_id: int = 0
    batch_size: int = 8
    seed: int = 0
    gradient_checkpointing: bool = False
    checkpoint_dir: Path | None = None
    pooling: str = "max"
    _cache: dict[str, tuple[tuple[str, ...], dict[str, Relevance]]] = field(default_factory=dict, repr=False)
    _auroc: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _checkpoint(self, name: str, method: str) -> Path | None:
        d = self.checkpoint_dir
        return None if d is None else d.parent / f".{short_name(d)}.attribution-{name}-{method}.ckpt"

    def relevance(self, method: str, units: Sequence[str]) -> dict[str, Relevance]:
        """``{"general": R, "benign": R, "undesired": R}`` for ``method``; reuses an earlier pass that
        covered ``units``. Neuron relevance is kept per sample (the stability bootstrap reads it)."""
        hit = self._cache.get(method)
        if hit is not None and set(units) <= set(hit[0]):
            return hit[1]
        rel = {name: attribute(self.model, samples, method=method, units=units, batch_size=self.batch_size,
                               pad_token_id=self.pad_token_id, seed=self.seed, desc=f"{method} {name}",
                               gradient_checkpointing=self.gradient_checkpointing,
                               checkpoint=self._checkpoint(name, method), per_sample=True)
               for name, samples in self.sets.named().items()}
        self._cache[method] = (tuple(units), rel)
        return rel

    def computed(self, method: str) -> dict[str, Relevance] | None:
        hit = self._cache.get(method)
        return hit[1] if hit else None

    def auroc(self) -> Tensor:
        """AurA's ``[layers, neurons]`` AUROC, flagged vs unflagged continuations (``aura``), computed once."""
        if self.pooling not in self._auroc:
            flagged, unflagged = self.sets.flagged or self.sets.undesired, self.sets.unflagged or self.sets.benign
            act = {name: aura.pooled_activations(self.model, samples, self.pooling, pad_token_id=self.pad_token_id,
                                                 batch_size=self.batch_size, desc=f"aura {name} ({self.pooling})")
                   for name, samples in (("flagged", flagged), ("unflagged", unflagged))}
            self._auroc[self.pooling] = aura.auroc(act["flagged"], act["unflagged"])
        return self._auroc[self.pooling]


@dataclass(frozen=True)
class Ranking:
    """One method's way to rank units for removal (lowest first) from a ``Contrast``.

    ``relevance``: the attribution method whose per-set relevance backs the ranking (shown as the circuit);
    None for the random baseline. ``gains``: for a method that sets its own per-unit gains (AurA), the dense
    ``{kind: [layers, units]}`` gains; such a method has no k or strength to choose.
    """

    rank: Callable[[Contrast, tuple[str, ...]], dict[str, Tensor]]
    relevance: str | None
    gains: Callable[[Contrast], dict[str, Tensor]] | None = None


def normalised(r: Relevance) -> dict[str, Tensor]:
    """Each unit kind divided by its total |R|: set sizes and lengths then do not decide the ranking."""
    return {k: v / v.abs().sum().clamp_min(1e-30) for k, v in r.scores.items()}


def contrast_scores(rel: dict[str, Relevance], combine: str) -> dict[str, Tensor]:
    """Per unit, how much less it matters for the contrast set(s) than for the undesired set (lowest first).

    ``general`` / ``benign``: nR_set - nR_undesired of the normalised relevance. ``max``: the largest of these
    (and of the ``copying`` set's, when there is one), so a unit is a candidate only when the undesired set needs
    it more than *every* other set does.
    """
    n = {name: normalised(r) for name, r in rel.items()}
    sides = ("general", "benign", *(["copying"] if "copying" in n else [])) if combine == "max" else (combine,)
    return {key: torch.stack([n[side][key] - u for side in sides]).amax(0) for key, u in n["undesired"].items()}


def _differential(method: str) -> Ranking:
    def rank(c: Contrast, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        return contrast_scores(c.relevance(method, kinds), c.combine)
    return Ranking(rank, method)


def _aura(c: Contrast, kinds: tuple[str, ...]) -> dict[str, Tensor]:
    """Most behaviour-selective neurons (AUROC near 1, flagged vs unflagged continuations) first."""
    c.relevance("activation", ("neuron",))  # backs the guard and the circuit, as for the other methods
    return {"neuron": 0.5 - c.auroc()}


def _aura_gains(c: Contrast) -> dict[str, Tensor]:
    return {"neuron": aura.gains(c.auroc())}


def _random(c: Contrast, kinds: tuple[str, ...]) -> dict[str, Tensor]:
    """Seeded noise; nothing to contrast."""
    return attribute(c.model, c.sets.general, method="random", units=kinds, seed=c.seed).scores


LRP = _differential("lrp")
GRADIENT = _differential("gradient")
WANDA = _differential("wanda")
ACTIVATION = _differential("activation")
MAGNITUDE = _differential("magnitude")
AURA = Ranking(_aura, "activation", _aura_gains)
AURA_TOPK = Ranking(_aura, "activation")
RANDOM = Ranking(_random, None)


def ranking(name: str, kind: str) -> Ranking:
    """The ranking registered as ``name`` in ``methods.RANKINGS``, checked against the unit kind it is to rank."""
    check_ranking(name, kind)
    return RANKINGS.get(name)


def circuit_summary(diff: dict[str, Tensor], top_k: int) -> dict[str, Any]:
    """Top units by most negative R_diff and the per-layer distribution, for neurons and heads."""
    out: dict[str, Any] = {}
    for kind in ("neuron", "head"):
        if kind not in diff:
            continue
        d = diff[kind]
        flat = d.flatten()
        k = min(top_k, flat.numel())
        vals, idx = torch.topk(-flat, k)
        top = [{"layer": int(i) // d.shape[1], "index": int(i) % d.shape[1], "r_diff": float(-v)}
               for v, i in zip(vals, idx, strict=True)]
        counts = torch.bincount(idx // d.shape[1], minlength=d.shape[0])
        share = d.abs().sum(1) / d.abs().sum().clamp_min(1e-30)
        out[kind] = {
            "top_units": top,
            "per_layer": [{"layer": layer, "top_count": int(counts[layer]), "abs_share": float(share[layer])}
                          for layer in range(d.shape[0])],
        }
    return out


def save_relevance(path: Path, rel: dict[str, Relevance], diff: dict[str, Tensor]) -> None:
    """``relevance.safetensors``: each set's mean relevance and R_diff, with the sample counts."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.contiguous() for name, r in rel.items() for k, v in r.scores.items()}
    tensors |= {f"diff.{k}": v.contiguous() for k, v in diff.items()}
    meta = {f"{name}.n_samples": str(r.n_samples) for name, r in rel.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
