"""Capability retention beyond perplexity: last-word accuracy and continuation token-F1 on held-out documents.

Why: prose perplexity averages over every token, so a correction can keep it while breaking what the model is used
for (Lee et al. 2024 report token-F1 of Wikipedia continuations; LAMBADA, Paperno et al. 2016, the final word of a
passage). No benchmark data set ships offline (the lm-eval and lighteval wheels hold task configs, not data), so
both metrics are computed from the suite's own general documents: the *test* part for every reported number, the
*validation* part when a setting is chosen (``capability_set`` is told which, and never reads the other).

Definitions (one item per document, so the bootstrap resamples independent documents):

- **Last-word accuracy.** A document (whitespace collapsed to single spaces) qualifies when it has at least
  ``MIN_PASSAGE_WORDS`` words and its final word, stripped of the punctuation around it, is made of letters (with
  internal ``'`` or ``-``). The context is every character before that word (left-truncated to
  ``MAX_CONTEXT_TOKENS`` tokens); the target is the word with its leading space (none after an opening quote or
  bracket, which stays in the context), as the tokenizer encodes it after the context. A passage counts as correct
  when greedy decoding from the context produces exactly the target's tokens and then a token that does not
  continue the word (a special token, or one whose text does not start with a letter or digit): "play" is not
  matched by "playing". Case and spelling must match exactly. Greedy decoding produces the target iff every target
  token is the argmax given the previous ones, so one teacher-forced forward pass decides it (the "is greedy" rule
  of lm-eval's LAMBADA, plus the word-end check).
- **Continuation token-F1.** A document qualifies when it has more than ``PROMPT_WORDS`` words and at least
  ``CONTINUATION_TOKENS`` tokens after them. The prompt is its first ``PROMPT_WORDS`` words; the reference is the
  next ``CONTINUATION_TOKENS`` tokens of the document; the model continues the prompt greedily for as many tokens
  (stopping at end of sequence). F1 is computed on the multisets of token ids: overlap = sum over ids of
  min(count in continuation, count in reference), precision = overlap / continuation length, recall = overlap /
  reference length, F1 = 2PR / (P + R), and 0 when nothing overlaps or the continuation is empty. This is Lee et
  al.'s F1 (their code: 20 new tokens, token-id multisets) except that their prompt is 32 *tokens*; 32 words end
  the prompt at a word boundary, so the reference tokens are the document's own, not a re-split word.

Prompts and contexts are plain text, never wrapped in a chat template: general prose is not a chat turn.

Both are reported with 95% bootstrap intervals over documents and, against the unpruned model on the same
documents, as a paired drop (``*_drop`` = unpruned minus pruned, in absolute units; the gate's
``last_word_accuracy_drop>0.02`` fails a loss of more than 2 accuracy points).
"""

from __future__ import annotations

import logging
import re
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import DataSourceError
from .generation import generate_detailed, rows_per_batch
from .perplexity import _max_positions
from .stats import paired_bootstrap_diff, summarize

log = logging.getLogger(__name__)

MIN_PASSAGE_WORDS = 50
"""A last-word passage has at least this many words (issue 23; enough context for the final word to be
predictable from the passage, as in LAMBADA)."""
MAX_CONTEXT_TOKENS = 256
"""Context kept before the final word (the end of the document); bounds the cost of long news articles."""
PROMPT_WORDS = 32
"""Words of a document's beginning that prompt the continuation."""
CONTINUATION_TOKENS = 20
"""Reference and generated continuation length (Lee et al.'s 20 new tokens)."""
MIN_ITEMS = 100
"""Fewest qualifying documents per metric. With n items the 95% interval of an accuracy is about
+-1.96 sqrt(p (1 - p) / n): at n = 100 at most +-0.098, already wider than the accuracy losses the gate is meant to
catch, and below that the percentile bootstrap of a 0/1 score resamples too few distinct values to be trusted. The
packaged suites' general test part has 155 documents of >= 50 words, the validation part 139."""

_OPEN = "\"'“‘([{«"
_CLOSE = "\"'”’)]}».,;:!?…"
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


@dataclass(frozen=True)
class Passage:
    """A last-word item: the tokens of context + target, and where the target starts."""

    ids: tuple[int, ...]
    start: int
    word: str


@dataclass(frozen=True)
class Continuation:
    """A continuation item: the prompt text (encoded again by generation) and the true next tokens."""

    prompt: str
    reference: tuple[int, ...]


@dataclass(frozen=True)
class CapabilityScores:
    """Per-item scores, in item order: 1.0/0.0 per passage, F1 per continuation."""

    last_word: list[float]
    f1: list[float]


