"""Cheap fluency signals: a scorer reads looping or broken text as clean, so report these beside it."""

from __future__ import annotations

from ..errors import ConfigError


def distinct_n(texts: list[str], n: int = 2) -> list[float]:
    """Per text: unique whitespace n-grams / all n-grams (0.0 when a text has none)."""
    if n < 1:
        raise ConfigError(f"distinct_n: n={n}; use n >= 1.")
    out = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else 0.0)
    return out


def uniqueness_ratio(token_ids: list[int]) -> float:
    """Unique tokens / tokens; low values flag repetition loops (0.0 when empty)."""
    return len(set(token_ids)) / len(token_ids) if token_ids else 0.0
