"""Repetitive output as a behaviour score: 1 - (unique words / words) of a continuation.

The paper's second correction target. A continuation is repetitive when its
uniqueness ratio is below 0.5, i.e. when this score is above 0.5, so the same
threshold machinery as toxicity applies: a behaviour is just a probe suite.
"""

from __future__ import annotations

from itertools import pairwise

from .base import Scorer, words_of


class RepetitionScorer(Scorer):
    name = "repetition"
    behaviour = "repetition"
    description = "Repetition: 1 - unique words / words of the continuation (greedy decoding)."
    limits = ("Counts repeated whitespace-separated words, so a short continuation that repeats one word twice "
              "already scores 0.5 and lists of names or numbers can score high without looping; an empty "
              "continuation scores 0. It measures looping, not quality: read it next to perplexity.")

    localises = True

    def __init__(self, batch_size: int = 4096) -> None:
        self.batch_size = batch_size

    def token_scores(self, continuations: list[list[str]]) -> list[list[float]]:
        """1 at the first token of each word that repeats a word pair seen earlier in the continuation:
        the tokens that keep a loop going (the first of them is where it starts)."""
        out = []
        for pieces in continuations:
            row, seen = [0.0] * len(pieces), set()
            words = words_of(pieces)
            for (_, prev), (first, word) in pairwise(words):
                if (prev, word) in seen:
                    row[first] = 1.0
                seen.add((prev, word))
            out.append(row)
        return out

    def _score_batch(self, texts: list[str]) -> list[float]:
        scores = []
        for text in texts:
            words = text.split()
            scores.append(1.0 - len(set(words)) / len(words) if words else 0.0)
        return scores
