"""The report's charts (render/charts.py) with extreme but legal numbers (issue 27 L12)."""

from __future__ import annotations

import json
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

from report_pages import (
    FIXTURES,
    golden_sweep,
    load_fixture,
    page_of,
)

from safety_prune.metrics import metric_labels
from safety_prune.render.charts import metrics_chart, tradeoff_chart, tradeoff_series

FIXTURE = FIXTURES / "correct_results.json"


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


class _LegendLines(HTMLParser):
    """Paths drawn in the trade-off legend (a legend entry's line), outside any <defs> (marker shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.defs, self.lines = 0, 0, 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth:
            self.depth += tag == "g"
            self.defs += tag == "defs"
        elif tag == "g" and dict(attrs).get("id") == "tradeoff-legend":
            self.depth = 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth and not self.defs and tag == "path":
            self.lines += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.defs -= tag == "defs"
            self.depth -= tag == "g"


def _legend_lines(svg: str) -> int:
    parser = _LegendLines()
    parser.feed(svg)
    return parser.lines


def test_tradeoff_legend_shows_only_lines_that_exist() -> None:
    labels = {"behaviour_rate": "Rate", "behaviour_mean": "Mean"}
    single = load_fixture("correct_results.json")  # the methods at one k: points, no lines
    svg = tradeoff_chart(single["comparison"], single["baseline"], labels)
    assert 'id="tradeoff-legend"' in svg and _legend_lines(svg) == 0
    sweep = golden_sweep()  # two k per method: a line per method, and the legend shows each
    svg = tradeoff_chart(sweep["tradeoff"], sweep["baseline"], labels)
    assert _legend_lines(svg) == len({r["method"] for r in sweep["tradeoff"]})


def test_coinciding_points_stay_visible(tmp_path: Path) -> None:
    rows = load_fixture("correct_results.json")["comparison"]
    series = {s["method"]: s for s in tradeoff_series(rows, "behaviour_mean")}
    wanda, activation = series["wanda"], series["activation"]
    assert wanda["points"] == activation["points"]  # the same numbers: drawn on the same spot
    assert (wanda["marker"], wanda["size"]) != (activation["marker"], activation["size"])
    assert len({(s["marker"], s["size"]) for s in series.values()}) == len(series)
    svg = tradeoff_chart(rows, load_fixture("correct_results.json")["baseline"],
                         {"behaviour_rate": "Rate", "behaviour_mean": "Mean"})
    marks = {}
    for i in (wanda["index"], activation["index"]):
        group = svg[svg.index(f'id="tradeoff-series-{i}"'):]
        marks[i] = re.search(r'xlink:href="#([^"]+)"', group).group(1)
    assert marks[wanda["index"]] != marks[activation["index"]]  # different marker shapes in the SVG
    _, doc = page_of(tmp_path, golden_sweep(), name="sweep")
    caption = doc.all("figure", cls="tradeoff")[0].one("figcaption").text()
    assert "one point per k (k = 2, 4), joined by a line per method" in caption