@dataclass
class CapabilitySet:
    """The items of one general split (``split`` names it in messages and results), built by ``capability_set``.

    It remembers the scores of the last unpruned (reference) model it measured, through a weak reference, so each
    pruned copy is paired against the unpruned model without measuring it again."""

    split: str
    n_documents: int
    passages: list[Passage]
    continuations: list[Continuation]
    _reference: tuple[weakref.ref[torch.nn.Module], CapabilityScores] | None = field(default=None, repr=False)

    def reference_scores(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 16) -> CapabilityScores:
        """The unpruned ``model``'s scores, measured once per model object."""
        if self._reference is not None and self._reference[0]() is model:
            return self._reference[1]
        scores = measure(model, tokenizer, self, batch_size)
        self._reference = (weakref.ref(model), scores)
        return scores


def _last_word(text: str) -> tuple[str, str] | None:
    """``(context, target)``: the final word of ``text`` (punctuation around it removed) as the text that follows
    ``context`` (with its leading space; none after an opening quote or bracket, which stays in the context);
    None when that word is not letters (a number, a code, a formula)."""
    head, _, last = text.rpartition(" ")
    word = last.rstrip(_CLOSE)
    opening = word[:len(word) - len(word.lstrip(_OPEN))]
    word = word[len(opening):]
    if not _WORD.fullmatch(word):
        return None
    return (f"{head} {opening}", word) if opening else (head, " " + word)


def _split_ids(tokenizer: Any, head: str, tail: str) -> tuple[list[int], list[int]] | None:
    """``head`` and ``tail`` as ``head + tail`` is encoded; None when the tokens of ``head`` alone are not a prefix
    of it (a token would straddle the boundary, so the tail has no tokens of its own)."""
    full = tokenizer(head + tail)["input_ids"]
    ids = tokenizer(head)["input_ids"]
    return (ids, full[len(ids):]) if full[:len(ids)] == ids and len(full) > len(ids) else None


def capability_set(tokenizer: Any, documents: Sequence[str], split: str) -> CapabilitySet:
    """The last-word passages and continuation prompts of ``documents`` (one general split: ``split`` says which,
    e.g. "general test"), or a DataSourceError when either has fewer than ``MIN_ITEMS`` items."""
    passages: list[Passage] = []
    continuations: list[Continuation] = []
    for doc in documents:
        words = doc.split()
        text = " ".join(words)
        found = _last_word(text) if len(words) >= MIN_PASSAGE_WORDS else None
        parts = _split_ids(tokenizer, *found) if found else None
        if found and parts:
            context = parts[0][-MAX_CONTEXT_TOKENS:]
            passages.append(Passage((*context, *parts[1]), len(context), found[1].strip()))
        if len(words) > PROMPT_WORDS:
            prompt = " ".join(words[:PROMPT_WORDS])
            parts = _split_ids(tokenizer, prompt, " " + " ".join(words[PROMPT_WORDS:]))
            if parts and len(parts[1]) >= CONTINUATION_TOKENS:
                continuations.append(Continuation(prompt, tuple(parts[1][:CONTINUATION_TOKENS])))
    short = [(name, n) for name, n in (("last-word passages", len(passages)),
                                        ("continuation prompts", len(continuations))) if n < MIN_ITEMS]
    if short:
        found_words = ", ".join(f"{n} {name}" for name, n in short)
        raise DataSourceError(
            f"The {split} documents ({len(documents)} of them) give only {found_words}; the capability metrics need "
            f"at least {MIN_ITEMS} of each for a 95% interval narrower than +-0.1. A passage is a document of >= "
            f"{MIN_PASSAGE_WORDS} words ending in a word of letters; a prompt is a document of > {PROMPT_WORDS} words "
            f"with >= {CONTINUATION_TOKENS} tokens after them. Give the suite more general text (general.source, "
            "general.test_words and general.validation_words), or set 'capability: false' in the probe suite to "
            "leave these metrics out.")
    log.info("Capability items from %d %s documents: %d last-word passages, %d continuation prompts",
             len(documents), split, len(passages), len(continuations))
    return CapabilitySet(split, len(documents), passages, continuations)


def _continues_word(tokenizer: Any, token: int) -> bool:
    """Whether ``token`` extends the word before it: its text starts with a letter or digit."""
    if token in tokenizer.all_special_ids:
        return False
    text = tokenizer.decode([token])
    return bool(text) and text[0].isalnum()


def _keep_last(p: Passage, limit: int) -> Passage:
    """``p`` with its context cut from the left so that the row fits ``limit`` positions (one context token kept)."""
    cut = min(max(0, len(p.ids) - limit), p.start - 1)
    return Passage(p.ids[cut:], p.start - cut, p.word) if cut else p


