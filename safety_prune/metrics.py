"""The metric catalogue shared by the deployment gate and the report.

Neutral ground: the gate (``gate.py``) and the renderer (``render/``) both read it, and neither imports the other
for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the type only: the gate imports this catalogue, and stays light without pydantic
    from .results import MetricKey

# key, label (generic: ``metric_labels`` names the suite's behaviour), what it means, which direction is better
METRICS: tuple[tuple[MetricKey, str, str, str], ...] = (
    ("behaviour_rate", "Behaviour rate", "share of continuations scoring above the scorer threshold", "lower"),
    ("behaviour_mean", "Mean behaviour score", "mean scorer output over continuations", "lower"),
    ("behaviour_expected_max", "Expected max behaviour score", "mean over prompts of the highest-scoring sample",
     "lower"),
    ("behaviour_probability", "Behaviour probability", "share of prompts with at least one flagged sample",
     "lower"),
    ("perplexity", "Perplexity (general text)", "held-out general prose; a rise means general ability lost",
     "lower"),
    ("distinct2", "Distinct-2", "unique bigrams / bigrams per continuation; low means looping text", "higher"),
    ("continuation_perplexity", "Continuation perplexity",
     "continuations under the original model; high means garbled text", "lower"),
    # capability retention (evaluation/capability.py), on the general test documents; one item per document
    ("last_word_accuracy", "Last-word accuracy",
     "share of held-out general documents (>= 50 words) whose final word greedy decoding reproduces exactly "
     "(LAMBADA-style)", "higher"),
    ("continuation_f1", "Continuation token-F1",
     "token-F1 of the greedy 20-token continuation of a held-out document's first 32 words against its true next "
     "20 tokens", "higher"),
    ("last_word_accuracy_drop", "Last-word accuracy drop",
     "the unpruned model's last-word accuracy minus this model's, on the same documents (paired interval; 0 for "
     "the unpruned model)", "lower"),
    ("continuation_f1_drop", "Continuation token-F1 drop",
     "the unpruned model's continuation token-F1 minus this model's, on the same documents (paired interval; 0 "
     "for the unpruned model)", "lower"),
)
METRIC_KEYS: tuple[MetricKey, ...] = tuple(m[0] for m in METRICS)
METRIC_LABELS: dict[str, str] = {m[0]: m[1] for m in METRICS}
"""Generic labels; pages and messages about a run use ``metric_labels(results["probe"].get("behaviour"))``."""

BEHAVIOUR_KEYS: tuple[str, ...] = ("behaviour_rate", "behaviour_mean", "behaviour_expected_max",
                                   "behaviour_probability")
"""The metrics computed from the scorer's output (the rest measure fluency and general ability)."""

CAPABILITY_KEYS: tuple[str, ...] = ("last_word_accuracy", "continuation_f1", "last_word_accuracy_drop",
                                    "continuation_f1_drop")
"""The capability-retention metrics: present when the probe suite measures them (``capability``, on by default)."""

LEGACY_ALIASES: dict[str, str] = {
    "toxicity_rate": "behaviour_rate", "toxicity_mean": "behaviour_mean",
    "expected_max_toxicity": "behaviour_expected_max", "toxicity_probability": "behaviour_probability"}
"""Schema-1 metric names, accepted by ``--fail-on`` and a suite's ``thresholds`` for one schema version."""


def metric_labels(behaviour: Any = None) -> dict[str, str]:
    """Labels of every metric, worded by the probe suite's ``behaviour: {name, metric}`` (results.json:
    ``probe.behaviour``), e.g. "Rate of looping continuations" and "Mean repetition ratio"; generic wording
    where the suite (or an old results file) gives none."""
    labels = dict(METRIC_LABELS)
    info = behaviour if isinstance(behaviour, dict) else {}
    name, metric = (str(info[k]).strip() if isinstance(info.get(k), str) else "" for k in ("name", "metric"))
    if name:
        labels["behaviour_rate"] = f"Rate of {name}"
        labels["behaviour_probability"] = f"Probability of {name}"
    if metric:
        labels["behaviour_mean"] = f"Mean {metric}"
        labels["behaviour_expected_max"] = f"Expected max {metric}"
    return labels


def metric_ci(block: Mapping[str, Any], key: str) -> list[float] | None:
    """The 95% interval ``block[key + "_ci"]`` as two floats, or None when the block records none."""
    ci = block.get(f"{key}_ci")
    return [float(ci[0]), float(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None
