"""Soft interventions: a gain per unit instead of removing the top k.

The behaviour is spread over many units, so zeroing a few has a low ceiling; published methods (AurA, AcT)
dampen many units a little. Gains are held two ways: a dense tensor per unit kind (``[layers, units]``, 1 =
untouched) while they are computed, and ``(units, gains)`` (the units whose gain is below 1, most dampened
first, and their gains) for :func:`~safety_prune.pruning.apply_masks`, masks.json and the saved model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .methods import check_reaches, check_strengths, check_thresholds
from .pruning import MaskSet, Scale, Unit, _finite, _gains, intervention_info, pruned_copy, select

# Searched on validation data when --strength / --threshold / --reach are not given: the grid of the measured
# default (README, Correction: reach 0.3 at s = 0.5 won; threshold 0.1 lost every comparison at ded217d).
STRENGTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # steps of 1/8: the budget rule stops near the limit
THRESHOLDS = (0.0,)
REACHES = (1.0, 0.3, 0.1, 0.03)  # 1: normalised by the top unit alone


def as_units(kind: str, dense: Tensor) -> tuple[MaskSet, Tensor]:
    """The units of a dense ``[layers, units]`` gain tensor whose gain is below 1, most dampened first (ties by
    position), with their gains."""
    flat = dense.double().flatten()
    chosen = (flat < 1).nonzero()[:, 0]
    chosen = chosen[torch.sort(flat[chosen], stable=True).indices]
    cols = dense.shape[1]
    return MaskSet._of(kind, chosen // cols, chosen % cols), flat[chosen]


def proportional(scores: dict[str, Tensor], kind: str, strength: float, threshold: float, reach: float = 1.0
                 ) -> Tensor:
    """Dense gains ``1 - strength * min(1, n / reach)`` for every unit whose normalised score ``n`` exceeds
    ``threshold``.

    ``n = max(0, -score) / max(-score)``: a ranking puts the most undesired unit lowest, so it gets ``n = 1`` and
    gain ``1 - strength``; units with a score >= 0 (the contrast sets need them as much, or they are guarded or
    excluded: ranked last) keep gain 1. ``reach`` < 1 saturates: every unit with ``n >= reach`` gets the full
    ``1 - strength``. Scores are heavy-tailed, so with ``reach`` 1 almost every gain stays near 1.
    """
    if kind not in ("neuron", "head"):
        raise ConfigError(f"Proportional gains apply to neuron and head units, not {kind} units; use --unit neuron "
                          "or --unit head, or --intervention zero.")
    if kind not in scores:
        raise ConfigError(f"The scores have no {kind} entries; attribute with {kind} units included.")
    check_strengths([strength])
    check_thresholds([threshold])
    check_reaches([reach])
    undesired = (-_finite(scores[kind], kind).double()).clamp_min(0)
    top = float(undesired.max())
    if top == 0:  # no unit on the undesired side: nothing to dampen
        return torch.ones_like(undesired)
    n = undesired / top
    return torch.where(n > threshold, 1 - strength * (n / reach).clamp_max(1), torch.ones_like(n))


@dataclass(frozen=True)
class Edit:
    """One method's change to the model: its units and how they change (``pruning.Scale``: removed, one
    dampening factor, or a gain per unit), with the setting that produced it (k, strength, ...)."""

    units: MaskSet
    scale: Scale
    setting: dict[str, Any] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> nn.Module:
        """An edited copy; ``model`` is not touched."""
        return pruned_copy(model, self.units, self.scale)

    def info(self) -> dict[str, Any]:
        """The intervention for results.json: the kind, the setting, and the gains' summary."""
        return intervention_info(self.scale) | self.setting

    def gains(self) -> dict[Unit, float]:
        """Each changed unit's gain (0: removed); a unit not listed keeps gain 1."""
        gains = _gains(self.units, 0.0 if self.scale is None else self.scale).tolist()
        return dict(zip(self.units, gains, strict=True))

    def dampening(self) -> float:
        """How much the edit removes in all: the sum over units of 1 - gain (k for zeroing k units). The budget
        rule's measure of strength, so incomparable edits (more units, or lower gains) still order."""
        return float(sum(1 - g for g in self.gains().values()))

    def at_least_as_strong_as(self, other: Edit) -> bool:
        """Whether this edit changes every unit at least as much as ``other`` does (each of ``other``'s units
        is among its own, with a gain no larger): perplexity is taken to rise with such an edit."""
        mine = self.gains()
        return all(mine.get(unit, 1.0) <= gain for unit, gain in other.gains().items())

    def matches(self, other: Edit) -> bool:
        """The same budget: as many units with the same gains (the random control's condition)."""
        if len(self.units) != len(other.units):
            return False
        if isinstance(self.scale, Tensor) and isinstance(other.scale, Tensor):
            return torch.equal(self.scale.sort().values, other.scale.sort().values)
        return not isinstance(self.scale, Tensor) and not isinstance(other.scale, Tensor) \
            and self.scale == other.scale


def gains_edit(kind: str, dense: Tensor, setting: dict[str, Any]) -> Edit:
    units, gains = as_units(kind, dense)
    return Edit(units, gains, setting)


def random_like(edit: Edit, random_scores: dict[str, Tensor], kind: str) -> Edit:
    """The random control of ``edit``: its gains (or removal) given to as many randomly ranked units."""
    units = select(random_scores, kind, k=len(edit.units)) if len(edit.units) else MaskSet()
    return Edit(units, edit.scale, edit.setting)
