"""The deployment gate: which metric conditions fail a run, and the exit status that reports it.

A gate expression names the failing condition, ``METRIC OP NUMBER`` (e.g. ``behaviour_rate>0.05``). The user gives
them with ``--fail-on``; without it the probe suite's thresholds decide the verdict shown on the report (the exit
status then stays 0). The gate reads a run's results dict only and knows nothing of how it is rendered. It only
ever reads the primary scorer's metrics: a secondary scorer (``baseline.secondary``) informs, it never gates.

Capability retention has its own names: ``last_word_accuracy<0.3`` gates the level, ``last_word_accuracy_drop>0.02``
(or ``continuation_f1_drop>0.02``) the loss against the unpruned model on the same documents, in absolute units.

``verdict`` turns the checks into the run's call, stored as ``results["verdict"]``: each check's state and the
whole run's (``pass``, ``fail``, ``unsettled`` when a 95% interval contains a threshold, ``worse`` when the
correction raised the behaviour, ``none`` without thresholds), and the decision with its reasons (the release
check of a correction and a reduced run weigh in). The renderer only words it.

The schema-1 names (``toxicity_rate``, ``toxicity_mean``, ``expected_max_toxicity``, ``toxicity_probability``) are
accepted as aliases of the ``behaviour_*`` metrics for one schema version, with a logged deprecation warning.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, ResultsError
from .metrics import CAPABILITY_KEYS, LEGACY_ALIASES, METRIC_KEYS, metric_ci, metric_labels

if TYPE_CHECKING:  # the types only: the gate stays light enough for the CLI to import at once
    from .results import Decision, Gate, GateCheck, Reason, ReducedRun, State, Verdict, VerdictCheck

log = logging.getLogger(__name__)

GATE_EXIT_CODE = 3
"""Exit status of a job or ``report`` whose deployment gate (``--fail-on``) failed; 0 pass, 2 usage/input error."""

GATE_METRICS: tuple[str, ...] = METRIC_KEYS
"""The metrics a gate expression may name (every metric of the catalogue in ``metrics.py``)."""

GATE_ALIASES: dict[str, str] = LEGACY_ALIASES
"""Old (schema 1) metric names a gate expression may still use, and the metric each stands for."""

SOURCE_FAIL_ON = "--fail-on"
SOURCE_THRESHOLDS = "probe suite thresholds"
"""The two values of ``gate["source"]``: who set the expressions the gate checked."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_METRIC_OP = r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*"
_EXPR = re.compile(_METRIC_OP + r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_NON_FINITE = re.compile(_METRIC_OP + r"([-+]?(?:nan|inf|infinity))\s*$", re.IGNORECASE)


def _named(expr: str, source: str) -> str:
    """How an expression is named in an error: by where it came from, so no message invents a --fail-on."""
    return f"--fail-on {expr!r}" if source == SOURCE_FAIL_ON else f"The probe suite threshold {expr!r}"


def parse_expr(expr: str, source: str = SOURCE_FAIL_ON) -> tuple[str, str, float]:
    """``(metric, op, threshold)`` of one expression; a ConfigError, worded by ``source``, when it is not one."""
    known = (*GATE_METRICS, *GATE_ALIASES)
    match = _EXPR.match(expr)
    if match and match.group(1) in known:
        threshold = float(match.group(3))
        if math.isfinite(threshold):
            return GATE_ALIASES.get(match.group(1), match.group(1)), match.group(2), threshold
        number = match.group(3)
    elif (match := _NON_FINITE.match(expr)) and match.group(1) in known:
        number = match.group(3)
    else:
        raise ConfigError(f"{_named(expr, source)} is not a gate expression. Write METRIC OP NUMBER with OP one "
                          f"of > >= < <=, e.g. 'behaviour_rate>0.05' (quote it in the shell); METRIC is one of "
                          f"{', '.join(GATE_METRICS)} (the old names {', '.join(GATE_ALIASES)} are still "
                          "accepted as aliases for one schema version).")
    fix = ("Give a finite NUMBER, e.g. 'perplexity>1000'." if source == SOURCE_FAIL_ON else
           "Set a finite number in the probe suite's thresholds (results.json records them under "
           "probe.thresholds).")
    raise ConfigError(f"{_named(expr, source)}: the threshold {number} is not a finite number (NaN, infinite, or "
                      f"too large for a float), so the comparison could never decide the gate. {fix}")


def parse_fail_on(values: Iterable[str] | None) -> list[str]:
    """Split repeated/comma-separated ``--fail-on`` values and check each early, before any model loads.

    ``None`` (the option was not given) gives ``[]``; a given but empty value is an error, never "no gate". An old
    metric name (``GATE_ALIASES``) is replaced by its new name in the returned expressions, with a warning.
    """
    exprs: list[str] = []
    for value in values or ():
        parts = [part.strip() for part in value.split(",")]
        if not any(parts):
            raise ConfigError(f"An empty --fail-on was given ({value!r}). It names no condition, and an empty gate "
                              "would pass every run; in CI this usually means an unset variable expanded to "
                              "nothing (e.g. --fail-on \"$GATE\"). Give METRIC OP NUMBER, e.g. "
                              "'behaviour_rate>0.05', or leave --fail-on out (the report then shows the verdict "
                              "against the probe suite's thresholds and the exit status does not depend on it).")
        if not all(parts):
            raise ConfigError(f"--fail-on {value!r} has an empty expression between commas (an unset variable "
                              "in e.g. --fail-on \"$A,$B\" gives one). Remove the stray comma or give the missing "
                              "METRIC OP NUMBER.")
        for part in parts:
            parse_expr(part)
            exprs.append(_renamed(part))
    return exprs


def _renamed(expr: str) -> str:
    """``expr`` with an old metric name replaced by the new one (and a deprecation warning)."""
    match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", expr)
    old = match.group(1) if match else ""
    if old not in GATE_ALIASES:
        return expr
    renamed = expr[:match.start(1)] + GATE_ALIASES[old] + expr[match.end(1):]
    log.warning("--fail-on %r: the metric name %r is deprecated (results.json schema 2 calls it %r) and is "
                "accepted as an alias for one schema version only; write %r.", expr, old, GATE_ALIASES[old],
                renamed.strip())
    return renamed


def threshold_exprs(results: Mapping[str, Any]) -> list[str]:
    """The probe suite's thresholds as fail-on expressions: a metric above its threshold fails."""
    return [f"{k}>{v:g}" for k, v in (results.get("probe", {}).get("thresholds") or {}).items()
            if k in GATE_METRICS and isinstance(v, int | float)]


def _gate_target(results: Mapping[str, Any]) -> str:
    return "corrected" if isinstance(results.get("corrected"), dict) else "baseline"


def check_expr(block: dict[str, Any], expr: str, where: str, source: str = SOURCE_FAIL_ON) -> GateCheck:
    """Evaluate one expression against one metric block (``where``: "baseline" or "corrected").

    ``source`` (SOURCE_FAIL_ON or SOURCE_THRESHOLDS) only words the errors by where the expression came from.
    """
    metric, op, threshold = parse_expr(expr, source)
    value = block.get(metric)
    if not isinstance(value, int | float):
        have = ", ".join(k for k in GATE_METRICS if isinstance(block.get(k), int | float)) or "none"
        why = (" Capability is measured only when the probe suite does not set 'capability: false', by runs made "
               "since it was added (rerun the job to gate on it)." if metric in CAPABILITY_KEYS else "")
        if source == SOURCE_FAIL_ON:
            raise ConfigError(f"--fail-on {expr!r}: the {where} metrics of this run have no {metric!r}.{why} Use "
                              f"one of {have}.")
        raise ConfigError(f"The probe suite threshold {expr!r} cannot be checked: the {where} metrics of this run "
                          f"have no {metric!r} (they have: {have}). Without --fail-on the verdict uses the suite's "
                          "thresholds; remove that threshold from the probe suite (results.json records them under "
                          "probe.thresholds), or give --fail-on with a metric the run has.")
    if not math.isfinite(value):
        raise ResultsError(f"{_named(expr, source)}: the {where} {metric} of this run is {value}, not a finite "
                           "number, so the gate cannot decide. The evaluation that produced it went wrong; rerun "
                           "the job.")
    ci = metric_ci(block, metric)
    failed = _OPS[op](float(value), threshold)
    # "settled": the whole 95% interval lies on the same side of the threshold as the point value
    settled = None if ci is None else all(_OPS[op](c, threshold) == failed for c in ci)
    return {"expr": f"{metric}{op}{threshold:g}", "metric": metric, "op": op, "threshold": threshold,
            "value": float(value), "ci": ci, "failed": failed, "settled": settled}


def evaluate_gate(results: Mapping[str, Any], fail_on: Sequence[str]) -> Gate:
    """Check fail-on expressions against the corrected metrics (else baseline); the probe thresholds by default.

    Each expression names the failing condition, e.g. ``behaviour_rate>0.05`` fails when the rate is above 0.05.
    The returned dict is what ``results["gate"]`` stores and what decides the exit status (GATE_EXIT_CODE).
    """
    exprs = parse_fail_on(fail_on)
    source = SOURCE_FAIL_ON
    if not exprs:
        exprs, source = threshold_exprs(results), SOURCE_THRESHOLDS
    target = _gate_target(results)
    labels = metric_labels((results.get("probe") or {}).get("behaviour"))
    checks = [check_expr(results[target], expr, target, source) for expr in exprs]
    for check in checks:
        check["label"] = labels[check["metric"]]
    return {"passed": not any(c["failed"] for c in checks), "target": target, "source": source,
            "checks": checks}


def failure_message(gate: dict[str, Any]) -> str:
    """What failed, worded by the suite's behaviour labels, e.g. "rate of looping continuations 0.25 (95% CI
    [0.18, 0.32]) fails behaviour_rate>0.1"; the CLI prints it when the gate fails."""
    parts = []
    for check in gate.get("checks", []):
        if not check.get("failed"):
            continue
        label = str(check.get("label") or check.get("metric", ""))
        label = label[:1].lower() + label[1:]  # mid-sentence; "Rate of PII leaks" keeps its acronym
        ci = check.get("ci")
        interval = f" (95% CI [{ci[0]:.4g}, {ci[1]:.4g}])" if ci else ""
        parts.append(f"{label} {check['value']:.4g}{interval} fails {check['expr']}")
    where = "corrected" if gate.get("target") == "corrected" else "baseline"
    return f"deployment gate failed on the {where} metrics: " + ("; ".join(parts) or "no check passed")


STATES = ("pass", "fail", "unsettled", "worse", "none")
"""A verdict's states: "unsettled" is shown as NOT SETTLED, "none" as NO THRESHOLD."""
DECISIONS = ("pass", "fail", "unsettled")
"""What the run's decision can be: deploy, do not deploy, or measure more."""


def check_state(check: GateCheck | dict[str, Any] | None) -> State | None:
    """One check's state: "pass", "fail", or "unsettled" when its 95% interval contains the threshold (the point
    value alone then decides the gate's exit status, but the sample cannot)."""
    if check is None:
        return None
    if check.get("settled") is False:
        return "unsettled"
    return "fail" if check["failed"] else "pass"


def overall(states: Sequence[str | None]) -> State:
    """A settled failure fails; else any unsettled check leaves the whole call unsettled; no checks: "none"."""
    if not states:
        return "none"
    if "fail" in states:
        return "fail"
    return "unsettled" if "unsettled" in states else "pass"


def rose(paired: Any) -> bool:
    """Whether a paired change's 95% interval lies entirely above 0 (the behaviour rose for certain)."""
    return (isinstance(paired, dict) and all(isinstance(paired.get(k), int | float) for k in ("ci_low", "ci_high"))
            and paired["ci_low"] > 0)


def reduced_run(results: Mapping[str, Any]) -> ReducedRun | None:
    """A reduced run's ``--limit``: ``probe.limit``, or for results written before that key, ``--limit N`` in the
    recorded command (``from_command``); None for a full run."""
    probe = results.get("probe") or {}
    if "limit" in probe:
        n = probe["limit"]
        return {"n": n, "from_command": False} if isinstance(n, int | float) else None
    cmd = (results.get("manifest") or {}).get("command")
    args = [str(c) for c in cmd] if isinstance(cmd, list) else shlex.split(str(cmd or ""))
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--limit" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--limit=") else None)
        if value is not None and value.isdigit():
            return {"n": int(value), "from_command": True}
    return None


