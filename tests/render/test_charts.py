"""The report's charts (render/charts.py) with extreme but legal numbers (issue 27 L12)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from safety_prune.metrics import metric_labels
from safety_prune.render.charts import metrics_chart, tradeoff_chart

FIXTURE = Path(__file__).parent / "fixtures" / "correct_results.json"


def test_perplexity_near_the_float_maximum_draws_without_warnings() -> None:
    """Before (93f5b05): matplotlib printed "overflow encountered in multiply" for a perplexity of 1e308 (a broken
    model's, legal in results.json); the panel is now drawn at the chart's limit, the table keeps the number."""
    results = json.loads(FIXTURE.read_text(encoding="utf-8"))
    base, corr = results["baseline"], results["corrected"]
    base["perplexity"], base["perplexity_ci"] = 1e308, [1e307, 1.7e308]
    results["comparison"][0]["perplexity"] = 1.7e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics_chart(base, corr, metric_labels()) is not None
        assert tradeoff_chart(results["comparison"], base, metric_labels()) is not None
