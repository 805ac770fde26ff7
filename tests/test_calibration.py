"""Calibration windows: general documents joined end to end, cut into samples of one fixed length."""

from __future__ import annotations

import copy

import pytest
from tiny import CORPUS, tiny_tokenizer
from tokenizers.processors import TemplateProcessing

from safety_prune.calibration import calibration_windows
from safety_prune.errors import ConfigError, DataSourceError

DOCS = [f"{a} {b}" for a, b in zip(CORPUS, CORPUS[3:], strict=False)]


def _bos_tokenizer():
    """The tiny tokenizer, but putting BOS before every text (as Llama's does)."""
    tok = copy.deepcopy(tiny_tokenizer())
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _stream(tok) -> list[int]:
    """Every document's tokens followed by EOS, built independently of the module."""
    out: list[int] = []
    for doc in DOCS:
        out += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def test_windows_have_the_requested_length_and_count_and_cross_documents() -> None:
    tok = tiny_tokenizer()
    window = max(len(tok(d, add_special_tokens=False)["input_ids"]) for d in DOCS) + 2  # longer than any document
    windows = calibration_windows(tok, DOCS, window=window, n_windows=5)
    assert len(windows) == 5
    assert all(len(w.input_ids) == window and w.target_start == 1 for w in windows)
    joined = [t for w in windows for t in w.input_ids]
    assert joined == _stream(tok)[:5 * window]  # consecutive slices of the joined documents, nothing skipped
    assert all(tok.eos_token_id in w.input_ids[:-1] for w in windows)  # each spans a document boundary


def test_windows_start_like_a_text_when_the_tokenizer_adds_bos() -> None:
    tok = _bos_tokenizer()
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    windows = calibration_windows(tok, DOCS, window=32, n_windows=4)
    assert all(len(w.input_ids) == 32 and w.input_ids[0] == tok.bos_token_id for w in windows)
    assert [t for w in windows for t in w.input_ids[1:]] == _stream(tok)[:4 * 31]


def test_too_little_text_says_how_much_there_is() -> None:
    tok = tiny_tokenizer()
    have = len(_stream(tok))
    with pytest.raises(DataSourceError) as err:
        calibration_windows(tok, DOCS, window=64, n_windows=1000)
    msg = str(err.value)
    assert f"has only {have:,}" in msg and "64,000 calibration tokens" in msg
    assert "--n-windows 1000 x --window 64" in msg and f"enough for {have // 64} windows" in msg


def test_a_window_too_short_to_explain_anything_is_refused() -> None:
    with pytest.raises(ConfigError, match="--window 8"):
        calibration_windows(_bos_tokenizer(), DOCS, window=8, n_windows=2)
