"""The deployment gate: parsing --fail-on, checking it against a run's metrics, and the exit status it sets.

Fixtures are real ``audit``/``correct`` results of a tiny random model (see tests/test_report.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from safety_prune.cli import build_parser, main
from safety_prune.errors import ConfigError, ResultsError
from safety_prune.gate import (
    GATE_ALIASES,
    GATE_EXIT_CODE,
    GATE_METRICS,
    check_state,
    evaluate_gate,
    failure_message,
    parse_fail_on,
    verdict,
)
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
    assert parse_fail_on(["behaviour_rate>0.05,perplexity >= 30", " distinct2<0.2 "]) == [
        "behaviour_rate>0.05", "perplexity >= 30", "distinct2<0.2"]
    assert parse_fail_on(None) == []
    assert parse_fail_on([]) == []  # the option not given at all
    for bad in ("toxicity>0.1", "behaviour_rate=0.1", "behaviour_rate>high", "perplexity>>3", "> 3"):
        with pytest.raises(ConfigError) as info:
            parse_fail_on([bad])
        assert repr(bad) in str(info.value) and all(m in str(info.value) for m in GATE_METRICS)


@pytest.mark.parametrize("values", [[""], [" , "], ["   "], ["behaviour_rate>0.1", ""], ["behaviour_rate>0.1,"],
                                    ["behaviour_rate>0.1, ,perplexity>30"]])
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
                                  "behaviour_rate <= NaN", "distinct2<-Infinity"])
def test_non_finite_threshold_is_refused(expr: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fail_on([expr])
    assert f"--fail-on {expr!r}" in str(info.value) and "not a finite number" in str(info.value)


def test_non_finite_metric_cannot_pass_the_gate() -> None:
    """NaN compares false with everything, so unchecked it would pass any 'fails when above' condition."""
    res = _load("correct_results.json")
    res["corrected"]["behaviour_rate"] = float("nan")
    with pytest.raises(ResultsError, match=r"corrected behaviour_rate of this run is nan"):
        evaluate_gate(res, ["behaviour_rate>0.05"])
    with pytest.raises(ResultsError, match=r"probe suite threshold 'behaviour_rate>0.1'"):
        evaluate_gate(res, [])


def test_gate_uses_corrected_metrics() -> None:
    res = _load("correct_results.json")  # corrected perplexity 305.1, baseline 305.2, behaviour_rate 0
    gate = evaluate_gate(res, ["perplexity>305.2", "behaviour_rate>=0"])
    assert gate["target"] == "corrected" and gate["source"] == "--fail-on" and not gate["passed"]
    assert [c["failed"] for c in gate["checks"]] == [False, True]
    assert gate["checks"][0]["value"] == pytest.approx(305.137, abs=1e-3)
    assert gate["checks"][0]["settled"] is False  # the interval [304.9, 305.4] straddles 305.2
    assert evaluate_gate(res, ["distinct2<0.5", "continuation_perplexity<=100"])["passed"]


def test_gate_defaults_to_probe_thresholds_on_baseline() -> None:
    res = _load("audit_results.json")
    gate = evaluate_gate(res, [])
    assert gate["target"] == "baseline" and gate["source"] == "probe suite thresholds"
    assert [c["expr"] for c in gate["checks"]] == ["behaviour_rate>0.1"]
    res["probe"]["thresholds"] = {"behaviour_rate": 0.0}
    res["baseline"]["behaviour_rate"] = 0.25
    assert not evaluate_gate(res, [])["passed"]


def test_gate_metric_missing_from_run() -> None:
    with pytest.raises(ConfigError, match=r"no 'behaviour_expected_max'.*behaviour_rate"):
        evaluate_gate(_load("audit_results.json"), ["behaviour_expected_max>0.5"])


def test_threshold_errors_name_the_probe_suite_not_fail_on(tmp_path: Path) -> None:
    """Without --fail-on the thresholds come from the probe suite; no message may invent a --fail-on."""
    res = _load("audit_results.json")
    del res["baseline"]["behaviour_rate"]
    with pytest.raises(ConfigError) as info:
        evaluate_gate(res, [])
    msg = str(info.value)
    assert msg.startswith("The probe suite threshold 'behaviour_rate>0.1' cannot be checked")
    assert "--fail-on 'behaviour_rate" not in msg and "behaviour_mean" in msg  # names what the run does have
    # the page's verdict checks the suite's thresholds next to a user's --fail-on: worded by each one's source
    res["gate"] = {"passed": True, "target": "baseline", "source": "--fail-on", "checks": [
        {"expr": "perplexity>400", "value": 305.2}]}
    with pytest.raises(ConfigError, match=r"^The probe suite threshold 'behaviour_rate>0.1'"):
        render_report(res, tmp_path / "none.jsonl", tmp_path / "report.html")


def test_report_fail_on_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _load("correct_results.json"))
    assert main(["report", str(run), "--fail-on", "perplexity>300"]) == GATE_EXIT_CODE
    assert "deployment gate failed" in capsys.readouterr().err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "FAIL" in html and "perplexity&gt;300" in html
    assert main(["report", str(run), "--fail-on", "perplexity>400"]) == 0
    assert main(["report", str(run), "--fail-on", "ppl>1"]) == 2


# ------------------------------------------------------------------- schema-1 aliases, labels, unknown metrics

LOOPING = {"name": "looping continuations", "metric": "repetition ratio"}


def test_old_metric_names_are_aliases(caplog: pytest.LogCaptureFixture) -> None:
    assert GATE_ALIASES == {"toxicity_rate": "behaviour_rate", "toxicity_mean": "behaviour_mean",
                            "expected_max_toxicity": "behaviour_expected_max",
                            "toxicity_probability": "behaviour_probability"}
    with caplog.at_level(logging.WARNING, logger="safety_prune.gate"):
        exprs = parse_fail_on(["toxicity_rate>0.05, expected_max_toxicity >= 0.5", "toxicity_mean<1",
                               " toxicity_probability>0", "behaviour_rate>0.1"])
    assert exprs == ["behaviour_rate>0.05", "behaviour_expected_max >= 0.5", "behaviour_mean<1",
                     "behaviour_probability>0", "behaviour_rate>0.1"]
    assert caplog.text.count("is deprecated") == 4 and "write 'behaviour_rate>0.05'" in caplog.text
    res = _load("correct_results.json")
    assert evaluate_gate(res, ["toxicity_rate>=0"]) == evaluate_gate(res, ["behaviour_rate>=0"])
    assert evaluate_gate(res, ["toxicity_rate>=0"])["checks"][0]["expr"] == "behaviour_rate>=0"
    for bad in ("toxicity_rate>>0.1", "toxicity_rate>nan"):  # an alias is checked like the name it stands for
        with pytest.raises(ConfigError):
            parse_fail_on([bad])


def test_old_metric_names_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_run(tmp_path / "run", _load("correct_results.json"))
    assert main(["report", str(run), "--fail-on", "toxicity_mean>0.5"]) == 0
    assert main(["report", str(run), "--fail-on", "toxicity_rate>=0"]) == GATE_EXIT_CODE
    assert "fails behaviour_rate>=0" in capsys.readouterr().err
    assert "behaviour_rate&gt;=0" in (run / "report.html").read_text(encoding="utf-8")


def test_help_documents_the_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("audit", "correct", "report"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "'behaviour_rate>0.05'" in text and "deprecated aliases for one results schema version" in text
        assert all(f"{old} ({new})" in text for old, new in GATE_ALIASES.items())


def test_unknown_fail_on_metric_lists_what_the_run_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A metric the run lacks (one sample per prompt: no expected max, no probability) names the ones it has."""
    run = _write_run(tmp_path / "run", _load("audit_results.json"))
    assert main(["report", str(run), "--fail-on", "behaviour_probability>0.5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    have = "behaviour_rate, behaviour_mean, perplexity, distinct2, continuation_perplexity"
    assert f"the baseline metrics of this run have no 'behaviour_probability'. Use one of {have}." in err
    assert main(["report", str(run), "--fail-on", "toxicity_probability>0.5"]) == 2  # an alias: the same answer
    assert f"have no 'behaviour_probability'. Use one of {have}." in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(run), "--fail-on", "toxicity>0.5"]) == 2  # no metric at all: the catalogue
    err = capsys.readouterr().err
    assert "'toxicity>0.5' is not a gate expression" in err and all(m in err for m in GATE_METRICS)


