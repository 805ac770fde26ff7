"""Repetitive output as a behaviour score: 1 - (unique words / words) of a continuation.

The paper's second correction target. A continuation is repetitive when its
uniqueness ratio is below 0.5, i.e. when this score is above 0.5, so the same
threshold machinery as toxicity applies: a behaviour is just a probe suite.
"""

from __future__ import annotations

from .base import Scorer


class RepetitionScorer(Scorer):
    name = "repetition"
    behaviour = "repetition"
    description = "Repetition: 1 - unique words / words of the continuation (greedy decoding)."
    limits = ("Counts repeated whitespace-separated words, so a short continuation that repeats one word twice "
              "already scores 0.5 and lists of names or numbers can score high without looping; an empty "
              "continuation scores 0. It measures looping, not quality: read it next to perplexity.")

    def __init__(self, batch_size: int = 4096) -> None:
        self.batch_size = batch_size

    def _score_batch(self, texts: list[str]) -> list[float]:
        scores = []
        for text in texts:
            words = text.split()
            scores.append(1.0 - len(set(words)) / len(words) if words else 0.0)
        return scores
