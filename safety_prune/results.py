"""The results.json contract between the jobs and the report: typed sections, their builders, and unit ids.

Every job builds its results through the sections here, so a field is named in one place and the renderer
reads the same shapes. Nothing here loads a model or imports torch: the renderer and the gate use it too.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypedDict

SCHEMA_VERSION = 2
"""2: behaviour-neutral metric names (``behaviour_rate``, ``behaviour_mean``, ``behaviour_expected_max``,
``behaviour_probability``; schema 1 called them ``toxicity_rate``, ``toxicity_mean``, ``expected_max_toxicity``,
``toxicity_probability``), ``probe.thresholds.behaviour_rate``, and the secondary scorers (``scorer.secondary``,
``<block>.secondary.<name>``). Later additions that keep every key a schema-2 reader uses, and so need no bump:
``verdict`` (``gate.verdict``; the report judges a file without it the same way when it renders)."""


def unit_id(kind: str, layer: int, index: int | str, module: str | None = None) -> str:
    """The readable id of a unit: ``L3.mlp.neuron[17]``, ``L3.attn.head[2]``, ``L3.<module>.weight[row,col]``."""
    if kind == "neuron":
        return f"L{layer}.mlp.neuron[{index}]"
    if kind == "head":
        return f"L{layer}.attn.head[{index}]"
    return f"L{layer}.{module}.weight[{index}]"


class Estimate(TypedDict):
    """A statistic with its 95% bootstrap interval over prompts (or tokens)."""

    value: float
    ci_low: float
    ci_high: float
    n: int


class ModelInfo(TypedDict):
    spec: str
    name: str
    family: str
    n_layers: int
    n_neurons_per_layer: int
    n_heads: int
    n_kv_heads: int


class ProbeInfo(TypedDict, total=False):
    name: str
    description: str
    n_eval_prompts: int
    n_reference_prompts: int
    chat_template: bool
    generation: dict[str, Any]
    thresholds: dict[str, float]
    behaviour: dict[str, str]
    limit: int | None  # ``--limit``: prompts per split were cut to this many (a reduced run); None: full run


class ScorerInfo(TypedDict, total=False):
    name: str
    description: str
    limits: str
    threshold: float
    behaviour: str
    validation: dict[str, Any]
    secondary: list[ScorerInfo]  # the primary only: the suite's secondary scorers, same fields each


class SecondaryMetrics(TypedDict):
    """One secondary scorer's view of the same continuations (``<block>.secondary.<name>``)."""

    behaviour_rate: float
    behaviour_rate_ci: list[float]
    behaviour_mean: float
    behaviour_mean_ci: list[float]
    agreement: float  # share of continuations both scorers flag alike (each above its own threshold)


class TopUnit(TypedDict):
    layer: int
    index: int
    r_diff: float


class CircuitInfo(TypedDict, total=False):
    method: str
    n_undesired: int
    n_general: int
    sink_positions: int
    normalisation: str
    top_units: list[TopUnit]
    per_layer: list[dict[str, Any]]
    heads: dict[str, Any]
    variant: str
    conservation_ratio: dict[str, float]


def model_info(spec: str, name: str, family: str, geo: Any) -> ModelInfo:
    """``geo``: the model's ``families.Geometry`` (layers, neurons per layer, heads, kv heads)."""
    return {"spec": spec, "name": name, "family": family, "n_layers": geo.n_layers,
            "n_neurons_per_layer": geo.n_neurons, "n_heads": geo.n_heads, "n_kv_heads": geo.n_kv_heads}


def probe_info(suite: Any, n_eval: int, n_reference: int, limit: int | None = None) -> ProbeInfo:
    """The ``probe`` section of a behaviour job (audit, correct): what was measured, on how many prompts.

    ``limit``: the job's ``--limit`` (None for a full run); the report marks a reduced run as not a full
    measurement."""
    return {"name": suite.name, "description": suite.description, "n_eval_prompts": n_eval,
            "n_reference_prompts": n_reference, "chat_template": suite.chat_template,
            "generation": asdict(suite.generation), "thresholds": asdict(suite.thresholds),
            "behaviour": {k: v for k, v in asdict(suite.behaviour).items() if v is not None}, "limit": limit}


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in metrics.items():
        if isinstance(val, dict) and "value" in val:
            out[key] = val["value"]
            out[f"{key}_ci"] = [val["ci_low"], val["ci_high"]]
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``baseline.behaviour_rate`` etc. as plain numbers, with ``<name>_ci`` next to each; each secondary scorer
    as ``secondary.<name>.behaviour_rate`` (``_ci``), ``behaviour_mean`` (``_ci``) and ``agreement``
    (``secondary`` is ``{}`` without secondary scorers); ``details`` keeps ``metrics`` as measured."""
    out = _flat(metrics)
    out["secondary"] = {name: {**_flat(sec), "agreement": sec["agreement"]}
                        for name, sec in (metrics.get("secondary") or {}).items()}
    out["details"] = metrics
    return out


def circuit_info(circuit: dict[str, Any], method: str, n_undesired: int, n_general: int,
                 lrp_info: dict[str, dict[str, Any]] | None = None) -> CircuitInfo:
    """The ``circuit`` section shared by audit and correct; ``lrp_info`` holds each set's LRP ``info``."""
    out: CircuitInfo = {
        "method": method, "n_undesired": n_undesired, "n_general": n_general,
        "sink_positions": 1,
        "normalisation": "each set divided by its total |R| per unit kind; R_diff = the contrast of results.contrast "
                         "(most negative first), guarded units ranked last",
        "top_units": circuit.get("neuron", {}).get("top_units", []),
        "per_layer": circuit.get("neuron", {}).get("per_layer", []),
        "heads": circuit.get("head", {}),
    }
    if method == "lrp" and lrp_info:
        out["variant"] = str(lrp_info["general"].get("variant", "attnlrp"))
        out["conservation_ratio"] = {k: float(info["conservation_ratio"]) for k, info in lrp_info.items()}
    return out
