"""The results.json contract as `report` reads it back: metric ranges (issue 27 M11).

Types alone let a hand-edited file through: `behaviour_rate: -5` passed `--fail-on 'behaviour_rate>0.05'`. Rates,
means and shares must lie in [0, 1], drops in [-1, 1], perplexities above 0 (and finite, checked already).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safety_prune.cli import main
from safety_prune.results import probe_info

FIXTURE = Path(__file__).parent / "fixtures" / "correct_results.json"


def _set(data: Any, dotted: str, value: Any) -> None:
    """``corrected.behaviour_rate_ci`` or ``comparison[1].distinct2`` = value."""
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        data = data[int(part)] if part.isdigit() else data[part]
    data[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value


TAMPERED = [
    ("corrected.behaviour_rate", -5, "corrected.behaviour_rate is the number -5, but must be a number from 0 to 1"),
    ("baseline.behaviour_mean", 1.5, "baseline.behaviour_mean is the number 1.5, but must be a number from 0 to 1"),
    ("corrected.behaviour_rate_ci", [-5, 0.0], "corrected.behaviour_rate_ci[0] is the number -5, but must be a number "
                                               "from 0 to 1"),
    ("corrected.perplexity", 0, "corrected.perplexity is the number 0, but must be a number above 0"),
    ("corrected.perplexity", -30.5, "corrected.perplexity is the number -30.5, but must be a number above 0"),
    ("comparison[1].distinct2", 2.0, "comparison[1].distinct2 is the number 2.0, but must be a number from 0 to 1 or "
                                     "null"),
    ("probe.thresholds.behaviour_rate", 7, "probe.thresholds.behaviour_rate is the number 7, but must be a number from "
                                           "0 to 1"),
]


@pytest.mark.parametrize(("key", "value", "problem"), TAMPERED, ids=[f"{k}={v}" for k, v, _ in TAMPERED])
def test_out_of_range_metric_fails_the_report_not_passes_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   key: str, value: Any, problem: str) -> None:
    """Before (93f5b05): each file rendered and `--fail-on 'behaviour_rate>0.05'` passed, exit 0."""
    results = json.loads(FIXTURE.read_text(encoding="utf-8"))
    _set(results, key, value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run), "--fail-on", "behaviour_rate>0.05"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'results.json'}: {problem}" in err, err
    assert "correct that value, restore the file from a copy, or rerun the job that wrote it" in err
    assert not (run / "report.html").exists()


def test_values_at_the_bounds_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real run can measure a rate of exactly 0 or 1 and a huge perplexity (a broken model): those render."""
    results = json.loads(FIXTURE.read_text(encoding="utf-8"))
    results["corrected"].update(behaviour_rate=1.0, behaviour_rate_ci=[1.0, 1.0], perplexity=1e308)
    results["corrected"].pop("perplexity_ci")
    results["baseline"].update(behaviour_rate=0.0, distinct2=1.0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run), "--fail-on", "behaviour_rate>0.05"]) == 3  # the gate fails, as it should
    assert (run / "report.html").is_file()


# ------------------------------------------------------------------------------ the one schema and its export

def test_exported_schema_is_the_types(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/results.schema.json is what ``safety-prune schema`` prints, generated from results.py's types."""
    from safety_prune.results import schema_text

    exported = Path(__file__).parent.parent / "docs" / "results.schema.json"
    assert exported.read_text(encoding="utf-8") == schema_text(), (
        "docs/results.schema.json is stale: regenerate it with `safety-prune schema > docs/results.schema.json`")
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()


@pytest.mark.parametrize("name", ["audit_results.json", "correct_results.json"])
def test_files_from_before_the_verdict_match_the_exported_schema(name: str) -> None:
    """Results written before this schema was exported (no ``verdict``, no ``probe.limit``) still conform."""
    from results_schema import assert_valid_results

    assert_valid_results(FIXTURE.parent / name)


SCHEMA_ERRORS = [
    ("job", "foo", 'job is the string \'foo\', but must be one of "audit", "correct"'),
    ("verdict", {"decision": "maybe"}, "verdict has no 'state', which the report needs"),
    ("gate.checks", [{"value": 1}], "gate.checks[0] has no 'expr', which the report needs"),
    ("baseline.last_word_accuracy_drop", -2, "baseline.last_word_accuracy_drop is the number -2, but must be a number "
                                             "from -1 to 1"),
    ("pruned", {"count": 3}, "pruned has no 'unit', which the report needs"),
    ("model.n_layers", "two", "model.n_layers is the string 'two', but must be a whole number"),
]


@pytest.mark.parametrize(("key", "value", "problem"), SCHEMA_ERRORS, ids=[k for k, _, _ in SCHEMA_ERRORS])
def test_report_names_the_key_against_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                                 value: Any, problem: str) -> None:
    """Each problem names the file, the key path and what the value must be (from the same types)."""
    results = json.loads(FIXTURE.read_text(encoding="utf-8"))
    results["gate"] = {"passed": True, "source": "probe suite thresholds", "target": "corrected", "checks": []}
    _set(results, key, value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'results.json'}: {problem}" in err, err
    assert "correct that value, restore the file from a copy, or rerun the job that wrote it" in err


def test_empty_sections_stand_for_none(tmp_path: Path) -> None:
    """``pruned: {}`` and ``selection: {}`` (nothing chosen) are allowed by the schema, a stray key in them is not."""
    results = json.loads(FIXTURE.read_text(encoding="utf-8"))
    results |= {"pruned": {}, "selection": {}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run)]) == 0


def test_metric_types_cover_the_catalogue() -> None:
    """MetricBlock and MetricRow spell every metric of ``metrics.METRIC_KEYS`` out (so type checkers see them):
    a metric added to the catalogue must be added to both."""
    from safety_prune.metrics import METRIC_KEYS
    from safety_prune.results import MetricBlock, MetricRow

    wanted = {*METRIC_KEYS, *(f"{k}_ci" for k in METRIC_KEYS)}
    for kind in (MetricBlock, MetricRow):
        assert wanted <= set(kind.__annotations__), sorted(wanted - set(kind.__annotations__))


@dataclass
class _Gen:
    max_new_tokens: int = 25
    num_samples: int = 1


@dataclass
class _Thresholds:
    behaviour_rate: float = 0.1


@dataclass
class _Behaviour:
    name: str = "toxic continuations"
    metric: str = "toxicity score"


@dataclass
class _Suite:
    name: str = "toxicity"
    description: str = "d"
    chat_template: bool = False
    generation: _Gen = field(default_factory=_Gen)
    thresholds: _Thresholds = field(default_factory=_Thresholds)
    behaviour: _Behaviour = field(default_factory=_Behaviour)


def test_probe_info_records_the_limit() -> None:
    assert probe_info(_Suite(), 312, 186)["limit"] is None  # callers that pass nothing: a full run
    assert probe_info(_Suite(), 12, 12, limit=12)["limit"] == 12