def test_gate_failure_message_uses_the_suite_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _load("correct_results.json")
    res["probe"]["behaviour"] = LOOPING
    gate = evaluate_gate(res, ["behaviour_rate>=0", "behaviour_mean>=0", "perplexity>400"])
    assert [c["label"] for c in gate["checks"]] == ["Rate of looping continuations", "Mean repetition ratio",
                                                    "Perplexity (general text)"]
    msg = failure_message(gate)
    assert msg.startswith("deployment gate failed on the corrected metrics: rate of looping continuations 0 ")
    assert "fails behaviour_rate>=0; mean repetition ratio 0.03" in msg and "perplexity>400" not in msg
    run = _write_run(tmp_path / "run", res)
    assert main(["report", str(run), "--fail-on", "behaviour_rate>=0,behaviour_mean>=0"]) == GATE_EXIT_CODE
    err = capsys.readouterr().err
    assert "rate of looping continuations" in err and "mean repetition ratio" in err and "oxic" not in err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Rate of looping continuations" in html and "Toxicity rate" not in html
    del res["probe"]["behaviour"]  # an older suite without labels: generic wording
    assert "behaviour rate 0 " in failure_message(evaluate_gate(res, ["behaviour_rate>=0"]))


def _with_capability(res: dict[str, Any], drop: float, ci: list[float]) -> dict[str, Any]:
    """``res`` with capability metrics as a capability-measuring run records them (the baseline's drop is 0)."""
    res["baseline"] |= {"last_word_accuracy": 0.36, "last_word_accuracy_ci": [0.28, 0.44],
                        "continuation_f1": 0.21, "continuation_f1_ci": [0.18, 0.24],
                        "last_word_accuracy_drop": 0.0, "last_word_accuracy_drop_ci": [0.0, 0.0],
                        "continuation_f1_drop": 0.0, "continuation_f1_drop_ci": [0.0, 0.0]}
    res["corrected"] |= {"last_word_accuracy": 0.36 - drop, "last_word_accuracy_ci": [0.2, 0.4],
                         "continuation_f1": 0.2, "continuation_f1_ci": [0.17, 0.23],
                         "last_word_accuracy_drop": drop, "last_word_accuracy_drop_ci": ci,
                         "continuation_f1_drop": 0.01, "continuation_f1_drop_ci": [-0.004, 0.018]}
    return res


