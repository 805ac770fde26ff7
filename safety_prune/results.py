"""The results.json contract between the jobs, the gate and the report: typed sections, their builders, unit ids.

Every section of results.json is a type here, and these types are the one schema of the file: the jobs build
them, ``json_schema()`` derives the JSON Schema that ``safety-prune schema`` prints (and docs/results.schema.json
holds), and ``report`` checks a file against that same schema (``validate.py``) before anything is drawn.

Why ``TypedDict`` (checked and exported with pydantic): results.json is JSON, and the jobs build it as plain dicts
that the gate, the report and outside tools (``benchmarks/``) read with ``results["baseline"]["behaviour_rate"]``.
A TypedDict types exactly those dicts, so nothing changes at run time (the bytes of results.json stay what they
were), while pydantic's ``TypeAdapter`` turns the same declarations into a JSON Schema with the ranges a value must
keep. Dataclasses or pydantic models would add a conversion at every writer and reader for no gain.

One file on purpose, past the ~400 lines of a module: it is the schema, and a contract split over files is
read in pieces. A key every file of this schema version has is required; one added within the version (``probe.limit``,
``verdict``, ...) is ``NotRequired``, so files written before it still read. Nothing here loads a model or
imports torch: the renderer and the gate use it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from annotated_types import Gt, Interval, Len
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import NotRequired, TypedDict

SCHEMA_VERSION = 2
"""2: behaviour-neutral metric names (``behaviour_rate``, ``behaviour_mean``, ``behaviour_expected_max``,
``behaviour_probability``; schema 1 called them ``toxicity_rate``, ``toxicity_mean``, ``expected_max_toxicity``,
``toxicity_probability``), ``probe.thresholds.behaviour_rate``, and the secondary scorers (``scorer.secondary``,
``<block>.secondary.<name>``). Later additions that keep every key a schema-2 reader uses, and so need no bump:
``verdict`` (``gate.verdict``; the report judges a file without it the same way when it renders),
``probe.behaviour.language`` and ``probe.behaviour.comparability``."""


def unit_id(kind: str, layer: int, index: int | str, module: str | None = None) -> str:
    """The readable id of a unit: ``L3.mlp.neuron[17]``, ``L3.attn.head[2]``, ``L3.<module>.weight[row,col]``."""
    if kind == "neuron":
        return f"L{layer}.mlp.neuron[{index}]"
    if kind == "head":
        return f"L{layer}.attn.head[{index}]"
    return f"L{layer}.{module}.weight[{index}]"


Share = Annotated[float, Interval(ge=0, le=1)]
"""Rates, means, distinct-2, accuracy, F1, agreement: a share from 0 to 1."""
SignedShare = Annotated[float, Interval(ge=-1, le=1)]
"""A drop: the difference of two shares."""
Positive = Annotated[float, Gt(0)]
"""A perplexity. A rate of -5 or a perplexity of 0 is no measurement: only an edit makes one, and unchecked it
would pass a gate such as ``behaviour_rate>0.05``."""
Scalar = str | int | float | bool | None
"""One JSON value that is not an array or object."""
_T = TypeVar("_T")
_WHAT = "x-what"
"""A schema key of ours: how an error names what a value must be (``schema_check.py``)."""


def _what(text: str, *, closed: bool = False) -> Callable[[type[_T]], type[_T]]:
    """Config naming a section for the errors of ``schema_check.py`` (and documenting it in the JSON Schema);
    ``closed``: no key beyond the declared ones."""
    return with_config(ConfigDict(json_schema_extra={_WHAT: text}, **({"extra": "forbid"} if closed else {})))


_PAIR = Field(json_schema_extra={_WHAT: "a pair of numbers [low, high]"})
ShareCI = Annotated[list[Share], Len(2, 2), _PAIR]
"""A 95% interval [low, high] of a share."""
SignedShareCI = Annotated[list[SignedShare], Len(2, 2), _PAIR]
PositiveCI = Annotated[list[Positive], Len(2, 2), _PAIR]
MetricKey = Literal["behaviour_rate", "behaviour_mean", "behaviour_expected_max", "behaviour_probability", "perplexity",
                    "distinct2", "continuation_perplexity", "last_word_accuracy", "continuation_f1",
                    "last_word_accuracy_drop", "continuation_f1_drop"]
"""A metric of the catalogue (``metrics.METRIC_KEYS``, a test keeps them equal): a loop over the catalogue then
reads ``MetricBlock`` and ``MetricRow`` by keys a type checker knows."""


class Estimate(TypedDict):
    """A statistic with its 95% bootstrap interval over prompts (or tokens)."""

    value: float
    ci_low: float
    ci_high: float
    n: int


@_what('an object of numbers {"delta", "ci_low", "ci_high", "p_value"}')
class Paired(TypedDict):
    """A paired bootstrap of the per-prompt change (``evaluation.stats.paired_bootstrap_diff``)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: NotRequired[int]


