"""The catalogue of methods, with the registry of ranking methods (``RANKINGS``): the one place a ranking's name is
declared, with what the options check before torch loads (the unit kinds it ranks, whether it sets its own gains).
Each entry points at its ``contrast.Ranking``, imported on first use, so the CLI validates ``--method`` without
torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .registry import Declaration, Registry

UNIT_KINDS = ("neuron", "head", "weight")


@dataclass(frozen=True)
class Method(Declaration):
    """A ranking method: ``target`` is its ``contrast.Ranking``; the rest is what options know without it."""

    units: tuple[str, ...] = UNIT_KINDS  # the unit kinds it can rank
    own_gains: bool = False  # sets its own per-unit gains: no k, strength or threshold to choose
    scored: bool = True  # has scores to make proportional gains from (not the random control)
    in_all: bool = True  # compared by --method all


RANKINGS: Registry[Any] = Registry("ranking method", {  # Any: contrast.Ranking, which imports torch
    "lrp": Method("safety_prune.contrast:LRP"),
    "gradient": Method("safety_prune.contrast:GRADIENT"),
    "wanda": Method("safety_prune.contrast:WANDA"),
    "activation": Method("safety_prune.contrast:ACTIVATION"),
    "magnitude": Method("safety_prune.contrast:MAGNITUDE", in_all=False),
    # AurA (Suau et al. 2024) as published: every MLP neuron whose AUROC (pooled activation, flagged vs unflagged
    # reference continuations) is above 0.5 gets gain 1 - 2 (AUROC - 0.5); nothing to choose
    "aura": Method("safety_prune.contrast:AURA", units=("neuron",), own_gains=True),
    # the same AUROC, as a ranking: the top k neurons are zeroed (or dampened)
    "aura-topk": Method("safety_prune.contrast:AURA_TOPK", units=("neuron",)),
    "random": Method("safety_prune.contrast:RANDOM", scored=False),
})


def method_info(name: str) -> Method:
    """What ``RANKINGS`` declares about the ranking method ``name`` (a clear error when it is unknown)."""
    declared = RANKINGS.declaration(name)
    assert isinstance(declared, Method)
    return declared


def compared(unit: str) -> list[str]:
    """What --method all runs for this unit kind, in the registry's order."""
    return [m for m in RANKINGS if method_info(m).in_all and unit in method_info(m).units]


INTERVENTIONS = ("zero", "proportional")
# How the validation search chooses among the settings that keep every limit (--select-by), with the words
# results.json's cross_fit.rule uses for each.
RULES = {"budget": "the strongest feasible setting (largest sum of 1 - gain); the behaviour scores do not choose",
         "cost": "the costliest feasible setting (largest validation perplexity within the limit); the behaviour "
                 "scores do not choose",
         "effect": "one standard error over the folds' reductions; the simplest within it"}
ORDERED = {"budget": "dampening", "cost": "perplexity"}  # the rules that order rows by a field, not by the behaviour
POOLINGS = ("max", "mean")  # how AurA pools a neuron's activations over a continuation
COMPRESS_METHODS = ("lrp", "wanda", "magnitude", "gradient", "random")
CIRCUIT_METHODS = ("lrp", "gradient", "activation", "magnitude", "random")


def check_strengths(values: Sequence[float], flag: str = "--strength") -> None:
    """Each strength of proportional gains in [0, 1]: 0 changes nothing, 1 silences the most undesired unit."""
    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside [0, 1]: the most undesired unit keeps 1 - strength of its "
                          "output (0 changes nothing, 1 silences it). Give values such as 0.25,0.5,1.")


def check_thresholds(values: Sequence[float], flag: str = "--threshold") -> None:
    """Each threshold in [0, 1): a unit is dampened when its normalised score exceeds it."""
    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v < 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside [0, 1): units whose normalised score exceeds it are "
                          "dampened (0: every unit the contrast puts on the undesired side; 1 would dampen none).")


def check_reaches(values: Sequence[float], flag: str = "--reach") -> None:
    """Each reach in (0, 1]: units whose normalised score reaches it get the full dampening 1 - strength."""
    bad = [v for v in values if not (isinstance(v, int | float) and math.isfinite(v) and 0 < v <= 1)]
    if bad:
        raise ConfigError(f"{flag} {bad[0]} lies outside (0, 1]: every unit whose normalised score reaches it gets "
                          "the full gain 1 - strength, the rest 1 - strength * score / reach (1: only the top unit; "
                          "0.1: every unit within a tenth of it). Give values such as 1,0.3,0.1.")


def check_ranking(name: str, kind: str) -> None:
    """A clear error for an unknown method or a unit kind it cannot rank."""
    if name not in RANKINGS:
        raise RANKINGS.unknown(name, "--method", also=("all",))
    kinds = method_info(name).units
    if kind not in kinds:
        raise ConfigError(f"--method {name} ranks {' and '.join(kinds)} units only; use --unit {kinds[0]}.")
