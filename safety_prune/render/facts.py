"""The numbers the pages and the model card state, read from results.json: number formats, the counts behind
rates, p-values, the verdict (as ``gate.verdict`` computed it), a reduced run, the run id, the command line.

Nothing here draws HTML; the page (``page.py``), the comparison (``compare.py``) and the card (``card.py``) share it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, cast

from typing_extensions import TypedDict

from ..gate import evaluate_gate, reduced_run, verdict
from ..metrics import metric_labels
from ..results import (
    BehaviourResults,
    Gate,
    Manifest,
    MetricRow,
    Paired,
    Pruned,
    SecondaryMetrics,
    Selection,
    Verdict,
)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value == int(value) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def signed(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0" if value == 0 else f"{value:+.{digits}g}".replace("-", "\u2212")


def pct(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0%" if value == 0 else f"{100 * value:+.{1 if abs(value) >= 0.001 else 2}f}%".replace("-", "\u2212")


def signal(ci_a: Sequence[float] | None, ci_b: Sequence[float] | None) -> str:
    """The page's significance note: separate 95% intervals are 'likely different', overlapping are noise."""
    if not ci_a or not ci_b:
        return "no interval"
    return "likely different" if ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0] else "within noise"


def paired_signal(paired: Paired | None) -> str | None:
    """The paired test's note for the mean behaviour score: its 95% interval of the per-prompt change excludes 0
    or not. Paired on the same prompts it is sharper than the overlap of two separate intervals, so where it
    exists it decides (the two rules can disagree, and the page must not contradict its own test)."""
    if paired is None:
        return None
    low, high = paired["ci_low"], paired["ci_high"]
    return "likely different" if low > 0 or high < 0 else "within noise"


def labels_of(results: BehaviourResults) -> dict[str, str]:
    """Metric labels worded by the run's probe suite (``probe.behaviour``), generic where it names none."""
    return metric_labels(results["probe"].get("behaviour"))


def _said(text: object) -> str | None:
    """A word of the suite's when it says something (a non-blank string)."""
    return text if isinstance(text, str) and text.strip() else None


def behaviour_of(results: BehaviourResults) -> dict[str, Any]:
    """What the page calls the behaviour and its score: the suite's words, or generic ones."""
    info = results["probe"].get("behaviour") or {}
    name, metric = _said(info.get("name")), _said(info.get("metric"))
    return {"known": bool(name), "name": name or "the behaviour", "metric": metric or "behaviour score"}


class VerdictView(Verdict):
    """The verdict as the pages show it: with the gate it judged and whether that gate passed."""

    gate: Gate
    passed: bool


def verdict_view(results: BehaviourResults) -> VerdictView:
    """The run's verdict as ``gate.verdict`` computed it (stored in results.json; computed here only for a file
    written before the verdict was stored), with the gate it judged."""
    stored_gate = results.get("gate")
    gate = stored_gate if stored_gate is not None else evaluate_gate(results, [])
    stored = results.get("verdict")
    return {**(stored if stored is not None else verdict(results, gate)), "gate": gate,
            "passed": bool(gate.get("passed"))}


STATE_WORDS = {"pass": "PASS", "fail": "FAIL", "unsettled": "NOT SETTLED", "none": "NO THRESHOLD",
               "worse": "WORSE THAN BEFORE"}
"""How the page and the card write each state of ``gate.STATES``."""

N_BOOT = 2000
"""``evaluation.stats.paired_bootstrap_diff``'s number of resamples (its default, which the jobs use). Its p-value
is two-sided and +1-smoothed, 2 (side + 1) / (n_boot + 1), so the smallest it can be is 2 / (n_boot + 1): a p at that
floor only says "at most this", and the page writes it as "p ≤ 0.001"."""


def p_floor(n_boot: Any = None) -> float:
    n = n_boot if isinstance(n_boot, int) and not isinstance(n_boot, bool) and n_boot > 0 else N_BOOT
    return 2 / (n + 1)


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit (0.0009995 -> 0.001), so "p ≤ bound" stays true."""
    step = 10.0 ** math.floor(math.log10(x))
    return math.ceil(x / step - 1e-9) * step


def pvalue(paired: Any) -> str:
    """"p = 0.22", or "p ≤ 0.001" when p is the bootstrap's floor (no resample crossed 0)."""
    p = paired.get("p_value") if isinstance(paired, dict) else paired
    if not isinstance(p, int | float) or isinstance(p, bool):
        return "p = n/a"
    floor = p_floor(paired.get("n_boot") if isinstance(paired, dict) else None)
    if p <= floor * (1 + 1e-9):
        return f"p \u2264 {fmt(_round_up(floor), 1)}"
    return f"p = {fmt(p, 2)}"


RATE_KEYS = ("behaviour_rate", "behaviour_probability")


