"""The correction-front benchmark reads tiny runs too: a baseline rate of 0 gives n/a, not a ZeroDivisionError."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from report_pages import load_fixture

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "correction_front.py"


def _module():
    spec = importlib.util.spec_from_file_location("correction_front", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_zero_baseline_rate_reads_n_a(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    res["baseline"]["behaviour_rate"] = 0.0  # the fixture's 12 prompts: nothing flagged before
    (tmp_path / "results.json").write_text(json.dumps(res), encoding="utf-8")
    cf = _module()
    rows = [r for r in cf.front(tmp_path)["rows"] if r["split"] == "eval"]
    assert rows and all(r["rate_change"] is None for r in rows)
    assert all(isinstance(r["ppl_change"], float) for r in rows)  # the other changes are still computed
    assert cf._pct(None) == "n/a" and cf._pct(0.25) == " +25.0%"
    cf.table(tmp_path)  # the README table of the same run
