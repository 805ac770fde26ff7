"""End-to-end correct/audit on tiny models: outputs, determinism, held-out discipline, saved models."""

import json

import pytest
from tiny import save_tiny, write_tiny_suite
from transformers import AutoModelForCausalLM

from safety_prune import correction
from safety_prune.cli import main
from safety_prune.correction import CorrectOptions, correct
from safety_prune.errors import ConfigError, OutputError
from safety_prune.evaluation import perplexity
from safety_prune.pipeline import AuditOptions, audit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("correct")
    save_tiny("llama", root / "model")
    return root, str(root / "model"), write_tiny_suite(root / "suite")


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


def test_correct_all_methods_and_reload(setup, tmp_path):
    _, model, suite = setup
    opts = CorrectOptions(method="all", k=4, batch_size=4, save_model=str(tmp_path / "saved"))
    res = correct(model, suite, tmp_path / "run", options=opts)
    methods = [row["method"] for row in res["comparison"]]
    assert methods == ["random", "lrp", "gradient", "wanda", "activation", "aura"]
    assert all(row["k"] == 4 for row in res["comparison"])
    assert all("paired_vs_random" in row for row in res["comparison"] if row["method"] != "random")
    assert res["pruned"] == res["pruned"] | {"unit": "neuron", "count": 4}
    # the saved model reloads with plain transformers and reproduces the corrected perplexity
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    from safety_prune.models import load_model
    from safety_prune.suite import load_suite

    lm = load_model(model)
    s = load_suite(suite)
    ppl = perplexity(reloaded, lm.tokenizer, s.general_test(), max_length=s.perplexity.max_length,
                     stride=s.perplexity.stride).perplexity
    assert ppl == pytest.approx(res["corrected"]["perplexity"], rel=1e-4)
    assert "Corrected" in (tmp_path / "saved" / "README.md").read_text()


def test_same_seed_same_masks(setup, tmp_path):
    _, model, suite = setup
    for name in ("a", "b"):
        correct(model, suite, tmp_path / name, options=CorrectOptions(k=3, batch_size=4, seed=7))
    assert (tmp_path / "a" / "masks.json").read_bytes() == (tmp_path / "b" / "masks.json").read_bytes()


def test_budget_search_reads_only_validation(setup, tmp_path, monkeypatch):
    _, model, suite = setup
    from safety_prune.suite import ProbeSuite

    calls = []
    real_test = ProbeSuite.general_test

    def guarded_search(*args, **kwargs):
        monkeypatch.setattr(ProbeSuite, "general_test", lambda self: calls.append("test") or real_test(self))
        try:
            return real_search(*args, **kwargs)
        finally:
            monkeypatch.setattr(ProbeSuite, "general_test", real_test)

    real_search = correction.budget_search
    monkeypatch.setattr(correction, "budget_search", guarded_search)
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(ppl_budget=0.5, batch_size=4))
    assert calls == []
    assert res["selection"]["rule"] == "ppl_budget" and res["selection"]["search_split"] == "general_validation"
    assert res["selection"]["k"] >= 1


@pytest.mark.parametrize("opts, match", [
    (dict(k=10_000), "exceeds"),
    (dict(sparsity=1.5), "between 0 and 1"),
    (dict(sparsity=0.0), "between 0 and 1"),
    (dict(k=2, sparsity=0.1), "either --k or --sparsity"),
    (dict(method="nope"), "--method nope"),
])
def test_bad_options(setup, tmp_path, opts, match):
    _, model, suite = setup
    with pytest.raises(ConfigError, match=match):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(**opts))
    assert not (tmp_path / "run").exists()


def test_save_model_inside_input_folder_refused(setup, tmp_path):
    _, model, suite = setup
    with pytest.raises(OutputError, match="inside the input model folder"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, save_model=f"{model}/corrected"))


def test_save_model_non_empty_refused(setup, tmp_path):
    _, model, suite = setup
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(OutputError, match="not an empty folder"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, save_model=str(tmp_path / "busy")))


def test_cli_k_too_large_is_clear(setup, tmp_path, capsys):
    _, model, suite = setup
    code = main(["correct", "--model", model, "--probe", suite, "--out", str(tmp_path / "run"), "--k", "99999"])
    err = capsys.readouterr().err
    assert code != 0 and "exceeds" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_results_json_is_strict_json(setup, tmp_path):
    _, model, suite = setup
    correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, batch_size=4))
    text = (tmp_path / "run" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in results.json"))


def test_rerun_reuses_cached_continuations(setup, tmp_path, monkeypatch):
    """A rerun into the same --out reuses the unpruned model's continuations instead of generating again."""
    _, model, suite = setup
    first = audit(model, suite, tmp_path / "run", options=AuditOptions(batch_size=4))
    cached = sorted(p.name for p in (tmp_path / "run").glob("generations-*.jsonl"))
    assert len(cached) == 2  # eval and reference prompts

    from safety_prune import pipeline

    monkeypatch.setattr(pipeline, "generate_detailed", lambda *a, **k: pytest.fail("generated again"))
    second = audit(model, suite, tmp_path / "run", overwrite=True, options=AuditOptions(batch_size=4))
    assert second["baseline"]["toxicity_mean"] == first["baseline"]["toxicity_mean"]
    assert sorted(p.name for p in (tmp_path / "run").glob("generations-*.jsonl")) == cached


def test_damage_screen_reads_validation_and_logs(setup, tmp_path):
    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run",
                  options=CorrectOptions(ppl_budget=0.5, screen=6, screen_max=0.0, batch_size=4, max_search_k=8))
    screen = res["selection"]["screen"]
    assert len(screen) == 6 and all("rise" in row and "dropped" in row for row in screen)
    dropped = {row["unit"] for row in screen if row["dropped"]}
    assert not dropped & set(res["pruned"]["units"])  # a dropped unit is only picked after all others


def test_exclude_layers_are_never_pruned(setup, tmp_path):
    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(k=5, exclude_layers=[1], batch_size=4))
    assert res["pruned"]["count"] == 5 and all(u.startswith("L0.") for u in res["pruned"]["units"])
    with pytest.raises(ConfigError, match=r"layers 0\.\.1"):
        correct(model, suite, tmp_path / "bad", options=CorrectOptions(k=5, exclude_layers=[7]))
