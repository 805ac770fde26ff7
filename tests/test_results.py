"""The results.json contract as `report` reads it back: metric ranges (issue 27 M11).

Types alone let a hand-edited file through: `behaviour_rate: -5` passed `--fail-on 'behaviour_rate>0.05'`. Rates,
means and shares must lie in [0, 1], drops in [-1, 1], perplexities above 0 (and finite, checked already).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safety_prune.cli import main

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