def _rows(results: Mapping[str, Any], gate: Gate | dict[str, Any]) -> list[VerdictCheck]:
    """Every probe threshold and gate expression checked before and after correction (``corr`` None in an audit)."""
    probe_exprs = threshold_exprs(results)
    gate_exprs = [c["expr"] for c in gate.get("checks", [])]
    corr = results.get("corrected") if isinstance(results.get("corrected"), dict) else None
    labels = metric_labels((results.get("probe") or {}).get("behaviour"))
    rows: list[VerdictCheck] = []
    for expr in dict.fromkeys(probe_exprs + gate_exprs):
        source = SOURCE_THRESHOLDS if expr in probe_exprs else gate.get("source", SOURCE_FAIL_ON)
        base = check_expr(results["baseline"], expr, "baseline", source)
        after = check_expr(corr, expr, "corrected", source) if corr else None
        rows.append({"expr": expr, "label": labels.get(base["metric"], expr), "from_gate": expr in gate_exprs,
                     "from_probe": expr in probe_exprs, "base": base, "corr": after,
                     "base_state": check_state(base) or "none", "corr_state": check_state(after)})
    return rows


def _state_on(row: VerdictCheck, key: str) -> State | None:
    """A row's state on the gated side (``key``: "base" or "corr")."""
    return row["corr_state"] if key == "corr" else row["base_state"]


