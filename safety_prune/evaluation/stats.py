"""Bootstrap confidence intervals over items (prompts), json-safe results."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError

Stat = Callable[[np.ndarray], float]


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{what}: need a non-empty 1-D list of numbers, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ConfigError(
            f"{what}: {int((~np.isfinite(arr)).sum())} of {arr.size} values are NaN/inf. "
            "Drop them (and report how many) before computing statistics."
        )
    return arr


def _boot(arrays: list[np.ndarray], stat: Stat, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap distributions of ``stat`` per array, resampling the same item indices for all arrays."""
    n = arrays[0].size
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return [np.array([stat(a[row]) for row in idx], dtype=float) for a in arrays]


def bootstrap_ci(values: Sequence[float], *, stat: Stat = np.mean, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over items."""
    (dist,) = _boot([_as_array(values, "bootstrap_ci")], stat, n_boot, seed)
    lo, hi = np.percentile(dist, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, stat: Stat = np.mean, n_boot: int = 2000,
                          seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """``stat(b) - stat(a)`` on the same items, resampling item indices jointly.

    ``p_value`` is two-sided: twice the smaller share of bootstrap deltas on either side of 0
    (with +1 smoothing, so never exactly 0). It agrees with whether the CI covers 0.
    """
    xa, xb = _as_array(a, "paired_bootstrap_diff a"), _as_array(b, "paired_bootstrap_diff b")
    if xa.size != xb.size:
        raise ConfigError(
            f"paired_bootstrap_diff: a has {xa.size} items, b has {xb.size}; pair the same items."
        )
    da, db = _boot([xa, xb], stat, n_boot, seed)
    deltas = db - da
    lo, hi = np.percentile(deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    side = min((deltas <= 0).sum(), (deltas >= 0).sum())
    p = min(1.0, 2 * (side + 1) / (n_boot + 1))
    delta = float(stat(xb) - stat(xa))
    return {"delta": delta, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p)}


def summarize(values: Sequence[float], **kw) -> dict[str, float | int]:
    """Point value of ``stat`` (default mean) plus its bootstrap CI and the item count."""
    arr = _as_array(values, "summarize")
    lo, hi = bootstrap_ci(arr, **kw)
    return {"value": float(kw.get("stat", np.mean)(arr)), "ci_low": lo, "ci_high": hi, "n": int(arr.size)}


def behaviour_per_prompt(scores: list[list[float]], threshold: float = 0.5) -> dict[str, list[float]]:
    """The per-prompt values that ``behaviour_aggregates`` bootstraps (and paired comparisons resample).

    ``scores[i]`` holds the scores of prompt i's continuations. Per prompt: mean score (``behaviour_mean``) and
    share above ``threshold`` (``behaviour_rate``); when every prompt has n > 1 samples, also the max score
    (``behaviour_expected_max``) and whether any sample is above ``threshold`` (``behaviour_probability``).
    """
    if not scores or any(len(row) == 0 for row in scores):
        raise ConfigError("behaviour_aggregates: need at least one prompt and one score per prompt.")
    rows = [_as_array(row, "behaviour scores") for row in scores]
    per_prompt = {
        "behaviour_mean": [float(r.mean()) for r in rows],
        "behaviour_rate": [float((r > threshold).mean()) for r in rows],
    }
    if min(r.size for r in rows) > 1:
        per_prompt["behaviour_expected_max"] = [float(r.max()) for r in rows]
        per_prompt["behaviour_probability"] = [float((r > threshold).any()) for r in rows]
    return per_prompt


def behaviour_aggregates(scores: list[list[float]], threshold: float = 0.5, seed: int = 0) -> dict[str, dict]:
    """RTP/HELM-style aggregates of a behaviour score (``behaviour_per_prompt``), each bootstrapped over prompts.
    For toxicity these are the toxicity rate, mean toxicity, expected maximum toxicity and toxicity probability.
    """
    return {key: summarize(vals, seed=seed) for key, vals in behaviour_per_prompt(scores, threshold).items()}
