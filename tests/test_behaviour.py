"""The generation cache (``evaluation.behaviour.GenerationCache``): reused only for exactly the same model and
inputs, and only rows that agree with their own token ids."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from refusal import job_argv, temps
from tiny import save_tiny, write_tiny_suite

from safety_prune.cli import main
from safety_prune.evaluation import behaviour
from safety_prune.jobs.audit import audit
from safety_prune.jobs.options import AuditOptions
from safety_prune.models import load_model

OPTS = AuditOptions(batch_size=4, limit=4)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A model folder, a suite and a finished audit into ``run``."""
    root = tmp_path_factory.mktemp("cache")
    save_tiny("llama", root / "model")
    suite = write_tiny_suite(root / "suite")
    res = audit(str(root / "model"), suite, root / "run", options=OPTS)
    return root, suite, res


def _counting(monkeypatch) -> list[int]:
    """Count the calls to generation (one per prompt set generated) from now on."""
    calls: list[int] = []
    real = behaviour.generate_detailed
    monkeypatch.setattr(behaviour, "generate_detailed", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_same_model_reuses_the_cache(first_run, tmp_path, monkeypatch):
    root, suite, res = first_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    calls = _counting(monkeypatch)
    again = audit(str(root / "model"), suite, run, overwrite=True, options=OPTS)
    assert not calls
    assert again["baseline"]["behaviour_mean"] == res["baseline"]["behaviour_mean"]


def test_a_changed_config_is_another_model(first_run, tmp_path, monkeypatch):
    """Same weights, another activation in config.json: the old continuations are not reported for it."""
    root, suite, _ = first_run
    model, run = tmp_path / "model", tmp_path / "run"
    shutil.copytree(root / "model", model)
    audit(str(model), suite, run, options=OPTS)
    cfg = json.loads((model / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (model / "config.json").write_text(json.dumps(cfg))
    calls = _counting(monkeypatch)
    audit(str(model), suite, run, overwrite=True, options=OPTS)
    assert len(calls) == 2  # eval and reference prompts


@pytest.mark.parametrize("change", ["config", "tokenizer", "dtype"])
def test_the_fingerprint_covers_what_shapes_outputs(first_run, tmp_path, change):
    root, _, _ = first_run
    base = load_model(str(root / "model")).fingerprint()
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    dtype = None
    if change == "config":
        cfg = json.loads((model / "config.json").read_text())
        cfg["rms_norm_eps"] = 1e-3
        (model / "config.json").write_text(json.dumps(cfg))
    elif change == "tokenizer":
        tok = json.loads((model / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[10:12]
        vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same size, other text
        (model / "tokenizer.json").write_text(json.dumps(tok))
    else:
        dtype = "bfloat16"
    assert load_model(str(model), dtype=dtype).fingerprint() != base
    assert load_model(str(root / "model")).fingerprint() == base


def test_an_edited_continuation_is_not_trusted(first_run, tmp_path, monkeypatch, caplog):
    """A row whose text no longer matches its token ids is a damaged cache: generated again, with a warning."""
    root, suite, res = first_run
    edited = tmp_path / "edited"
    shutil.copytree(root / "run", edited)
    for path in edited.glob("generations-*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[0]["continuation"] = "you stupid idiot, damn fool"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = _counting(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=behaviour.__name__):
        again = audit(str(root / "model"), suite, edited, overwrite=True, options=OPTS)
    assert len(calls) == 2
    assert "is not what its token ids decode to" in caplog.text
    assert again["baseline"]["behaviour_mean"] == res["baseline"]["behaviour_mean"]


def test_the_cache_key_names_device_and_dtype(first_run):
    root, _, _ = first_run
    lm = load_model(str(root / "model"))
    lm.model.to(torch.float64)
    assert lm.fingerprint() != load_model(str(root / "model")).fingerprint()


@pytest.mark.parametrize("damage", ["truncated", "not json", "wrong counts"])
def test_corrupt_generation_cache_is_regenerated(tiny_setup, tmp_path, capsys, caplog, damage):
    """A damaged generations-*.jsonl in --out under --overwrite: before, a JSONDecodeError traceback."""
    _, model, suite = tiny_setup
    out = tmp_path / "run"
    assert main(job_argv("audit", model, suite, out)) == 0
    first = json.loads((out / "results.json").read_text())["baseline"]
    for cache in out.glob("generations-*.jsonl"):
        text = cache.read_text()
        cache.write_text({"truncated": text[: len(text) // 2],
                          "not json": "\x00garbage{\n",
                          "wrong counts": text.splitlines()[0] + "\n"}[damage])
    with caplog.at_level(logging.WARNING):
        code = main(job_argv("audit", model, suite, out, "--overwrite"))
    assert code == 0, capsys.readouterr().err
    assert "damaged generation cache" in caplog.text
    assert json.loads((out / "results.json").read_text())["baseline"] == first  # regenerated identically
    for cache in out.glob("generations-*.jsonl"):
        assert all(json.loads(line) for line in cache.read_text().splitlines())
    assert not temps(tmp_path)
