"""Behaviour scorers by name (toxicity, repetition, ...); each states its limits so the report can name them."""

from __future__ import annotations

import inspect

from ..errors import ConfigError
from .base import Scorer
from .detoxify import DetoxifyScorer
from .profanity import ProfanityScorer
from .repetition import RepetitionScorer
from .toxblock import ToxBlockScorer

SCORERS: dict[str, type[Scorer]] = {"profanity": ProfanityScorer, "detoxify": DetoxifyScorer,
                                     "repetition": RepetitionScorer, "toxblock": ToxBlockScorer}


def get_scorer(name: str, **options) -> Scorer:
    """Build the scorer called ``name`` with its options (e.g. ``checkpoint`` for detoxify, ``head`` for toxblock)."""
    if name not in SCORERS:
        raise ConfigError(f"Unknown scorer {name!r}. Available: {', '.join(SCORERS)}.")
    cls = SCORERS[name]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ConfigError(
            f"Scorer {name!r}: bad options {sorted(options)} ({exc}). Accepted: {accepted}."
        ) from exc
    return cls(**options)


__all__ = ["SCORERS", "DetoxifyScorer", "ProfanityScorer", "RepetitionScorer", "Scorer", "ToxBlockScorer",
           "get_scorer"]
