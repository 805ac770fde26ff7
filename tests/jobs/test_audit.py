"""End-to-end audit on a tiny model: outputs and the generation cache."""

from itertools import pairwise

import pytest

from safety_prune.jobs.audit import audit
from safety_prune.jobs.options import AuditOptions


def _distinct2(text: str) -> float:
    """Distinct-2 by hand: unique whitespace word pairs / all pairs."""
    words = text.split()
    grams = list(pairwise(words))
    return len(set(grams)) / len(grams) if grams else 0.0


def test_audit_writes_results(setup, tmp_path):
    """Every reported number re-derived from the run's own files: the rate is the share of samples.jsonl scores
    above the threshold, the mean their mean, the scores the scorer's on the stored continuations, distinct-2 and
    perplexity recomputed, each interval around its value; the circuit lists the most negative R_diff of
    relevance.safetensors in order, and that R_diff is the documented contrast of the saved per-set relevance."""
    import json

    import torch
    from safetensors.torch import load_file

    from safety_prune.evaluation import perplexity
    from safety_prune.models import load_model
    from safety_prune.scorers import get_scorer
    from safety_prune.suite import load_suite

    _, model, suite = setup
    threshold = 0.03  # inside the tiny model's score range, so the rate is neither 0 nor 1
    suite = _suite_with(suite, tmp_path / "suite", f"scorer: {{name: profanity, threshold: {threshold}, "
                        "validate: false}")
    run = tmp_path / "run"
    res = audit(model, suite, run, options=AuditOptions(batch_size=4))
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"baseline"} and len(rows) == res["probe"]["n_eval_prompts"]
    scores = [r["score"] for r in rows]
    flagged = sum(v > threshold for v in scores)
    assert 0 < flagged < len(rows)
    b = res["baseline"]
    assert b["behaviour_rate"] == pytest.approx(flagged / len(rows))
    assert b["behaviour_mean"] == pytest.approx(sum(scores) / len(scores))
    assert get_scorer("profanity").score([r["continuation"] for r in rows]) == pytest.approx(scores)
    assert b["distinct2"] == pytest.approx(sum(_distinct2(r["continuation"]) for r in rows) / len(rows))
    lm, s = load_model(model), load_suite(suite)
    ppl = perplexity(lm.model, lm.tokenizer, s.general_test(), max_length=s.perplexity.max_length,
                     stride=s.perplexity.stride)
    assert b["perplexity"] == pytest.approx(ppl.perplexity, rel=1e-5)
    assert b["details"]["perplexity"]["n_tokens"] == ppl.n_tokens
    for key in ("behaviour_mean", "behaviour_rate", "perplexity", "distinct2", "continuation_perplexity"):
        lo, hi = b[f"{key}_ci"]
        assert lo <= b[key] <= hi, key
    assert b["behaviour_rate_ci"][0] < b["behaviour_rate_ci"][1]  # flagged and clean prompts: a real interval
    saved = load_file(run / "relevance.safetensors")
    diff = saved["diff.neuron"]
    norm = {name: saved[f"{name}.neuron"] / saved[f"{name}.neuron"].abs().sum()
            for name in ("general", "benign", "undesired")}
    contrast = torch.maximum(norm["general"], norm["benign"]) - norm["undesired"]
    guarded = sum(res["contrast"]["guarded_per_layer"]["neuron"])
    assert int((diff != contrast).sum()) == guarded > 0  # guarded units are ranked last, all others as documented
    top = res["circuit"]["top_units"]
    order = torch.topk(-diff.flatten(), len(top)).indices.tolist()
    assert [(u["layer"], u["index"]) for u in top] == [divmod(i, diff.shape[1]) for i in order]
    assert [u["r_diff"] for u in top] == pytest.approx([float(diff.flatten()[i]) for i in order])
    assert [u["unit"] for u in res["unit_examples"]] == [f"L{u['layer']}.mlp.neuron[{u['index']}]" for u in top[:20]]
    assert all(0 <= u["specificity"] <= 1 for u in res["unit_examples"])
    assert set(res["manifest"]["data_sha256"]) and set(res["manifest"]["model_sha256"])
    files = {p.name for p in run.iterdir()}
    assert {"results.json", "samples.jsonl", "report.html", "relevance.safetensors", "circuit.json"} <= files
    assert json.loads((run / "circuit.json").read_text())["neuron"]["top_units"] == top


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