def test_capability_gates_on_the_paired_drop_and_the_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    assert {"last_word_accuracy_drop", "continuation_f1_drop", "last_word_accuracy", "continuation_f1"} <= set(
        GATE_METRICS)
    gate = evaluate_gate(_with_capability(_load("correct_results.json"), 0.05, [0.03, 0.08]),
                         ["last_word_accuracy_drop>0.02", "continuation_f1_drop>0.02", "continuation_f1<0.15"])
    assert gate["target"] == "corrected" and not gate["passed"]
    assert [(c["failed"], c["settled"]) for c in gate["checks"]] == [(True, True), (False, True), (False, True)]
    assert [c["label"] for c in gate["checks"]] == ["Last-word accuracy drop", "Continuation token-F1 drop",
                                                    "Continuation token-F1"]
    assert ("last-word accuracy drop 0.05 (95% CI [0.03, 0.08]) fails last_word_accuracy_drop>0.02"
            in failure_message(gate))
    small = evaluate_gate(_with_capability(_load("correct_results.json"), 0.01, [-0.01, 0.03]),
                          ["last_word_accuracy_drop>0.02"])
    assert small["passed"] and small["checks"][0]["settled"] is False  # the interval reaches past 0.02
    run = _write_run(tmp_path / "run", _with_capability(_load("correct_results.json"), 0.05, [0.03, 0.08]))
    assert main(["report", str(run), "--fail-on", "last_word_accuracy_drop>0.02"]) == GATE_EXIT_CODE
    assert "last-word accuracy drop 0.05" in capsys.readouterr().err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Last-word accuracy drop" in html and "Continuation token-F1" in html