def last_word_hits(model: torch.nn.Module, tokenizer: Any, passages: Sequence[Passage], batch_size: int = 16
                   ) -> list[float]:
    """1.0 for each passage whose final word greedy decoding reproduces (see the module docstring), else 0.0."""
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = _max_positions(model)
    if limit is not None:  # a model with fewer positions sees less context (its last tokens), never a cut target
        passages = [_keep_last(p, limit) for p in passages]
    longest = max(len(p.ids) for p in passages)
    rows = rows_per_batch(model, device, batch_size, len(passages), longest, longest)
    order = sorted(range(len(passages)), key=lambda i: len(passages[i].ids))  # batches of like lengths: less padding
    hits = [0.0] * len(passages)
    for i in tqdm(range(0, len(order), rows), desc="last word", unit="batch", disable=len(order) <= rows):
        chunk = order[i:i + rows]
        width = max(len(passages[j].ids) for j in chunk)
        ids = torch.tensor([[*passages[j].ids, *[pad] * (width - len(passages[j].ids))] for j in chunk],
                           device=device)
        mask = torch.tensor([[1] * len(passages[j].ids) + [0] * (width - len(passages[j].ids)) for j in chunk],
                            device=device)
        # position t predicts token t + 1: the target's tokens, then the one after it (at the row's last position);
        # only those positions get logits (a vocabulary-wide row at every context position would cost most memory)
        keep = sorted({t for j in chunk for t in range(passages[j].start - 1, len(passages[j].ids))})
        column = {t: c for c, t in enumerate(keep)}
        with torch.inference_mode():
            greedy = model(input_ids=ids, attention_mask=mask,
                           logits_to_keep=torch.tensor(keep, device=device)).logits.argmax(-1).tolist()
        for j, row in zip(chunk, greedy, strict=True):
            p = passages[j]
            predicted = [row[column[t]] for t in range(p.start - 1, len(p.ids))]
            hits[j] = float(predicted[:-1] == list(p.ids[p.start:]) and not _continues_word(tokenizer, predicted[-1]))
    return hits


def token_f1(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """F1 of the multisets of token ids (0 when nothing overlaps)."""
    overlap = sum((Counter(predicted) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def continuation_f1s(model: torch.nn.Module, tokenizer: Any, items: Sequence[Continuation], batch_size: int = 16
                     ) -> list[float]:
    """Token-F1 of each prompt's greedy continuation against its reference tokens."""
    gens = generate_detailed(model, tokenizer, [c.prompt for c in items], max_new_tokens=CONTINUATION_TOKENS,
                             batch_size=batch_size, device=model.device)
    return [token_f1(row[0].continuation_ids, c.reference) for row, c in zip(gens, items, strict=True)]


def measure(model: torch.nn.Module, tokenizer: Any, items: CapabilitySet, batch_size: int = 16) -> CapabilityScores:
    """Both per-item scores of ``model`` on ``items``."""
    return CapabilityScores(last_word_hits(model, tokenizer, items.passages, batch_size),
                            continuation_f1s(model, tokenizer, items.continuations, batch_size))


def _drop(reference: list[float], pruned: list[float], seed: int) -> dict[str, Any]:
    """Mean of ``reference`` minus mean of ``pruned`` on the same items, with its paired 95% interval."""
    d = paired_bootstrap_diff(pruned, reference, seed=seed)
    return {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "p_value": d["p_value"],
            "n": len(pruned)}


def capability_metrics(model: torch.nn.Module, reference: torch.nn.Module, tokenizer: Any, items: CapabilitySet,
                       seed: int, batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """``last_word_accuracy`` and ``continuation_f1`` of ``model`` (each ``{value, ci_low, ci_high, n}``) and their
    paired drops from ``reference`` (the unpruned model; 0 with interval [0, 0] when ``model`` is it), each
    with ``split`` naming the documents measured and ``documents`` counting them (``n`` of them qualified)."""
    ref = items.reference_scores(reference, tokenizer, batch_size)
    got = ref if model is reference else measure(model, tokenizer, items, batch_size)
    out: dict[str, dict[str, Any]] = {}
    where = {"split": items.split, "documents": items.n_documents}
    for key, mine, theirs in (("last_word_accuracy", got.last_word, ref.last_word),
                              ("continuation_f1", got.f1, ref.f1)):
        out[key] = summarize(mine, seed=seed) | where
        out[f"{key}_drop"] = _drop(theirs, mine, seed) | where
    return out
