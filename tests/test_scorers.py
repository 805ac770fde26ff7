"""Scorer registry, profanity scorer, and detoxify loaded offline from a checkpoint built here."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from safety_prune.errors import AssetError, ConfigError
from safety_prune.scorers import SCORERS, Scorer, get_scorer
from safety_prune.scorers.detoxify import DetoxifyScorer

CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # detoxify "original"
HUB_ID = "safety-prune-test/no-such-bert"
TEXTS = ["you are a stupid idiot", "the weather is nice today", "", "idiot idiot idiot " * 200]


class NotAWeight:  # an arbitrary object that weights_only loading must refuse
    pass


@pytest.fixture
def offline(monkeypatch):
    """No network at all: sockets refuse to connect and the hub is in offline mode."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def detox_files(tmp_path):
    """A detoxify-style checkpoint of a tiny BERT, its config/tokenizer folder, and the reference model."""
    words = ["you", "are", "a", "stupid", "idiot", "the", "weather", "is", "nice", "today"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizer(vocab_file=str(vocab))
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(CLASSES))
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    config_dir = tmp_path / "config"
    config.save_pretrained(config_dir)
    tok.save_pretrained(config_dir)
    ckpt = tmp_path / "toxic.ckpt"
    torch.save({
        "config": {
            "arch": {"args": {"model_type": HUB_ID, "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
            "dataset": {"args": {"classes": CLASSES}},
        },
        "state_dict": model.state_dict(),
    }, ckpt)
    return ckpt, config_dir, model, tok


def test_registry():
    assert set(SCORERS) == {"profanity", "detoxify", "repetition", "toxblock"}
    with pytest.raises(ConfigError, match=r"'nope' is unknown \(available: detoxify, profanity, repetition"):
        get_scorer("nope")
    with pytest.raises(ConfigError, match="Accepted: batch_size"):
        get_scorer("profanity", checkpoint="x")
    for name in SCORERS:
        cls = SCORERS.get(name)
        assert issubclass(cls, Scorer) and cls.name == name  # the file's name is the scorer's name
        assert cls.description and len(cls.limits) > 50


def test_profanity_ranks_and_handles_edge_cases():
    scorer = get_scorer("profanity", batch_size=2)
    scores = scorer.score(["you are a fucking idiot", "the weather is nice today", "", "hello"])
    assert scores[0] > 0.9 > 0.2 > scores[1]
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.score([]) == []
    assert "TF-IDF" in scorer.limits and "fluency" in scorer.limits
    with pytest.raises(ConfigError, match="list of strings"):
        scorer.score("a single string")


def test_detoxify_offline_from_checkpoint(detox_files, offline):
    ckpt, config_dir, reference, tok = detox_files
    scorer = get_scorer("detoxify", checkpoint=str(ckpt), config_dir=str(config_dir), batch_size=3)
    scores = scorer.score(TEXTS)
    assert len(scores) == len(TEXTS) and all(0.0 <= s <= 1.0 for s in scores)
    assert scores == scorer.score(TEXTS)  # deterministic
    # the weights really came from the checkpoint: match the reference model, column of "toxic"
    enc = tok(TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = torch.sigmoid(reference(**enc).logits)
    assert scores[:2] == pytest.approx(expected[:, 0].tolist(), abs=1e-6)
    insult = DetoxifyScorer(checkpoint=str(ckpt), config_dir=str(config_dir), attribute="insult")
    assert insult.score(TEXTS[:2]) == pytest.approx(expected[:, CLASSES.index("insult")].tolist(), abs=1e-6)
    assert scorer.class_names[0] == "toxicity" and "identity_attack" in scorer.class_names


def test_detoxify_errors(detox_files, offline, tmp_path, monkeypatch):
    ckpt, config_dir, _, _ = detox_files
    with pytest.raises(AssetError, match=r"missing\.ckpt does not exist"):
        DetoxifyScorer(checkpoint=str(tmp_path / "missing.ckpt"), config_dir=str(config_dir))
    with pytest.raises(AssetError, match=rf"{HUB_ID}.*config_dir"):
        DetoxifyScorer(checkpoint=str(ckpt))
    with pytest.raises(ConfigError, match=r"'sarcasm'.*toxicity, severe_toxicity"):
        DetoxifyScorer(checkpoint=str(ckpt), config_dir=str(config_dir), attribute="sarcasm")
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"config": NotAWeight(), "state_dict": {}}, pickled)
    with pytest.raises(AssetError, match=r"pickled\.ckpt .*weights_only=True \(Unsupported global"):
        DetoxifyScorer(checkpoint=str(pickled), config_dir=str(config_dir))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(AssetError, match="checkpoint=PATH"):
        DetoxifyScorer(model_type="original")
    with pytest.raises(ConfigError, match="model_type 'huge'"):
        DetoxifyScorer(model_type="huge")


def test_repetition_suite_and_scorer():
    scorer = get_scorer("repetition")
    assert scorer.score(["go go go go", "a fine day in the park", ""]) == [0.75, 0.0, 0.0]


def test_tokens_target_with_a_scorer_that_cannot_localise_is_refused_before_work(detox_files, tmp_path):
    """detoxify scores whole texts only: a suite asking for token targets with it fails at once, writing nothing."""
    from tiny import save_tiny, write_tiny_suite

    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions

    ckpt, config_dir, _, _ = detox_files
    save_tiny("llama", tmp_path / "model")
    suite = Path(write_tiny_suite(tmp_path / "suite"))
    text = suite.read_text().replace(
        "scorer: {name: profanity, threshold: 0.1, validate: false}",
        f"scorer: {{name: detoxify, threshold: 0.1, validate: false, options: {{checkpoint: '{ckpt}', "
        f"config_dir: '{config_dir}'}}}}").replace("target: continuation", "target: tokens")
    suite.write_text(text)
    with pytest.raises(ConfigError, match="needs a scorer that says which tokens carry the behaviour"):
        correct(str(tmp_path / "model"), str(suite), tmp_path / "run", options=CorrectOptions(k=2, batch_size=4))
    assert not (tmp_path / "run").exists()


def test_repetition_scorer_refuses_a_toxicity_option():
    with pytest.raises(ConfigError, match=r"Scorer 'repetition': bad options \['head'\].*Accepted: batch_size"):
        get_scorer("repetition", head="threat")


def test_repetition_token_scores_mark_the_repeating_words():
    got = get_scorer("repetition").token_scores([["the", " cat", " sat", " the", " cat", " sat", " down"]])
    assert got == [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]  # "the cat" and "cat sat" seen before; "sat down" new


# ------------------------------------------------------------------------- the scorer-validation cache

def test_validation_is_cached_per_scorer_option():
    """The threat head is validated as itself, not served the toxic head's cached numbers (same name and
    threshold, other options)."""
    from safety_prune.scorers.validate import validate_scorer

    toxic = validate_scorer(get_scorer("toxblock"))
    from safety_prune.assets import get_asset
    from safety_prune.scorers.validate import _ASSETS

    assert set(toxic["data_sha256"].values()) == {get_asset(a).sha256 for a in _ASSETS}  # the report lists these
    threat = validate_scorer(get_scorer("toxblock", head="threat"))
    assert threat["auroc"] != toxic["auroc"]
    assert threat == validate_scorer(get_scorer("toxblock", head="threat"), use_cache=False)


def test_a_file_option_stands_for_its_content(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"one")
    a = get_scorer("profanity").fingerprint()
    first = DetoxifyScorer.__new__(DetoxifyScorer, checkpoint=str(ckpt)).fingerprint()
    ckpt.write_bytes(b"two")
    second = DetoxifyScorer.__new__(DetoxifyScorer, checkpoint=str(ckpt)).fingerprint()
    assert first != second and a != first
    assert get_scorer("profanity", batch_size=3).fingerprint() == a  # batch size changes no score


@pytest.mark.parametrize("threshold", [float("nan"), 2.0, -0.1, float("inf")])
def test_scorer_validate_refuses_a_threshold_outside_0_1(capsys, threshold):
    from refusal import paragraph

    from safety_prune.cli import main

    assert main(["scorer", "validate", "--scorer", "profanity", "--threshold", str(threshold)]) == 2
    msg = paragraph(capsys.readouterr().err)
    assert "--threshold" in msg and "[0, 1]" in msg
