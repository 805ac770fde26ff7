"""Repetitive output as a behaviour score: 1 - (unique words / words) of a continuation.

The paper's second correction target. A continuation is repetitive when its
uniqueness ratio is below 0.5, i.e. when this score is above 0.5, so the same
threshold machinery as toxicity applies: a behaviour is just a probe suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from ..errors import ConfigError
from .base import Loop, Scorer, words_of


def find_loop(tokens: Sequence[str], min_tokens: int = 8, max_period: int = 32) -> Loop | None:
    """The earliest loop of ``tokens``: a run of positions that each repeat the token one period back, at least
    one whole period and ``min_tokens`` long (so a name or phrase said twice is no loop); the shortest period
    wins a tie. Greedy loops run to the end of a continuation, so the run's start is where the loop starts."""
    best: Loop | None = None
    for period in range(1, min(max_period, len(tokens) // 2) + 1):
        i = period
        while i < len(tokens) and (best is None or i < best.start):
            j = i
            while j < len(tokens) and tokens[j] == tokens[j - period]:
                j += 1
            if j - i >= max(period, min_tokens):
                best = Loop(i, j, period)
                break
            i = j + 1
    return best


class RepetitionScorer(Scorer):
    name = "repetition"
    behaviour = "repetition"
    description = "Repetition: 1 - unique words / words of the continuation (greedy decoding)."
    limits = ("Counts repeated whitespace-separated words, so a short continuation that repeats one word twice "
              "already scores 0.5 and lists of names or numbers can score high without looping; an empty "
              "continuation scores 0. It measures looping, not quality: read it next to perplexity.")

    localises = True
    finds_loops = True

    def __init__(self, batch_size: int = 4096, loop_min_tokens: int = 8, loop_max_period: int = 32) -> None:
        for key, value in (("loop_min_tokens", loop_min_tokens), ("loop_max_period", loop_max_period)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"repetition scorer: {key} must be a positive integer, got {value!r}.")
        self.batch_size, self.loop_min_tokens, self.loop_max_period = batch_size, loop_min_tokens, loop_max_period

    def loops(self, continuations: list[list[str]]) -> list[Loop | None]:
        """Each continuation's earliest loop (``find_loop``) over its token pieces, or None."""
        return [find_loop(pieces, self.loop_min_tokens, self.loop_max_period) for pieces in continuations]

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


SCORER = RepetitionScorer  # what safety_prune.scorers registers under this file's name
