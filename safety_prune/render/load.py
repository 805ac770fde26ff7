"""Reading a run's files for the pages: ``results.json`` checked before anything is drawn, and ``samples.jsonl``.

Every way a results file can be unusable (not JSON, another schema, a wrong type under a key the page reads, a NaN)
is one ResultsError that names the file, the key and the fix, never a traceback from deep inside the renderer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, ResultsError
from ..gate import (
    SOURCE_THRESHOLDS,
    parse_expr,
    threshold_exprs,
)
from ..metrics import LEGACY_ALIASES, METRIC_KEYS
from ..run import SCHEMA_VERSION

_TASK_JOBS = ("compress", "circuit")


_REQUIRED = ("job", "model", "probe", "scorer", "baseline", "manifest")


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