@_what('an object of numbers, e.g. {"behaviour_rate": 0.1, "agreement": 0.9}')
class SecondaryMetrics(TypedDict):
    """One secondary scorer's view of the same continuations (``<block>.secondary.<name>``)."""

    behaviour_rate: NotRequired[Share | None]
    behaviour_rate_ci: NotRequired[ShareCI | None]
    behaviour_mean: NotRequired[Share | None]
    behaviour_mean_ci: NotRequired[ShareCI | None]
    agreement: NotRequired[Share | None]  # share of continuations both scorers flag alike (each above its threshold)


class Counted(TypedDict):
    """A measured metric's detail: ``n``, the prompts it was measured on."""

    n: NotRequired[Any]


class Details(TypedDict):
    """``<block>.details``: the metrics as measured (``flat_metrics``); the report reads the rate's prompt count."""

    behaviour_rate: NotRequired[Counted]


class _Measured(TypedDict):
    """What a block of metrics and a table row share: each metric's 95% interval, and how the row was made."""

    behaviour_rate_ci: NotRequired[ShareCI | None]
    behaviour_mean_ci: NotRequired[ShareCI | None]
    behaviour_expected_max_ci: NotRequired[ShareCI | None]
    behaviour_probability_ci: NotRequired[ShareCI | None]
    perplexity_ci: NotRequired[PositiveCI | None]
    distinct2_ci: NotRequired[ShareCI | None]
    continuation_perplexity_ci: NotRequired[PositiveCI | None]
    last_word_accuracy_ci: NotRequired[ShareCI | None]
    continuation_f1_ci: NotRequired[ShareCI | None]
    last_word_accuracy_drop_ci: NotRequired[SignedShareCI | None]
    continuation_f1_drop_ci: NotRequired[SignedShareCI | None]
    k: NotRequired[float | None]
    secondary: NotRequired[dict[str, SecondaryMetrics] | None]
    details: NotRequired[Details]
    fraction: NotRequired[float]
    intervention: NotRequired[dict[str, Any]]
    method: NotRequired[str]


@_what('an object of metrics, e.g. {"behaviour_rate": 0.02, "behaviour_rate_ci": [0.01, 0.03]}')
class MetricBlock(_Measured):
    """``baseline`` and ``corrected``: every metric of the catalogue (``metrics.METRIC_KEYS``, a test keeps them
    equal) as a plain number, ``<metric>_ci`` beside each (``flat_metrics``)."""

    behaviour_rate: NotRequired[Share]
    behaviour_mean: NotRequired[Share]
    behaviour_expected_max: NotRequired[Share]
    behaviour_probability: NotRequired[Share]
    perplexity: NotRequired[Positive]
    distinct2: NotRequired[Share]
    continuation_perplexity: NotRequired[Positive]
    last_word_accuracy: NotRequired[Share]
    continuation_f1: NotRequired[Share]
    last_word_accuracy_drop: NotRequired[SignedShare]
    continuation_f1_drop: NotRequired[SignedShare]
    paired_vs_baseline: NotRequired[Paired]
    paired_vs_random: NotRequired[Paired]


class MetricRow(_Measured):
    """One row of ``comparison`` (each method at the chosen budget) or ``tradeoff`` (the sweep): a metric the row
    did not measure may be null."""

    behaviour_rate: NotRequired[Share | None]
    behaviour_mean: NotRequired[Share | None]
    behaviour_expected_max: NotRequired[Share | None]
    behaviour_probability: NotRequired[Share | None]
    perplexity: NotRequired[Positive | None]
    distinct2: NotRequired[Share | None]
    continuation_perplexity: NotRequired[Positive | None]
    last_word_accuracy: NotRequired[Share | None]
    continuation_f1: NotRequired[Share | None]
    last_word_accuracy_drop: NotRequired[SignedShare | None]
    continuation_f1_drop: NotRequired[SignedShare | None]
    paired_vs_baseline: NotRequired[Paired | None]
    paired_vs_random: NotRequired[Paired | None]


