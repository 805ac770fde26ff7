"""The catalogue of ranking methods: names and the unit kinds each can rank. No torch here, so the CLI can
validate ``--method`` before anything heavy loads; ``contrast.RANKINGS`` implements exactly these."""

from __future__ import annotations

import math
from collections.abc import Sequence

UNIT_KINDS = ("neuron", "head", "weight")
RANKING_KINDS: dict[str, tuple[str, ...]] = {
    "lrp": UNIT_KINDS,
    "gradient": UNIT_KINDS,
    "wanda": UNIT_KINDS,
    "activation": UNIT_KINDS,
    "magnitude": UNIT_KINDS,
    # AurA (Suau et al. 2024) as published: every MLP neuron whose AUROC (pooled activation, flagged vs unflagged
    # reference continuations) is above 0.5 gets gain 1 - 2 (AUROC - 0.5); nothing to choose
    "aura": ("neuron",),
    "aura-topk": ("neuron",),  # the same AUROC, as a ranking: the top k neurons are zeroed (or dampened)
    "random": UNIT_KINDS,
}
COMPARED = ("lrp", "gradient", "wanda", "activation", "aura", "aura-topk", "random")  # what --method all runs
FIXED_GAINS = ("aura",)  # methods that set their own per-unit gains: no k, strength or threshold to choose
SCORELESS = ("random",)  # no scores to make proportional gains from
INTERVENTIONS = ("zero", "proportional")
POOLINGS = ("max", "mean")  # how AurA pools a neuron's activations over a continuation
COMPRESS_METHODS = ("lrp", "wanda", "magnitude", "gradient", "random")
CIRCUIT_METHODS = ("lrp", "gradient", "activation", "magnitude", "random")


def check_strengths(values: Sequence[float], flag: str = "--strength") -> None:
    """Each strength of proportional gains in [0, 1]: 0 changes nothing, 1 silences the most undesired unit."""
    from .errors import ConfigError

    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside [0, 1]: the most undesired unit keeps 1 - strength of its "
                          "output (0 changes nothing, 1 silences it). Give values such as 0.25,0.5,1.")


def check_thresholds(values: Sequence[float], flag: str = "--threshold") -> None:
    """Each threshold in [0, 1): a unit is dampened when its normalised score exceeds it."""
    from .errors import ConfigError

    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v < 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside [0, 1): units whose normalised score exceeds it are "
                          "dampened (0: every unit the contrast puts on the undesired side; 1 would dampen none).")


def check_reaches(values: Sequence[float], flag: str = "--reach") -> None:
    """Each reach in (0, 1]: units whose normalised score reaches it get the full dampening 1 - strength."""
    from .errors import ConfigError

    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 < v <= 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside (0, 1]: every unit whose normalised score reaches it gets "
                          "the full gain 1 - strength, the rest 1 - strength * score / reach (1: only the top unit; "
                          "0.1: every unit within a tenth of it). Give values such as 1,0.3,0.1.")


def check_ranking(name: str, kind: str) -> None:
    """A clear error for an unknown method or a unit kind it cannot rank."""
    from .errors import ConfigError

    if name not in RANKING_KINDS:
        raise ConfigError(f"--method {name} is unknown. Choose one of: all, {', '.join(RANKING_KINDS)}.")
    kinds = RANKING_KINDS[name]
    if kind not in kinds:
        raise ConfigError(f"--method {name} ranks {' and '.join(kinds)} units only; use --unit {kinds[0]}.")
