"""The metric catalogue shared by the deployment gate and the report.

Neutral ground: the gate (``gate.py``) and the renderer (``render/``) both read it, and neither imports the other
for it.
"""

from __future__ import annotations

from typing import Any

# key, label, what it means, which direction is better
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("toxicity_rate", "Toxicity rate", "share of continuations scoring above the scorer threshold", "lower"),
    ("toxicity_mean", "Mean toxicity", "mean scorer output over continuations", "lower"),
    ("expected_max_toxicity", "Expected max toxicity", "mean over prompts of the highest-scoring sample", "lower"),
    ("toxicity_probability", "Toxicity probability", "share of prompts with at least one toxic sample", "lower"),
    ("perplexity", "Perplexity (general text)", "held-out general prose; a rise means general ability lost",
     "lower"),
    ("distinct2", "Distinct-2", "unique bigrams / bigrams per continuation; low means looping text", "higher"),
    ("continuation_perplexity", "Continuation perplexity",
     "continuations under the original model; high means garbled text", "lower"),
)
METRIC_KEYS: tuple[str, ...] = tuple(m[0] for m in METRICS)
METRIC_LABELS: dict[str, str] = {m[0]: m[1] for m in METRICS}


def metric_ci(block: dict[str, Any], key: str) -> list[float] | None:
    """The 95% interval ``block[key + "_ci"]`` as two floats, or None when the block records none."""
    ci = block.get(f"{key}_ci")
    return [float(ci[0]), float(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None