class ModelInfo(TypedDict):
    """The model measured: how it was named (``spec``), what loaded, and its shape."""

    spec: Scalar
    name: Scalar
    family: NotRequired[str]
    n_layers: NotRequired[int]
    n_neurons_per_layer: NotRequired[int]
    n_heads: NotRequired[int]
    n_kv_heads: NotRequired[int]


class ProbeInfo(TypedDict):
    """The probe suite a run used (``compress`` records its name and description only)."""

    name: Scalar
    description: Any


class Generation(TypedDict):
    """``probe.generation``: how the continuations were decoded (the suite's ``GenerationSpec``)."""

    max_new_tokens: NotRequired[int]
    do_sample: NotRequired[bool]
    num_samples: NotRequired[int]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    batch_size: NotRequired[int]


class Behaviour(TypedDict):
    """``probe.behaviour``: what the report calls the behaviour and its score, and the scope of the prompts (the
    suite's ``BehaviourSpec``; a field the suite leaves unset is not written)."""

    name: NotRequired[str]
    metric: NotRequired[str]
    language: NotRequired[str]
    comparability: NotRequired[str]


class BehaviourProbe(ProbeInfo):
    """The ``probe`` of audit and correct: what was measured, on how many prompts."""

    n_eval_prompts: Any
    n_reference_prompts: NotRequired[int]
    chat_template: NotRequired[bool]
    generation: NotRequired[Generation]
    thresholds: NotRequired[dict[str, Share] | None]
    behaviour: NotRequired[Behaviour]
    language: NotRequired[Any]  # written before ``behaviour.language`` held it
    comparability: NotRequired[Any]  # likewise ``behaviour.comparability``
    limit: NotRequired[float | None]  # ``--limit``: prompts per split were cut to this many; None: full run


class Validation(TypedDict):
    """A scorer's check against labelled data; ``data_sha256``: {file: sum} of the files it read."""

    data_sha256: NotRequired[Any]


class ScorerBase(TypedDict):
    name: Scalar
    description: Any
    limits: Any
    threshold: Any
    behaviour: NotRequired[str]
    validation: NotRequired[Validation | None]


class ScorerInfo(ScorerBase):
    secondary: NotRequired[list[ScorerBase] | None]  # the suite's secondary scorers, same fields each


class Manifest(TypedDict):
    """What reproduces the run (``run.manifest``); every key is optional to the reader."""

    schema_version: NotRequired[int]
    command: NotRequired[Any]
    seed: NotRequired[int]
    git_commit: NotRequired[Any]
    git_dirty: NotRequired[Any]
    operator: NotRequired[Any]
    platform: NotRequired[Any]
    hardware: NotRequired[Any]
    versions: NotRequired[dict[str, Any] | None]
    data_sha256: NotRequired[dict[str, Any] | None]
    model_sha256: NotRequired[dict[str, Any] | None]
    started_unix: NotRequired[float]
    duration_s: NotRequired[float]
    stages_s: NotRequired[dict[str, float]]


class GateCheck(TypedDict):
    """One expression checked against one metric block (``gate.check_expr``)."""

    expr: str
    value: Any
    metric: NotRequired[str]
    op: NotRequired[str]
    threshold: NotRequired[float]
    ci: NotRequired[list[float] | None]
    failed: NotRequired[bool]
    settled: NotRequired[bool | None]
    label: NotRequired[str]


class Gate(TypedDict):
    """``gate.evaluate_gate``: whether the gated metrics passed, who set the expressions, on which block."""

    passed: bool
    source: str
    target: str
    checks: list[GateCheck]


State = Literal["pass", "fail", "unsettled", "worse", "none"]
Decision = Literal["pass", "fail", "unsettled"]


class ReducedRun(TypedDict):
    """A reduced run's ``--limit`` (``gate.reduced_run``): ``probe.limit``, or read from the recorded command."""

    n: float
    from_command: bool


class VerdictCheck(TypedDict):
    expr: str
    label: str
    from_gate: bool
    from_probe: bool
    base: GateCheck
    corr: GateCheck | None
    base_state: State
    corr_state: State | None


ReasonKind = Literal["worse", "no_threshold", "fail", "unsettled", "release_refused", "reduced_run", "met"]


class Reason(TypedDict):
    """Why the decision is what it is: ``kind`` and its data (``gate.verdict``)."""

    kind: ReasonKind
    checks: NotRequired[list[str]]
    reasons: NotRequired[list[str]]
    limit: NotRequired[float]
    by_point_value: NotRequired[list[str]]
    release_allowed: NotRequired[bool | None]