def as_count(rate: Any, total: Any) -> str:
    """A rate as the count it stands for, e.g. "44/312"; "" when the total is unknown."""
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not isinstance(total, int) or total < 1:
        return ""
    exact = rate * total
    k = round(exact)
    return f"{k}/{total}" if abs(exact - k) < 1e-6 else f"\u2248{exact:.1f}/{total}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def samples_per_prompt(results: BehaviourResults) -> int:
    return _int((results["probe"].get("generation") or {}).get("num_samples")) or 1


def rate_totals(results: BehaviourResults, n_prompts: Any = None) -> dict[str, int | None]:
    """What each rate counts over: continuations (rate) and prompts (probability) of ``n_prompts`` prompts
    (default: the held-out prompts, ``baseline.details.behaviour_rate.n`` or ``probe.n_eval_prompts``)."""
    if n_prompts is None:
        info = (results["baseline"].get("details") or {}).get("behaviour_rate") or {}
        n_prompts = _int(info.get("n")) or _int(results["probe"].get("n_eval_prompts"))
    n = _int(n_prompts)
    return {"behaviour_rate": n * samples_per_prompt(results) if n else None, "behaviour_probability": n}


class Limit(TypedDict):
    """A reduced run's ``--limit`` as the pages write it: ``n`` formatted."""

    n: str
    from_command: bool


def reduced_limit(results: BehaviourResults) -> Limit | None:
    """A reduced run's limit as the page writes it (``gate.reduced_run``)."""
    limit = reduced_run(results)
    return {**limit, "n": fmt(limit["n"])} if limit else None


def has_flag(results: BehaviourResults, flag: str) -> bool:
    cmd = (results.get("manifest") or {}).get("command")
    args = [str(c) for c in cmd] if isinstance(cmd, list) else shlex.split(str(cmd or ""))
    return any(a == flag or a.startswith(flag + "=") for a in args)


def run_id_of(manifest: Manifest) -> str:
    """The run's id: its start time and the first 8 hex digits of the manifest's sha256 (command, seed, inputs,
    machine, versions), e.g. "20261201-2307Z-1a2b3c4d"; the same results.json always gives the same id."""
    ts = manifest.get("started_unix")
    try:
        when = datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y%m%d-%H%MZ") if isinstance(
            ts, int | float) else "unknown-time"
    except (OverflowError, OSError, ValueError):
        when = "unknown-time"
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{when}-{digest}"


def started_at(manifest: Manifest) -> str | None:
    ts = manifest.get("started_unix")
    if not isinstance(ts, int | float):
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar date fits: shown as unknown, like a text
        return None


def command_line(manifest: Manifest) -> str:
    cmd = manifest.get("command")
    return shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd or "unknown")


def manifest_view(manifest: Manifest) -> dict[str, object]:
    """The manifest entries the pages list, each present (None where the run records none)."""
    return {"seed": manifest.get("seed"), "git_commit": manifest.get("git_commit"),
            "operator": manifest.get("operator"), "platform": manifest.get("platform"),
            "duration_s": manifest.get("duration_s"), "model_sha256": manifest.get("model_sha256"),
            "data_sha256": manifest.get("data_sha256"), "versions": manifest.get("versions")}


# The casts below: ``Empty`` (``{}``) is closed, so a section with any key is the full one. A type checker reads
# ``Pruned | Empty`` as ``Empty`` (every TypedDict has the keys of the one with none), so only a cast can name it.
def pruned_of(results: BehaviourResults) -> Pruned | None:
    """``pruned``, or None where the run changed nothing (no section, or ``{}``)."""
    section = results.get("pruned")
    return cast("Pruned", section) if section else None


def selection_of(results: BehaviourResults) -> Selection | None:
    """``selection``, or None where nothing was chosen (no section, or ``{}``)."""
    section = results.get("selection")
    return cast("Selection", section) if section else None


class ShownRow(TypedDict):
    """A ``comparison`` or ``tradeoff`` row as the page shows it: every column present, None where not measured."""

    method: str | None
    k: float | None
    fraction: float | None
    behaviour_rate: float | None
    behaviour_mean: float | None
    perplexity: float | None
    distinct2: float | None
    continuation_perplexity: float | None
    last_word_accuracy: float | None
    continuation_f1: float | None
    paired_vs_baseline: Paired | None
    paired_vs_random: Paired | None
    secondary: dict[str, SecondaryMetrics] | None


def shown_row(row: MetricRow) -> ShownRow:
    """A ``comparison`` or ``tradeoff`` row with every column the page shows."""
    return {"method": row.get("method"), "k": row.get("k"), "fraction": row.get("fraction"),
            "behaviour_rate": row.get("behaviour_rate"), "behaviour_mean": row.get("behaviour_mean"),
            "perplexity": row.get("perplexity"), "distinct2": row.get("distinct2"),
            "continuation_perplexity": row.get("continuation_perplexity"),
            "last_word_accuracy": row.get("last_word_accuracy"), "continuation_f1": row.get("continuation_f1"),
            "paired_vs_baseline": row.get("paired_vs_baseline"), "paired_vs_random": row.get("paired_vs_random"),
            "secondary": row.get("secondary")}