def check_on(row: VerdictCheck, key: str) -> GateCheck:
    """A row's check on the gated side."""
    return row["corr"] if key == "corr" and row["corr"] is not None else row["base"]


def _decision(state: State, decisive: list[VerdictCheck], key: str, release: dict[str, Any] | None,
              limit: ReducedRun | None) -> tuple[Decision, list[Reason]]:
    """The decision and its reasons, most important first; ``release`` only where it judges the gated model."""
    refused = release is not None and release.get("allowed") is False
    refusal: list[Reason] = [{"kind": "release_refused", "reasons": [str(r) for r in release.get("reasons") or []]}
                             ] if (refused and release is not None) else []
    reduced: list[Reason] = [{"kind": "reduced_run", "limit": limit["n"]}] if limit else []
    exprs = [r["expr"] for r in decisive]
    if state == "worse":
        return "fail", [{"kind": "worse"}, *reduced]
    if state == "none":
        return "unsettled", [{"kind": "no_threshold"}, *reduced]
    if state == "fail" or state == "unsettled":
        hit = [r["expr"] for r in decisive if _state_on(r, key) == state]
        return state, [{"kind": state, "checks": hit}, *refusal, *reduced]
    met: Reason = {"kind": "met", "checks": exprs,
                   "by_point_value": [r["expr"] for r in decisive if not check_on(r, key).get("ci")],
                   "release_allowed": None if release is None else release.get("allowed") is True}
    if refused:
        return "fail", [*refusal, met, *reduced]
    return ("unsettled", [*reduced, met]) if limit else ("pass", [met])