class Verdict(TypedDict):
    """``gate.verdict``: every check's state, the run's state and decision with its reasons."""

    state: State
    before: State
    after: State | None
    decision: Decision
    reasons: list[Reason]
    target: Literal["base", "corr"]
    checks: list[VerdictCheck]
    decisive: list[str]
    unsettled: list[str]
    worse: Paired | None
    limit: ReducedRun | None


class TopUnit(TypedDict):
    r_diff: Any
    layer: NotRequired[int]
    index: NotRequired[int]


class LayerShare(TypedDict):
    layer: float
    abs_share: float
    top_count: NotRequired[int]


class HeadsInfo(TypedDict):
    top_units: NotRequired[list[TopUnit] | None]
    per_layer: NotRequired[list[LayerShare] | None]


class CircuitInfo(TypedDict):
    """The ``circuit`` of audit and correct: the most negative units of R_diff and their layers."""

    method: NotRequired[str]
    n_undesired: NotRequired[int]
    n_general: NotRequired[int]
    sink_positions: NotRequired[int]
    normalisation: NotRequired[str]
    top_units: NotRequired[list[TopUnit] | None]
    per_layer: NotRequired[list[LayerShare] | None]
    heads: NotRequired[HeadsInfo | None]
    variant: NotRequired[str]
    conservation_ratio: NotRequired[dict[str, Any] | None]


@_what("an object", closed=True)
class Empty(TypedDict):
    """``{}``: the section stands for "none" (an audit's ``pruned``, a selection that chose nothing)."""


class Intervention(TypedDict):
    """How the units were changed (``interventions``): ``kind`` and that kind's settings."""

    kind: NotRequired[Any]
    scale: NotRequired[Any]
    strength: NotRequired[Any]
    reach: NotRequired[Any]
    threshold: NotRequired[Any]
    min_gain: NotRequired[Any]
    pooling: NotRequired[Any]


class Pruned(TypedDict):
    """What the correction changed: unit kind, how many, which (the first 200), how."""

    unit: Any
    count: Any
    fraction: NotRequired[float]
    intervention: NotRequired[Intervention]
    units: NotRequired[list[Scalar] | None]
    saved_model_sha256: NotRequired[str | dict[str, str]]


class SearchRow(TypedDict):
    """One candidate of the validation search."""

    k: Any
    scale: Any
    behaviour_mean: Any
    behaviour_rate: Any
    perplexity: Any
    distinct2: Any
    continuation_perplexity: Any
    violations: list[Any]
    generated: NotRequired[bool]
    dampening: NotRequired[float]  # sum over units of 1 - gain: what --select-by budget maximises
    note: NotRequired[str]  # why a candidate was not generated from, or (--select-by budget) not measured


class SelectionLimits(TypedDict):
    ppl_rise: float
    distinct2_drop: float
    continuation_ppl_rise: float


class SelectionSplit(TypedDict):
    n_prompts: Any
    n_tokens: Any


class Kind(TypedDict):
    kind: Any


class Selection(TypedDict):
    """How the budget was chosen (``selection``): the rule, and for rule "validation" the search."""

    rule: Any
    intervention: NotRequired[Kind]
    split: NotRequired[SelectionSplit]
    limits: NotRequired[SelectionLimits]
    search: NotRequired[list[SearchRow]]
    feasible: NotRequired[bool]
    k: NotRequired[Any]
    unit: NotRequired[str]
    exclude_layers: NotRequired[list[int]]
    guard: NotRequired[dict[str, Any]]
    objective: NotRequired[str]
    screen: NotRequired[dict[str, Any]]
    cross_fit: NotRequired[dict[str, Any]]
    stable: NotRequired[dict[str, Any]]
    stability: NotRequired[dict[str, Any]]


class Release(TypedDict):
    """Whether the corrected copy may be handed out (``jobs.correct.release_verdict``)."""

    allowed: bool
    reasons: NotRequired[list[Any] | None]
    reason: NotRequired[str]
    limits: NotRequired[dict[str, float]]


class TokenContext(TypedDict):
    """A token a unit responds to, in its text: ``left`` + ``token`` + ``right``; ``special`` names a special
    token by the marker text it decodes to."""

    token: NotRequired[Any]
    special: NotRequired[Any]
    left: NotRequired[Any]
    right: NotRequired[Any]
    relevance: NotRequired[Any]


class UnitExample(TypedDict):
    """A removed unit and the tokens it responds to most, in undesired and general text."""

    undesired: NotRequired[list[TokenContext] | None]
    general: NotRequired[list[TokenContext] | None]
    specificity: NotRequired[float | None]
    unit: NotRequired[str]
    layer: NotRequired[int]
    index: NotRequired[int]
    r_diff: NotRequired[float]


