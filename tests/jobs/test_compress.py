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
