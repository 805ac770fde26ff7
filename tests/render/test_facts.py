"""The report's numbers (``render/facts.py``): a p-value at the bootstrap's floor reads as a bound."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from report_pages import (
    fixture_samples,
    page_of,
    rich_results,
)

from safety_prune.render.facts import N_BOOT


def test_p_at_the_bootstrap_floor_reads_at_most(tmp_path: Path) -> None:
    from safety_prune.evaluation.stats import paired_bootstrap_diff

    n_boot = inspect.signature(paired_bootstrap_diff).parameters["n_boot"].default
    assert n_boot == N_BOOT  # the page knows the floor of the test the jobs run
    floor = paired_bootstrap_diff([1.0] * 40, [0.0] * 40)  # every resample on one side: the smallest p
    assert floor["p_value"] == pytest.approx(2 / (n_boot + 1))
    res = rich_results()
    res["comparison"][1]["paired_vs_baseline"] = floor
    res["comparison"][1]["paired_vs_random"] = {**floor, "p_value": 4 / (n_boot + 1)}
    res["corrected"]["paired_vs_baseline"] = floor
    html, doc = page_of(tmp_path, res, fixture_samples())
    pvalues = [n.text() for n in doc.all("span", cls="pvalue")]
    assert pvalues.count("p ≤ 0.001") == 2 and "p = 0.002" in pvalues  # the table row and the paired note
    assert "p=0.001" not in html and "p = 0.001" not in html
    assert all(re.fullmatch(r"p (=|≤) [\d.]+", p) for p in pvalues), pvalues
