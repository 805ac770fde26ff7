"""Reading a run's files for the pages: ``results.json`` checked before anything is drawn, and ``samples.jsonl``.

Every way a results file can be unusable (not JSON, another schema, a wrong type under a key the page reads, a NaN)
is one ResultsError that names the file, the key and the fix, never a traceback from deep inside the renderer. The
types come from the one schema of the file (``results.py``, checked by ``schema_check.py``); what depends on other
keys (a gated metric must be measured, a validation selection needs its search) is checked here.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import cast

from .. import __version__
from ..errors import ConfigError, ResultsError
from ..gate import (
    SOURCE_THRESHOLDS,
    parse_expr,
    threshold_exprs,
)
from ..metrics import LEGACY_ALIASES
from ..results import BehaviourResults, MetricBlock, SampleRow, json_schema, sample_schema
from ..run import SCHEMA_VERSION
from ..schema_check import Checker, Invalid, join, non_finite
from .facts import selection_of

_TASK_JOBS = ("compress", "circuit")
_REQUIRED = ("job", "model", "probe", "scorer", "baseline", "manifest")


@cache
def _checkers() -> tuple[Checker, Checker]:
    """results.json of a behaviour job and a line of samples.jsonl, checked against ``results.py``'s schema."""
    schema = json_schema()
    return Checker({"$defs": schema["$defs"], **schema["$defs"]["BehaviourResults"]}), Checker(sample_schema())


def _consistent(results: BehaviourResults) -> None:
    """What the page needs beyond types: keys that depend on others, and every gated metric measured."""
    model, selection, gate, corrected = results["model"], selection_of(results), results.get("gate"), \
        results.get("corrected")
    if "n_layers" in model:
        for name, present in (("n_neurons_per_layer", "n_neurons_per_layer" in model), ("n_heads", "n_heads" in model)):
            if not present:
                raise Invalid("model", f"has n_layers but no {name!r}, which the report shows with it")
    if corrected is not None and "method" not in results:
        raise Invalid("corrected", "is present but the run records no 'method', which the report shows with it")
    if selection and selection.get("rule") == "validation":
        shown = (("intervention", "intervention" in selection), ("split", "split" in selection),
                 ("limits", "limits" in selection), ("feasible", "feasible" in selection))
        for name, present in shown:  # what rule "validation" is shown with
            if not present:
                raise Invalid("selection", f"has rule 'validation' but no {name!r}, which the report shows with it")
        if "metric" not in results["probe"].get("behaviour", {}):
            raise Invalid("probe", "has no 'behaviour' object with a 'metric', which the report names for a "
                                    "selection by rule 'validation'")
    gated = [(f"probe.thresholds.{expr.split('>')[0]}", expr, SOURCE_THRESHOLDS) for expr in threshold_exprs(results)]
    if gate is not None:
        gated += [(f"gate.checks[{i}].expr", check["expr"], gate["source"]) for i, check in enumerate(gate["checks"])]
    blocks: list[tuple[str, MetricBlock]] = [("baseline", results["baseline"])]
    blocks += [("corrected", corrected)] if corrected is not None else []
    for key, expr, source in gated:
        try:
            metric = parse_expr(expr, source)[0]
        except ConfigError as exc:
            raise Invalid(key, f"is not a usable gate expression ({exc})") from None
        for block, values in blocks:
            if metric not in values:
                raise Invalid(join(block, metric), f"is missing, but {key} ({expr!r}) gates on it")


def _unusable(path: Path, key: str, problem: str) -> ResultsError:
    return ResultsError(f"{path}: {key} {problem}. The file was edited by hand or damaged: correct that value, "
                        "restore the file from a copy, or rerun the job that wrote it.")


def load_results(run_dir: str | Path) -> BehaviourResults:
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
        non_finite(results, "")
        _checkers()[0].check(results)
        checked = cast("BehaviourResults", results)  # checked against that type's schema just above
        _consistent(checked)
    except Invalid as bad:
        raise _unusable(path, bad.key, bad.problem) from None
    except RecursionError:
        raise ResultsError(f"{path} is nested too deeply to be a results file. Restore it from a copy or rerun "
                           "the job that wrote it.") from None
    return checked


def load_samples(path: Path) -> list[SampleRow]:
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
    rows: list[SampleRow] = []
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
                non_finite(row, "")
                _checkers()[1].check(row)
            except Invalid as bad:
                raise ResultsError(f"{path} line {lineno}: {bad.key} {bad.problem}. {fix}") from None
            rows.append(cast("SampleRow", row))  # checked against that type's schema just above
    return rows
