"""The compress job on tiny models."""

import pytest
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

    from safety_prune.attribution import samples_from_texts
    from safety_prune.families import architecture, blocks
    from safety_prune.jobs.compress import weight_scores
    from safety_prune.models import load_model
    from safety_prune.suite import load_suite

    save_tiny("llama", tmp_path / "m")
    suite = write_tiny_suite(tmp_path / "suite")
    compress(str(tmp_path / "m"), suite, tmp_path / "run", options=CompressOptions(
        methods=("lrp",), sparsity=0.3, batch_size=4, save_model=str(tmp_path / "saved")))
    lm, s = load_model(str(tmp_path / "m")), load_suite(suite)
    general = samples_from_texts(lm.tokenizer, s.general_reference(), max_tokens=128)[: s.reference.general_n]
    scores = weight_scores(lm, "lrp", general, 4, 0)
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
