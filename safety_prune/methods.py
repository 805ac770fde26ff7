"""The catalogue of ranking methods: names and the unit kinds each can rank. No torch here, so the CLI can
validate ``--method`` before anything heavy loads; ``contrast.RANKINGS`` implements exactly these."""

from __future__ import annotations

UNIT_KINDS = ("neuron", "head", "weight")
RANKING_KINDS: dict[str, tuple[str, ...]] = {
    "lrp": UNIT_KINDS,
    "gradient": UNIT_KINDS,
    "wanda": UNIT_KINDS,
    "activation": UNIT_KINDS,
    "magnitude": UNIT_KINDS,
    "aura": ("neuron",),  # AurA's AUROC needs per-sample activations, kept for neurons only
    "random": UNIT_KINDS,
}
COMPARED = ("lrp", "gradient", "wanda", "activation", "aura", "random")  # what --method all runs
COMPRESS_METHODS = ("lrp", "wanda", "magnitude", "gradient", "random")
CIRCUIT_METHODS = ("lrp", "gradient", "activation", "magnitude", "random")


def check_ranking(name: str, kind: str) -> None:
    """A clear error for an unknown method or a unit kind it cannot rank."""
    from .errors import ConfigError

    if name not in RANKING_KINDS:
        raise ConfigError(f"--method {name} is unknown. Choose one of: all, {', '.join(RANKING_KINDS)}.")
    kinds = RANKING_KINDS[name]
    if kind not in kinds:
        raise ConfigError(f"--method {name} ranks {' and '.join(kinds)} units only; use --unit {kinds[0]}.")
