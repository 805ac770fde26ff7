"""The scorer interface: a name, what it is, what it misses, and batched scores in [0, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from tqdm.auto import tqdm

from ..errors import ConfigError


class Scorer(ABC):
    """A toxicity scorer. ``limits`` states its known blind spots in plain language for the report."""

    name: str
    description: str
    limits: str
    batch_size: int = 64
    behaviour: str = "toxicity"  # what a high score means; toxicity scorers are validated against Perspective

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
