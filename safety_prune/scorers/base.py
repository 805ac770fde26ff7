"""The scorer interface: a name, what it is, what it misses, and batched scores in [0, 1]."""

from __future__ import annotations

import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import sha256_file


class Scorer(ABC):
    """A behaviour scorer (toxicity, repetition, ...). ``limits`` states its known blind spots in plain language
    for the report."""

    name: str
    description: str
    limits: str
    batch_size: int = 64
    behaviour: str = "toxicity"  # what a high score means; toxicity scorers are validated against Perspective
    localises: bool = False  # can say which tokens of a continuation carry the behaviour (``token_scores``)
    finds_loops: bool = False  # can say where a continuation starts to loop (``loops``)
    options: dict[str, Any]  # the constructor's arguments, defaults included (set by ``__new__``)

    def __new__(cls, *args: Any, **kwargs: Any) -> Scorer:
        """Record the constructor's arguments, so that whatever shapes the scores is known to caches."""
        self = super().__new__(cls)
        bound = inspect.signature(cls).bind(*args, **kwargs)
        bound.apply_defaults()
        self.options = dict(bound.arguments)
        return self

    def fingerprint(self) -> str:
        """The scorer's name and options as JSON; a file option stands for its content (sha256), a folder for
        its files' contents, so a changed checkpoint is a different scorer. ``batch_size`` changes no score."""
        return json.dumps({"name": self.name, "class": type(self).__qualname__,
                           "options": {k: _content(v) for k, v in sorted(self.options.items())
                                       if k != "batch_size"}}, sort_keys=True, default=repr)

    def score(self, texts: list[str]) -> list[float]:
        """Score each text in [0, 1] (higher = more toxic), in order, in batches with progress."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(
                f"{self.name} scorer: texts must be a list of strings, got {type(texts).__name__}."
            )
        out = [float(s) for batch in self._batches(texts) for s in self._score_batch(batch)]
        bad = next((i for i, s in enumerate(out) if not 0.0 <= s <= 1.0), None)
        if bad is not None:
            raise ConfigError(
                f"{self.name} scorer returned {out[bad]} for text {bad} ({texts[bad][:60]!r}); "
                "scores must lie in [0, 1]. Check the scorer's checkpoint and attribute."
            )
        return out

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        if self.batch_size < 1:
            raise ConfigError(f"{self.name} scorer: batch_size={self.batch_size}; use 1 or more.")
        starts = range(0, len(texts), self.batch_size)
        for i in tqdm(starts, desc=f"score ({self.name})", unit="batch", disable=len(starts) < 2):
            yield texts[i:i + self.batch_size]

    @abstractmethod
    def _score_batch(self, texts: list[str]) -> list[float]:
        """Raw scores for one batch."""

    def token_scores(self, continuations: list[list[str]]) -> list[list[float]]:
        """Per token of each continuation (given as its decoded token pieces): how much emitting that token
        carries the behaviour. Only scorers with ``localises`` give them."""
        raise ConfigError(f"The {self.name} scorer cannot say which tokens carry the behaviour, so the "
                          "'tokens' target is unavailable with it. Use target: continuation, or a scorer that "
                          "localises (profanity, toxblock, repetition).")

    def loops(self, continuations: list[list[str]]) -> list[Loop | None]:
        """Where each continuation (its decoded token pieces) loops, if it does. Only scorers with
        ``finds_loops`` say so."""
        raise ConfigError(f"The {self.name} scorer cannot say where a continuation starts to loop, so the 'loop' "
                          "target is unavailable with it. Use the repetition scorer, or target: tokens.")


@dataclass(frozen=True)
class Loop:
    """A loop in a continuation: from token ``start`` up to ``end`` (exclusive) every token repeats the token
    ``period`` positions earlier; tokens ``start - period`` to ``start`` are the pattern's first occurrence."""

    start: int
    end: int
    period: int


def _content(value: Any) -> Any:
    """An option's value, or for a path to a file or folder the sha256 of what it holds."""
    if not isinstance(value, str | Path) or not str(value):
        return value
    path = Path(value).expanduser()
    try:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        if not files:
            return value
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(path).as_posix().encode() if f != path else b"")
            digest.update(sha256_file(f).encode())
    except OSError:
        return value
    return {"path": str(value), "sha256": digest.hexdigest()}


def word_starts(pieces: list[str]) -> list[int]:
    """Indices of the token pieces that begin a whitespace-separated word."""
    return [i for i, p in enumerate(pieces)
            if p.strip() and (i == 0 or p[:1].isspace() or not pieces[i - 1].strip())]


def words_of(pieces: list[str]) -> list[tuple[int, str]]:
    """(first token index, word) for each word the pieces spell."""
    starts = word_starts(pieces)
    ends = [*starts[1:], len(pieces)] if starts else []
    return [(a, "".join(pieces[a:b]).strip()) for a, b in zip(starts, ends, strict=True)]


class WordScorer(Scorer, ABC):
    """A scorer of text that can also score single words: a token carries the behaviour when the word it
    begins, scored alone, does (the first token is where the model commits to the word)."""

    localises = True

    def token_scores(self, continuations: list[list[str]]) -> list[list[float]]:
        found = [words_of(pieces) for pieces in continuations]
        flat = self.score([w for words in found for _, w in words]) if any(found) else []
        out, pos = [], 0
        for pieces, words in zip(continuations, found, strict=True):
            row = [0.0] * len(pieces)
            for first, _ in words:
                row[first] = flat[pos]
                pos += 1
            out.append(row)
        return out
