"""Perplexity: strided sliding window over a corpus, and per-continuation perplexity for fluency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataSourceError
from .generation import rows_per_batch


@dataclass
class PerplexityResult:
    """Corpus perplexity plus per-window sums, so callers can bootstrap a CI over windows."""

    perplexity: float
    nll: float
    n_tokens: int
    window_nll_sums: list[float] = field(default_factory=list)
    window_counts: list[int] = field(default_factory=list)

    def ci(self, seed: int, n_boot: int = 1000) -> tuple[float, float]:
        """95% percentile bootstrap CI of the perplexity, resampling windows."""
        sums, counts = np.asarray(self.window_nll_sums), np.asarray(self.window_counts)
        idx = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
        boot = np.exp(sums[idx].sum(1) / counts[idx].sum(1))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return float(lo), float(hi)


def _max_positions(model) -> int | None:
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _nll_sums(model, rows: list[list[int]], starts: list[int], device, pad_id: int
              ) -> list[tuple[float, int]]:
    """For each row, sum -log p(token) over positions >= start (start >= 1), on a right-padded batch."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    pos = torch.arange(1, width, device=device)[None]
    lengths = mask.sum(1, keepdim=True)
    keep = (pos >= torch.tensor(starts, device=device)[:, None]) & (pos < lengths)
    sums = -torch.where(keep, logp, 0.0).sum(1)
    return [(float(s), int(k)) for s, k in zip(sums.tolist(), keep.sum(1).tolist(), strict=True)]


def perplexity(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    device=None,
    separator: str = "\n\n",
) -> PerplexityResult:
    """Sliding-window perplexity (HF perplexity guide) of ``texts`` joined by ``separator``.

    Each window scores only the tokens past the previous window's end, with the rest as context;
    the first window scores all but its first token (nothing precedes it). When ``stride == max_length``
    windows do not overlap, so each window's first token has no context and is not scored.
    """
    limit = _max_positions(model)
    if limit is not None:
        max_length = min(max_length, limit)
    if max_length < 2 or stride < 1 or batch_size < 1:
        raise ConfigError(
            f"max_length={max_length}, stride={stride}, batch_size={batch_size}: "
            "need max_length >= 2, stride >= 1 and batch_size >= 1."
        )
    stride = min(stride, max_length)
    ids = tokenizer(separator.join(texts))["input_ids"]
    if len(ids) < 2:
        raise DataSourceError(
            f"Perplexity text has {len(ids)} token(s) from {len(texts)} text(s); at least 2 are needed. "
            "Check that the general-text source is not empty."
        )
    windows: list[tuple[int, int, int]] = []  # (begin, end, first scored position within the window)
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        windows.append((begin, end, max(1, prev_end - begin)))
        prev_end = end
        if end == len(ids):
            break
    device = torch.device(device) if device is not None else model.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = rows_per_batch(model, device, batch_size, len(windows), max_length, max_length)
    results: list[tuple[float, int]] = []
    for i in tqdm(range(0, len(windows), batch_size), desc="perplexity", unit="batch",
                  disable=len(windows) <= batch_size):
        chunk = windows[i:i + batch_size]
        results += _nll_sums(model, [ids[b:e] for b, e, _ in chunk], [s for _, _, s in chunk], device, pad_id)
    sums, counts = [s for s, _ in results], [c for _, c in results]
    n = sum(counts)
    nll = sum(sums) / n
    return PerplexityResult(math.exp(nll), nll, n, sums, counts)


def sequence_perplexities(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    continuation_ids: list[list[int]],
    *,
    batch_size: int = 8,
    device=None,
) -> list[float]:
    """Perplexity of each continuation given its prompt (fluency under a reference model).

    An empty continuation has no tokens to score and yields ``float('nan')``; aggregators must drop
    and count those. Prompts are left-truncated when prompt + continuation exceed the model's positions.
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ConfigError(
            f"{len(prompt_ids)} prompt id lists but {len(continuation_ids)} continuation id lists; "
            "pass one prompt per continuation."
        )
    limit = _max_positions(model)
    out = [math.nan] * len(prompt_ids)
    todo = []
    for i, (p, c) in enumerate(zip(prompt_ids, continuation_ids, strict=True)):
        if not c:
            continue
        if not p:
            raise DataSourceError(
                f"Sample {i} has an empty prompt, so its first continuation token has no context. "
                "Pass the prompt ids the continuation was generated from."
            )
        if limit is not None and len(c) >= limit:
            raise ConfigError(
                f"Sample {i}: continuation of {len(c)} tokens does not fit the model's {limit} positions; "
                "generate fewer max_new_tokens."
            )
        keep = len(p) if limit is None else min(len(p), limit - len(c))
        todo.append((i, list(p[len(p) - keep:]) + list(c), keep))
    todo.sort(key=lambda t: len(t[1]))
    device = torch.device(device) if device is not None else model.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    longest = max((len(row) for _, row, _ in todo), default=0)
    batch_size = rows_per_batch(model, device, batch_size, len(todo), longest, longest)
    for j in tqdm(range(0, len(todo), batch_size), desc="continuation ppl", unit="batch",
                  disable=len(todo) <= batch_size):
        chunk = todo[j:j + batch_size]
        sums = _nll_sums(model, [row for _, row, _ in chunk], [start for *_, start in chunk], device, pad_id)
        for (i, _, _), (s, k) in zip(chunk, sums, strict=True):
            out[i] = math.exp(s / k)
    return out
