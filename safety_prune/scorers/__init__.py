"""Behaviour scorers by name (toxicity, repetition, ...); each states its limits so the report can name them.

A scorer is one file in this package defining ``SCORER`` (its class), registered under the file's name and
imported only when used: a suite's scorer names are checked without the torch that some scorers pull in.
``base`` and ``validate`` are the package's helpers, not scorers.
"""

from __future__ import annotations

import inspect

from ..errors import ConfigError
from ..registry import Registry
from .base import Scorer

SCORERS: Registry[type[Scorer]] = Registry.discover("scorer", __name__, "SCORER", support=("base", "validate"))


def get_scorer(name: str, **options) -> Scorer:
    """Build the scorer called ``name`` with its options (e.g. ``checkpoint`` for detoxify, ``head`` for toxblock)."""
    cls = SCORERS.get(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ConfigError(
            f"Scorer {name!r}: bad options {sorted(options)} ({exc}). Accepted: {accepted}."
        ) from exc
    return cls(**options)


__all__ = ["SCORERS", "Scorer", "get_scorer"]
