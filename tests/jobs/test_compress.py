"""The compress job on tiny models."""

import pytest
from results_schema import assert_valid_results
from tiny import save_tiny, write_tiny_suite

from safety_prune.errors import ConfigError
from safety_prune.jobs.compress import compress
from safety_prune.jobs.options import CompressOptions


def test_compress_reports_every_method(tmp_path):
    save_tiny("gpt2", tmp_path / "m")
    suite = write_tiny_suite(tmp_path / "suite")
    res = compress(str(tmp_path / "m"), suite, tmp_path / "run",
                   options=CompressOptions(methods=["lrp", "wanda", "magnitude"], batch_size=4))
    assert [r["method"] for r in res["comparison"]] == ["lrp", "wanda", "magnitude"]
    for row in res["comparison"]:
        assert row["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert row["perplexity"] > 1
    assert res["comparison"][1]["ratio_vs_wanda"] == 1.0
    assert_valid_results(tmp_path / "run" / "results.json")


@pytest.mark.parametrize("opts, match", [(dict(sparsity=1.0), "between 0 and 1"),
                                         (dict(methods=["aura"]), "not a compression method"),
                                         (dict(granularity="diagonal"), "granularity")])
def test_compress_bad_options(tmp_path, opts, match):
    save_tiny("llama", tmp_path / "m")
    with pytest.raises(ConfigError, match=match):
        compress(str(tmp_path / "m"), write_tiny_suite(tmp_path / "s"), tmp_path / "run",
                 options=CompressOptions(**opts))
    assert not (tmp_path / "run").exists()


def test_compress_prunes_the_least_important_weights(tmp_path):
    """An inverted ranking (pruning the *most* important weights) must not pass: in the saved model every zeroed
    weight ranks at or below every kept weight of its row, by LRP relevance recomputed here on the same samples."""
    from transformers import AutoModelForCausalLM

    from safety_prune.families import architecture, blocks
    from safety_prune.jobs.compress import calibration_samples, weight_scores
    from safety_prune.models import load_model
    from safety_prune.suite import load_suite

    save_tiny("llama", tmp_path / "m")
    suite = write_tiny_suite(tmp_path / "suite")
    opt = CompressOptions(methods=("lrp",), sparsity=0.3, batch_size=4, save_model=str(tmp_path / "saved"))
    compress(str(tmp_path / "m"), suite, tmp_path / "run", options=opt)
    lm = load_model(str(tmp_path / "m"))
    scores = weight_scores(lm, "lrp", calibration_samples(lm, load_suite(suite), opt), 4, 0, target="actual",
                           aggregation="token_l2", variant="attnlrp")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    arch = architecture(saved)
    checked = 0
    for layer, block in enumerate(blocks(saved)):
        for name in arch.linear_names:
            zero = block.get_submodule(name).weight.detach() == 0
            score = scores[f"weight.{layer}.{name}"]
            for row in range(score.shape[0]):
                if zero[row].any() and (~zero[row]).any():
                    assert score[row][zero[row]].max() <= score[row][~zero[row]].min() + 1e-12
                    checked += 1
    assert checked > 0


def test_windows_are_the_same_calibration_for_every_method_and_recorded(tmp_path, monkeypatch):
    """Every data-driven method attributes the very same windows; results.json names the window, their number,
    the tokens, the digest of the samples, the ranking settings and each method's calibration time; the report
    renders them."""
    import json

    import safety_prune.jobs.compress as job
    from safety_prune.checkpoint import data_digest

    seen: dict[str, list] = {}
    real = job.attribute

    def spy(model, samples, **kw):
        seen[kw["method"]] = list(samples)
        return real(model, samples, **kw)

    monkeypatch.setattr(job, "attribute", spy)
    save_tiny("llama", tmp_path / "m")
    res = compress(str(tmp_path / "m"), write_tiny_suite(tmp_path / "suite"), tmp_path / "run", options=CompressOptions(
        methods=("lrp", "wanda", "gradient", "magnitude"), batch_size=4, window=32, n_windows=6, target="logprob",
        aggregation="token_l2"))
    assert seen["lrp"] == seen["wanda"] == seen["gradient"]
    assert [len(s.input_ids) for s in seen["lrp"]] == [32] * 6
    settings = res["settings"]
    expected = {"window": 32, "n_windows": 6, "n_general": 6, "calibration_tokens": 192, "max_tokens": None,
                "calibration": "windows of joined documents", "target": "logprob", "aggregation": "token_l2",
                "variant": "attnlrp"}
    assert {k: settings[k] for k in expected} == expected
    assert settings["calibration_digest"] == data_digest(seen["wanda"])
    rows = {r["method"]: r for r in res["comparison"]}
    assert all(r["calibration_seconds"] >= 0 for r in rows.values())
    assert rows["wanda"]["time_vs_wanda"] == 1.0
    assert rows["lrp"]["time_vs_wanda"] == rows["lrp"]["calibration_seconds"] / rows["wanda"]["calibration_seconds"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["settings"]["window"] == 32
    page = (tmp_path / "run" / "report.html").read_text()
    assert "calibration tokens" in page and "time vs wanda" in page and "token_l2" in page


def test_default_calibration_is_windows_up_to_the_model_positions_and_the_text(tmp_path):
    """By default: windows of 512 tokens or the model's positions if fewer (the tiny Llama has 256), 32 of them or
    as many as the general calibration text holds, ranked by token-wise L2 relevance."""
    from safety_prune.calibration import calibration_windows
    from safety_prune.models import load_model
    from safety_prune.suite import load_suite

    save_tiny("llama", tmp_path / "m")
    suite = write_tiny_suite(tmp_path / "suite")
    res = compress(str(tmp_path / "m"), suite, tmp_path / "run",
                   options=CompressOptions(methods=("wanda",), batch_size=4))
    s = res["settings"]
    held = len(calibration_windows(load_model(str(tmp_path / "m")).tokenizer, load_suite(suite).general_calibration(),
                                   256, 1000, up_to=True))
    assert 1 <= held < 32  # the tiny text holds fewer than the default count: the run takes what there is
    assert (s["calibration"], s["window"], s["n_windows"], s["max_tokens"]) == (
        "windows of joined documents", 256, held, None)
    assert (s["calibration_tokens"], s["target"], s["aggregation"], s["variant"]) == (
        256 * held, "actual", "token_l2", "attnlrp")


def test_documents_calibration_is_one_sample_per_reference_document(tmp_path):
    save_tiny("llama", tmp_path / "m")
    res = compress(str(tmp_path / "m"), write_tiny_suite(tmp_path / "suite"), tmp_path / "run",
                   options=CompressOptions(methods=("wanda",), batch_size=4, calibration="documents"))
    s = res["settings"]
    assert (s["calibration"], s["window"], s["n_windows"], s["max_tokens"], s["n_general"]) == (
        "documents", None, None, 128, 8)


@pytest.mark.parametrize("opts, match", [(dict(aggregation="nope"), "--aggregation nope is unknown"),
                                         (dict(target="nope"), "--target nope is unknown"),
                                         (dict(variant="nope"), "--variant nope is unknown"),
                                         (dict(calibration="nope"), "--calibration nope is unknown"),
                                         (dict(window=4), "--window must be at least 8"),
                                         (dict(n_windows=0), "--n-windows must be at least 1"),
                                         (dict(calibration="documents", window=64), "do not apply to --calibration "
                                                                                    "documents")])
def test_compress_bad_calibration_options(tmp_path, opts, match):
    with pytest.raises(ConfigError, match=match):
        compress(str(tmp_path / "never-loaded"), "toxicity", tmp_path / "run", options=CompressOptions(**opts))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--aggregation", "--target", "--variant", "--calibration"])
def test_cli_refuses_an_unknown_name_with_status_2(tmp_path, capsys, flag):
    from safety_prune.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "run"), flag, "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice: 'nope'" in err
    assert not (tmp_path / "run").exists()


def test_window_longer_than_the_model_positions_is_refused_before_attribution(tmp_path, monkeypatch):
    import safety_prune.jobs.compress as job

    monkeypatch.setattr(job, "attribute", lambda *a, **k: pytest.fail("attribution must not start"))
    save_tiny("llama", tmp_path / "m")  # max_position_embeddings 256
    with pytest.raises(ConfigError, match=r"--window 512 is longer than the 256 positions .*Use --window 256 or less"):
        compress(str(tmp_path / "m"), write_tiny_suite(tmp_path / "suite"), tmp_path / "run",
                 options=CompressOptions(methods=("lrp",), window=512))
    assert not (tmp_path / "run").exists()


def test_general_text_too_small_for_the_windows_says_how_many_tokens_there_are(tmp_path):
    from safety_prune.errors import DataSourceError

    save_tiny("llama", tmp_path / "m")
    with pytest.raises(DataSourceError, match=r"asks for 64,000 calibration tokens, but the general calibration text "
                                              r"has only [\d,]+ \(\d+ documents") as err:
        compress(str(tmp_path / "m"), write_tiny_suite(tmp_path / "suite"), tmp_path / "run",
                 options=CompressOptions(methods=("wanda",), window=64, n_windows=1000))
    assert "Lower --n-windows or --window" in str(err.value)
    assert not (tmp_path / "run").exists()