class Header(TypedDict):
    """The first keys of every results.json (``jobs.common.header``)."""

    schema_version: int
    job: str
    model: ModelInfo


class BehaviourResults(TypedDict):
    """results.json of ``audit`` and ``correct``: the behaviour measured (and corrected) on a probe suite."""

    schema_version: NotRequired[Literal[2]]
    job: Literal["audit", "correct"]
    method: NotRequired[str]
    model: ModelInfo
    probe: BehaviourProbe
    scorer: ScorerInfo
    baseline: MetricBlock
    corrected: NotRequired[MetricBlock | None]
    manifest: Manifest
    gate: NotRequired[Gate | None]
    verdict: NotRequired[Verdict | None]
    circuit: NotRequired[CircuitInfo | None]
    circuit_heatmap: NotRequired[list[list[float]]]
    pruned: NotRequired[Pruned | Empty | None]
    selection: NotRequired[Selection | Empty | None]
    contrast: NotRequired[dict[str, Any]]
    comparison: NotRequired[list[MetricRow] | None]
    tradeoff: NotRequired[list[MetricRow] | None]
    release: NotRequired[Release | None]
    unit_examples: NotRequired[list[UnitExample] | None]


class PerplexityBaseline(TypedDict):
    perplexity: Positive
    perplexity_ci: NotRequired[PositiveCI | None]
    n_tokens: NotRequired[int]


class CompressRow(TypedDict):
    """One compression method at the requested sparsity."""

    method: str
    sparsity: Share
    perplexity: Positive
    sparsity_requested: NotRequired[Share]
    pruned_weights: NotRequired[int]
    calibration_seconds: NotRequired[float]
    perplexity_ci: NotRequired[PositiveCI | None]
    n_tokens: NotRequired[int]
    ratio_vs_wanda: NotRequired[float | None]
    time_vs_wanda: NotRequired[float | None]


class CompressResults(TypedDict):
    """results.json of ``compress``: each method's perplexity at one sparsity."""

    schema_version: Literal[2]
    job: Literal["compress"]
    model: ModelInfo
    probe: ProbeInfo
    settings: dict[str, Any]
    baseline: PerplexityBaseline
    comparison: list[CompressRow]
    manifest: Manifest


class TaskScore(TypedDict):
    logit_diff: float
    accuracy: Share
    n: int


class CurvePoint(TaskScore):
    fraction_pruned: Share
    k: int


class CircuitResults(TypedDict):
    """results.json of ``circuit``: the task's accuracy as units are removed, and the circuit kept."""

    schema_version: Literal[2]
    job: Literal["circuit"]
    task: str
    model: ModelInfo
    settings: dict[str, Any]
    baseline: TaskScore
    chance: NotRequired[str]
    curves: dict[str, list[CurvePoint]]
    comparison: list[dict[str, Any]]
    circuit: dict[str, Any]
    manifest: Manifest


Results = Annotated[BehaviourResults | CompressResults | CircuitResults, Field(discriminator="job")]
"""A results.json of any job."""


class SampleRow(TypedDict):
    """One line of ``samples.jsonl``: a prompt, a continuation and its score."""

    score: NotRequired[float | None]
    prompt_index: NotRequired[Scalar]
    sample: NotRequired[Scalar]
    split: NotRequired[Scalar]  # "baseline", or "corrected:<method>"
    prompt: NotRequired[Scalar]
    continuation: NotRequired[Scalar]


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of results.json, generated from the types above (``safety-prune schema``)."""
    schema = TypeAdapter(Results).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"safety-prune results.json, schema_version {SCHEMA_VERSION}", **schema}


def schema_text() -> str:
    """``json_schema()`` as the text of docs/results.schema.json (a test keeps that file equal to it)."""
    return json.dumps(json_schema(), indent=1) + "\n"


@cache
def sample_schema() -> dict[str, Any]:
    """The JSON Schema of one line of samples.jsonl."""
    return TypeAdapter(SampleRow).json_schema()

def model_info(spec: str, name: str, family: str, geo: Any) -> ModelInfo:
    """``geo``: the model's ``families.Geometry`` (layers, neurons per layer, heads, kv heads)."""
    return {"spec": spec, "name": name, "family": family, "n_layers": geo.n_layers,
            "n_neurons_per_layer": geo.n_neurons, "n_heads": geo.n_heads, "n_kv_heads": geo.n_kv_heads}


def probe_info(suite: Any, n_eval: int, n_reference: int, limit: int | None = None) -> BehaviourProbe:
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
