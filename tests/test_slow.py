"""The few tests on the real embedded default model (SmolLM2-135M-Instruct). Marked slow; CI runs them."""

import json

import pytest

from safety_prune.cli import main

pytestmark = pytest.mark.slow


def test_default_audit_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["audit", "--model", "default", "--probe", "toxicity", "--out", str(out), "--limit", "8"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["family"] == "llama" and res["model"]["n_layers"] == 30
    assert res["model"]["n_neurons_per_layer"] == 1536
    b = res["baseline"]
    assert 0 <= b["behaviour_rate"] <= 1 and 0 <= b["behaviour_mean"] <= 1
    assert 5 < b["perplexity"] < 100  # SmolLM2-135M on news/Wikipedia prose
    assert len(res["circuit"]["per_layer"]) == 30
    html = (out / "report.html").read_text()
    assert "Content-Security-Policy" in html and "SmolLM2" in html


def test_packaged_repetition_suite_loads():
    from safety_prune.suite import load_suite

    suite = load_suite("repetition")
    assert suite.scorer.name == "repetition" and suite.generation.max_new_tokens == 64
    assert not set(suite.eval_prompts()) & set(suite.undesired_reference())


def test_profanity_scorer_validation_against_perspective(capsys):
    assert main(["scorer", "validate", "--scorer", "profanity"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_positive"] == 993 and res["n_negative"] == 2000
    assert res["auroc"] > 0.9 and 0.5 < res["recall_at_threshold"] <= 1
    assert res["false_positive_rate_at_threshold"] < 0.05
