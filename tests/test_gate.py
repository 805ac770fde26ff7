"""The deployment gate: parsing --fail-on, checking it against a run's metrics, and the exit status it sets.

Fixtures are real ``audit``/``correct`` results of a tiny random model (see tests/test_report.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safety_prune.cli import main
from safety_prune.errors import ConfigError, ResultsError
from safety_prune.gate import GATE_EXIT_CODE, GATE_METRICS, evaluate_gate, parse_fail_on
from safety_prune.render import render_report

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _write_run(path: Path, results: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (path / "samples.jsonl").write_bytes((FIXTURES / "correct_samples.jsonl").read_bytes())
    return path


def test_parse_fail_on_splits_and_validates() -> None:
    assert parse_fail_on(["toxicity_rate>0.05,perplexity >= 30", " distinct2<0.2 "]) == [
        "toxicity_rate>0.05", "perplexity >= 30", "distinct2<0.2"]
    assert parse_fail_on(None) == []
    assert parse_fail_on([]) == []  # the option not given at all
    for bad in ("toxicity>0.1", "toxicity_rate=0.1", "toxicity_rate>high", "perplexity>>3", "> 3"):
        with pytest.raises(ConfigError) as info:
            parse_fail_on([bad])
        assert repr(bad) in str(info.value) and all(m in str(info.value) for m in GATE_METRICS)


@pytest.mark.parametrize("values", [[""], [" , "], ["   "], ["toxicity_rate>0.1", ""], ["toxicity_rate>0.1,"],
                                    ["toxicity_rate>0.1, ,perplexity>30"]])
def test_empty_fail_on_is_an_error_not_an_open_gate(values: list[str]) -> None:
    """An unset CI variable (--fail-on "$GATE") must not quietly turn the gate off."""
    with pytest.raises(ConfigError, match=r"--fail-on") as info:
        parse_fail_on(values)
    assert "empty" in str(info.value)


def test_empty_fail_on_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _load("correct_results.json"))
    assert main(["report", str(run), "--fail-on", ""]) == 2
    err = capsys.readouterr().err
    assert "An empty --fail-on was given" in err and "Traceback" not in err


@pytest.mark.parametrize("expr", ["perplexity>1e999", "perplexity>-1e400", "perplexity>nan", "perplexity>inf",
                                  "toxicity_rate <= NaN", "distinct2<-Infinity"])
def test_non_finite_threshold_is_refused(expr: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fail_on([expr])
    assert f"--fail-on {expr!r}" in str(info.value) and "not a finite number" in str(info.value)


def test_non_finite_metric_cannot_pass_the_gate() -> None:
    """NaN compares false with everything, so unchecked it would pass any 'fails when above' condition."""
    res = _load("correct_results.json")
    res["corrected"]["toxicity_rate"] = float("nan")
    with pytest.raises(ResultsError, match=r"corrected toxicity_rate of this run is nan"):
        evaluate_gate(res, ["toxicity_rate>0.05"])
    with pytest.raises(ResultsError, match=r"probe suite threshold 'toxicity_rate>0.1'"):
        evaluate_gate(res, [])


def test_gate_uses_corrected_metrics() -> None:
    res = _load("correct_results.json")  # corrected perplexity 305.1, baseline 305.2, toxicity_rate 0
    gate = evaluate_gate(res, ["perplexity>305.2", "toxicity_rate>=0"])
    assert gate["target"] == "corrected" and gate["source"] == "--fail-on" and not gate["passed"]
    assert [c["failed"] for c in gate["checks"]] == [False, True]
    assert gate["checks"][0]["value"] == pytest.approx(305.137, abs=1e-3)
    assert gate["checks"][0]["settled"] is False  # the interval [304.9, 305.4] straddles 305.2
    assert evaluate_gate(res, ["distinct2<0.5", "continuation_perplexity<=100"])["passed"]


def test_gate_defaults_to_probe_thresholds_on_baseline() -> None:
    res = _load("audit_results.json")
    gate = evaluate_gate(res, [])
    assert gate["target"] == "baseline" and gate["source"] == "probe suite thresholds"
    assert [c["expr"] for c in gate["checks"]] == ["toxicity_rate>0.1"]
    res["probe"]["thresholds"] = {"toxicity_rate": 0.0}
    res["baseline"]["toxicity_rate"] = 0.25
    assert not evaluate_gate(res, [])["passed"]


def test_gate_metric_missing_from_run() -> None:
    with pytest.raises(ConfigError, match=r"no 'expected_max_toxicity'.*toxicity_rate"):
        evaluate_gate(_load("audit_results.json"), ["expected_max_toxicity>0.5"])


def test_threshold_errors_name_the_probe_suite_not_fail_on(tmp_path: Path) -> None:
    """Without --fail-on the thresholds come from the probe suite; no message may invent a --fail-on."""
    res = _load("audit_results.json")
    del res["baseline"]["toxicity_rate"]
    with pytest.raises(ConfigError) as info:
        evaluate_gate(res, [])
    msg = str(info.value)
    assert msg.startswith("The probe suite threshold 'toxicity_rate>0.1' cannot be checked")
    assert "--fail-on 'toxicity_rate" not in msg and "toxicity_mean" in msg  # names what the run does have
    # the page's verdict checks the suite's thresholds next to a user's --fail-on: worded by each one's source
    res["gate"] = {"passed": True, "target": "baseline", "source": "--fail-on", "checks": [
        {"expr": "perplexity>400", "value": 305.2}]}
    with pytest.raises(ConfigError, match=r"^The probe suite threshold 'toxicity_rate>0.1'"):
        render_report(res, tmp_path / "none.jsonl", tmp_path / "report.html")


def test_report_fail_on_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _load("correct_results.json"))
    assert main(["report", str(run), "--fail-on", "perplexity>300"]) == GATE_EXIT_CODE
    assert "deployment gate failed" in capsys.readouterr().err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "FAIL" in html and "perplexity&gt;300" in html
    assert main(["report", str(run), "--fail-on", "perplexity>400"]) == 0
    assert main(["report", str(run), "--fail-on", "ppl>1"]) == 2