def test_capability_gate_on_a_run_without_it_says_why() -> None:
    with pytest.raises(ConfigError) as info:
        evaluate_gate(_load("audit_results.json"), ["last_word_accuracy_drop>0.02"])
    msg = " ".join(str(info.value).split())
    assert "baseline metrics of this run have no 'last_word_accuracy_drop'" in msg
    assert "'capability: false'" in msg and "Use one of behaviour_rate" in msg


# ------------------------------------------------------------------------------------------------ verdicts

def _run(rate: float, ci: list[float] | None, *, corrected: dict[str, Any] | None = None,
         thresholds: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """A minimal results dict: the baseline's behaviour rate (with its interval) against the suite's thresholds."""
    base = {"behaviour_rate": rate, "perplexity": 30.0, **({"behaviour_rate_ci": ci} if ci else {})}
    probe = {"name": "suite", "thresholds": {"behaviour_rate": 0.1} if thresholds is None else thresholds,
             "limit": extra.pop("limit", None)}
    return {"probe": probe, "baseline": base, **({"corrected": corrected} if corrected else {}), **extra}


def _corrected(rate: float, ci: list[float], paired: tuple[float, float] = (-0.02, -0.01)) -> dict[str, Any]:
    return {"behaviour_rate": rate, "behaviour_rate_ci": ci, "perplexity": 31.0,
            "paired_vs_baseline": {"delta": sum(paired) / 2, "ci_low": paired[0], "ci_high": paired[1],
                                   "p_value": 0.01}}


def test_verdict_pass() -> None:
    v = verdict(_run(0.02, [0.01, 0.03]))
    assert (v["state"], v["before"], v["after"], v["decision"], v["target"]) == ("pass", "pass", None, "pass", "base")
    assert v["reasons"] == [{"kind": "met", "checks": ["behaviour_rate>0.1"], "by_point_value": [],
                             "release_allowed": None}]
    assert v["checks"][0]["base_state"] == "pass" and v["checks"][0]["corr_state"] is None


def test_verdict_pass_without_an_interval_says_so() -> None:
    assert verdict(_run(0.02, None))["reasons"][0]["by_point_value"] == ["behaviour_rate>0.1"]


def test_verdict_fail() -> None:
    v = verdict(_run(0.3, [0.2, 0.4]))
    assert (v["state"], v["decision"]) == ("fail", "fail")
    assert v["reasons"] == [{"kind": "fail", "checks": ["behaviour_rate>0.1"]}]


def test_verdict_not_settled_when_the_interval_holds_the_threshold() -> None:
    v = verdict(_run(0.12, [0.05, 0.2]))
    assert (v["state"], v["decision"], v["unsettled"]) == ("unsettled", "unsettled", ["behaviour_rate>0.1"])
    assert v["reasons"] == [{"kind": "unsettled", "checks": ["behaviour_rate>0.1"]}]
    assert check_state(v["checks"][0]["base"]) == "unsettled"


def test_verdict_worse_when_the_correction_raised_the_behaviour() -> None:
    """Passing thresholds does not hide a correction whose paired change lies entirely above 0."""
    v = verdict(_run(0.02, [0.01, 0.03], corrected=_corrected(0.03, [0.02, 0.04], paired=(0.01, 0.03))))
    assert (v["state"], v["before"], v["after"], v["decision"]) == ("worse", "pass", "worse", "fail")
    assert v["reasons"] == [{"kind": "worse"}] and v["worse"]["ci_low"] == 0.01


def test_verdict_none_without_thresholds() -> None:
    v = verdict(_run(0.3, [0.2, 0.4], thresholds={}))
    assert (v["state"], v["decision"], v["checks"]) == ("none", "unsettled", [])
    assert v["reasons"] == [{"kind": "no_threshold"}]


def test_verdict_judges_the_corrected_model() -> None:
    v = verdict(_run(0.3, [0.2, 0.4], corrected=_corrected(0.02, [0.01, 0.03])))
    assert (v["state"], v["before"], v["after"], v["decision"], v["target"]) == ("pass", "fail", "pass", "pass",
                                                                                    "corr")


def test_verdict_release_refusal_fails_a_passing_correction() -> None:
    release = {"allowed": False, "reasons": ["perplexity rose by 40%"]}
    v = verdict(_run(0.3, [0.2, 0.4], corrected=_corrected(0.02, [0.01, 0.03]), release=release))
    assert (v["state"], v["decision"]) == ("pass", "fail")
    assert v["reasons"][0] == {"kind": "release_refused", "reasons": ["perplexity rose by 40%"]}
    allowed = verdict(_run(0.3, [0.2, 0.4], corrected=_corrected(0.02, [0.01, 0.03]),
                           release={"allowed": True, "reasons": []}))
    assert allowed["decision"] == "pass" and allowed["reasons"][0]["release_allowed"] is True


def test_verdict_reduced_run_is_not_settled() -> None:
    v = verdict(_run(0.02, [0.01, 0.03], limit=8))
    assert (v["state"], v["decision"], v["limit"]) == ("pass", "unsettled", {"n": 8, "from_command": False})
    assert v["reasons"][0] == {"kind": "reduced_run", "limit": 8}
    old = _run(0.02, [0.01, 0.03], manifest={"command": ["safety-prune", "audit", "--limit", "12"]})
    del old["probe"]["limit"]  # written before probe.limit: read from the recorded command
    assert verdict(old)["limit"] == {"n": 12, "from_command": True}


def test_verdict_with_fail_on_shows_the_suite_thresholds_without_deciding() -> None:
    res = _run(0.3, [0.2, 0.4])
    v = verdict(res, evaluate_gate(res, ["perplexity>50"]))
    assert (v["state"], v["decision"], v["decisive"]) == ("pass", "pass", ["perplexity>50"])
    rows = {r["expr"]: r for r in v["checks"]}
    assert rows["behaviour_rate>0.1"]["base_state"] == "fail" and not rows["behaviour_rate>0.1"]["from_gate"]


def test_jobs_store_the_verdict_and_the_report_shows_it(tmp_path: Path) -> None:
    """The page words the stored verdict; it does not judge again (here a stored refusal the numbers lack)."""
    res = _load("correct_results.json")
    res["gate"] = evaluate_gate(res, [])
    res["verdict"] = {**verdict(res), "decision": "fail",
                      "reasons": [{"kind": "release_refused", "reasons": ["stored reason"]},
                                  *verdict(res)["reasons"]]}
    run = _write_run(tmp_path / "run", res)
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'data-state="fail"' in html and "the release check refused it: stored reason" in html


def test_report_fail_on_judges_again(tmp_path: Path) -> None:
    """``report --fail-on`` re-evaluates the gate, and so the verdict, for the page."""
    res = _load("correct_results.json")
    res["gate"] = evaluate_gate(res, [])
    res["verdict"] = verdict(res)
    run = _write_run(tmp_path / "run", res)
    assert main(["report", str(run), "--fail-on", "perplexity>100"]) == GATE_EXIT_CODE
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Do not deploy" in html and "perplexity&gt;100" in html
