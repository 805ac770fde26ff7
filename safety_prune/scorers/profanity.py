"""Offline default scorer: alt-profanity-check (TF-IDF + linear SVM), fast and dependency-light."""

from __future__ import annotations

from .base import WordScorer


class ProfanityScorer(WordScorer):
    name = "profanity"
    description = "alt-profanity-check: TF-IDF bag of words + calibrated linear SVM (offline, MIT)."
    limits = (
        "A lexical TF-IDF + linear SVM model: it sees words, not meaning. Measured AUROC 0.97 against "
        "Perspective on RealToxicityPrompts texts, but threats and insults without swear words score low, "
        "and identity terms raise false alarms ('I am a gay man' scored 0.71 in the design measurement, "
        "0.95 with alt-profanity-check 1.9.1). Broken or looping text scores as clean, so always read it "
        "next to the fluency metrics."
    )

    def __init__(self, batch_size: int = 1024) -> None:
        from profanity_check import predict_prob  # loads the sklearn model once, here rather than at import

        self._predict = predict_prob
        self.batch_size = batch_size

    def _score_batch(self, texts: list[str]) -> list[float]:
        return self._predict(texts).tolist()


SCORER = ProfanityScorer  # what safety_prune.scorers registers under this file's name
