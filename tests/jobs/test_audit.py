"""End-to-end audit on a tiny model: outputs and the generation cache."""

import pytest

from safety_prune.jobs.audit import audit
from safety_prune.jobs.options import AuditOptions


def test_audit_writes_results(setup, tmp_path):
    _, model, suite = setup
    res = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4))
    for key in ("toxicity_mean", "toxicity_rate", "perplexity", "distinct2", "continuation_perplexity"):
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
    assert second["baseline"]["toxicity_mean"] == first["baseline"]["toxicity_mean"]
    assert sorted(p.name for p in (tmp_path / "run").glob("generations-*.jsonl")) == cached