def verdict(results: Mapping[str, Any], gate: Gate | dict[str, Any] | None = None) -> Verdict:
    """The run's call, computed once (``results["verdict"]``); ``gate`` defaults to ``results["gate"]``, else the
    probe thresholds.

    ``checks``: every threshold and gate expression with its state before (``base_state``) and after correction
    (``corr_state``); ``before``/``after``: the overall state of the gated checks on each side; ``state``: the
    overall state on the gate's target (``target``: "base" or "corr"), "worse" when the paired change of the mean
    behaviour score per prompt lies entirely above 0; ``decision`` ("pass", "fail", "unsettled") with ``reasons``,
    each a ``kind`` and its data: worse, no_threshold, fail, unsettled (``checks``), release_refused (``reasons``),
    reduced_run (``limit``), met (``checks``, ``by_point_value``: passed without an interval, ``release_allowed``);
    ``decisive``: the gated checks the decision rests on (those not passing, else all)."""
    if gate is None:
        stored = results.get("gate")
        gate = stored if isinstance(stored, dict) else evaluate_gate(results, [])
    rows = _rows(results, gate)
    gated = [r for r in rows if r["from_gate"]]
    corrected = isinstance(results.get("corrected"), dict)
    key: Literal["base", "corr"] = "corr" if corrected and gate.get("target") == "corrected" else "base"
    paired = results["corrected"].get("paired_vs_baseline") if corrected else None
    worse = rose(paired)
    after: State | None = ("worse" if worse else overall([r["corr_state"] for r in gated])) if corrected else None
    state: State = "worse" if key == "corr" and worse else overall([_state_on(r, key) for r in gated])
    decisive = [r for r in gated if _state_on(r, key) != "pass"] or gated
    release = results.get("release") if key == "corr" and isinstance(results.get("release"), dict) else None
    limit = reduced_run(results)
    decision, reasons = _decision(state, decisive, key, release, limit)
    return {"state": state, "before": overall([r["base_state"] for r in gated]), "after": after,
            "decision": decision, "reasons": reasons, "target": key, "checks": rows,
            "decisive": [r["expr"] for r in decisive],
            "unsettled": [r["expr"] for r in rows if (r["corr"] or r["base"]).get("settled") is False],
            "worse": paired if worse else None, "limit": limit}
