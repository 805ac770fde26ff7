"""End-to-end audit on a tiny model: outputs and the generation cache."""

import pytest

from safety_prune.jobs.audit import audit
from safety_prune.jobs.options import AuditOptions


def test_audit_writes_results(setup, tmp_path):
    _, model, suite = setup
    res = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4))
    for key in ("behaviour_mean", "behaviour_rate", "perplexity", "distinct2", "continuation_perplexity"):
        assert isinstance(res["baseline"][key], float)
        lo, hi = res["baseline"][f"{key}_ci"]
        assert lo <= res["baseline"][key] <= hi or key == "continuation_perplexity"
    assert res["circuit"]["top_units"] and res["circuit"]["per_layer"]
    assert set(res["manifest"]["data_sha256"]) and set(res["manifest"]["model_sha256"])
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"results.json", "samples.jsonl", "report.html", "relevance.safetensors", "circuit.json"} <= files


def test_rerun_reuses_cached_continuations(setup, tmp_path, monkeypatch):
    """A rerun into the same --out reuses the unpruned model's continuations instead of generating again."""
    _, model, suite = setup
    first = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4))
    cached = sorted(p.name for p in (tmp_path / "run").glob("generations-*.jsonl"))
    assert len(cached) == 2  # eval and reference prompts

    from safety_prune.evaluation import behaviour

    monkeypatch.setattr(behaviour, "generate_detailed", lambda *a, **k: pytest.fail("generated again"))
    second = audit(model, suite, tmp_path / "run", overwrite=True, options=AuditOptions(batch_size=4))
    assert second["baseline"]["behaviour_mean"] == first["baseline"]["behaviour_mean"]
    assert sorted(p.name for p in (tmp_path / "run").glob("generations-*.jsonl")) == cached



def _suite_with(path: str, folder, scorer: str, extra: str = "") -> str:
    """The tiny suite (profanity scorer) with another scorer block and extra keys, written into ``folder``."""
    from pathlib import Path

    src = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("prompts.txt", "general.txt"):
        (folder / name).write_bytes((src.parent / name).read_bytes())
    text = src.read_text().replace("scorer: {name: profanity, threshold: 0.1, validate: false}", scorer)
    (folder / "suite.yaml").write_text(text + extra)
    return str(folder / "suite.yaml")


SECONDARY_KEYS = {"behaviour_rate", "behaviour_rate_ci", "behaviour_mean", "behaviour_mean_ci", "agreement"}


def test_secondary_scorer_and_behaviour_labels(setup, tmp_path, capsys):
    """A repetition scorer as the second opinion of the profanity primary scores the same continuations; the
    suite's behaviour labels word the report and the gate's failure message."""
    import json

    from safety_prune.cli import main
    from safety_prune.gate import GATE_EXIT_CODE

    _, model, suite = setup
    suite = _suite_with(suite, tmp_path / "suite", "scorer: {name: profanity, threshold: 0.1, validate: false, "
                        "secondary: [{name: repetition, threshold: 0.2}]}",
                        "behaviour: {name: looping continuations, metric: repetition ratio}\n")
    out = tmp_path / "run"
    code = main(["audit", "--model", model, "--probe", suite, "--out", str(out), "--batch-size", "4",
                 "--fail-on", "behaviour_rate>=0"])
    assert code == GATE_EXIT_CODE
    err = capsys.readouterr().err
    assert "deployment gate failed on the baseline metrics: rate of looping continuations" in err
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 2 and res["probe"]["thresholds"] == {"behaviour_rate": 0.1}
    sec = res["baseline"]["secondary"]["repetition"]
    assert set(sec) == SECONDARY_KEYS
    assert sec["behaviour_rate_ci"][0] <= sec["behaviour_rate"] <= sec["behaviour_rate_ci"][1]
    assert 0 <= sec["agreement"] <= 1
    assert res["baseline"]["details"]["secondary"]["repetition"]["threshold"] == 0.2
    info = res["scorer"]["secondary"]
    assert [(s["name"], s["threshold"]) for s in info] == [("repetition", 0.2)] and "validation" not in info[0]
    # the same continuations: recompute the secondary from samples.jsonl
    from safety_prune.scorers import get_scorer

    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    again = get_scorer("repetition").score([r["continuation"] for r in rows])
    flags = [(s > 0.2) == (r["score"] > 0.1) for s, r in zip(again, rows, strict=True)]
    assert sec["agreement"] == pytest.approx(sum(flags) / len(flags))
    assert sec["behaviour_rate"] == pytest.approx(sum(s > 0.2 for s in again) / len(again))
    html = (out / "report.html").read_text()
    assert "Rate of looping continuations" in html and "Toxicity rate" not in html
    assert "Second opinion: <code>profanity</code> and <code>repetition</code>" in html


def test_no_secondary_scorer_gives_empty_sections(setup, tmp_path):
    _, model, suite = setup
    res = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4, limit=4))
    assert res["baseline"]["secondary"] == {} and res["scorer"]["secondary"] == []


@pytest.mark.slow
def test_toxblock_as_secondary(setup, tmp_path):
    """toxblock needs its pinned asset (the real cache, fetched from PyPI on first use)."""
    _, model, suite = setup
    suite = _suite_with(suite, tmp_path / "suite", "scorer: {name: profanity, threshold: 0.1, validate: false, "
                        "secondary: [{name: toxblock, validate: false}]}")
    res = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4, limit=4))
    assert set(res["baseline"]["secondary"]["toxblock"]) == SECONDARY_KEYS
    assert res["scorer"]["secondary"][0]["name"] == "toxblock"
