"""The every-variant table reads each benchmark JSON's held-out rows, relative to that run's unpruned model, merges
the same edit measured twice into one row, and refuses an empty results folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_script import load

PAIRED = {"delta": -0.02, "ci_low": -0.04, "ci_high": -0.01, "p_value": 0.01}
BASE = {"behaviour_rate": 0.2, "behaviour_mean": 0.25, "perplexity": 20.0}


def _write(folder: Path, name: str, data: object) -> None:
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    module = load("variants")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


def test_rows_are_relative_to_their_own_unpruned_model_and_repeats_merge(variants, tmp_path: Path) -> None:
    edit = {"behaviour_rate": 0.15, "behaviour_mean": 0.2, "perplexity": 20.2}
    _write(tmp_path, "heldout_front.json", {"rows": [
        {"draws": "", **BASE},
        {"draws": "0 @ s 1, reach 0.3, guard 0.1", "setting": {"strength": 1, "reach": 0.3, "guard": 0.1},
         "changed": 7, **edit, "paired_vs_baseline": PAIRED}]})
    _write(tmp_path, "ranking_stability_heldout.json", {"setting": {"strength": 1, "reach": 0.3, "guard": 0.1},
                                                        "rows": [{"draws": [], **BASE},
                                                                 {"draws": [0], **edit, "paired_vs_random": PAIRED}]})
    rows = variants.collect()
    assert len(rows) == 1  # one edit, measured twice
    (row,) = rows
    assert row["rate_change"] == pytest.approx(0.15 / 0.2 - 1)
    assert row["mean_change"] == pytest.approx(-0.2) and row["ppl_change"] == pytest.approx(0.01)
    assert row["chosen"] == "fixed" and row["changed"] == 7
    assert row["vs_random"] == PAIRED  # filled in from the repeat that measured it
    assert row["variant"].startswith("lrp, toxic tokens, draws 0 (s 1, reach 0.3, guard 0.1)")
    assert len(row["also"]) == 1
    table = variants.table(rows)
    assert "| 1 | lrp, toxic tokens, draws 0" in table and "-25.0%" in table and "-0.020 [-0.040, -0.010]" in table


def test_whole_runs_count_as_validated(variants, tmp_path: Path) -> None:
    _write(tmp_path, "stability.json", {"rows": [
        {"seed": 2, "setting": {"strength": 1, "reach": 0.3}, "units": 11, "rate": [0.2, 0.1], "rate_change": -0.5,
         "mean_change": -0.3, "ppl_change": 0.007, "paired_vs_baseline": PAIRED, "paired_vs_random": PAIRED}]})
    (row,) = variants.collect()
    assert row["chosen"] == "validated" and row["rate"] == 0.1 and "seed 2" in row["variant"]


def test_no_results_is_a_clear_error(variants, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["variants.py", "--json", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit, match="No benchmark JSON found"):
        variants.main()
    assert not (tmp_path / "out.json").exists()


def test_a_transport_setting_picked_by_hand_is_fixed(variants, tmp_path: Path) -> None:
    held = {"unpruned": BASE, "transport": {"behaviour_rate": 0.1, "behaviour_mean": 0.2, "perplexity": 20.1},
            "paired_vs_baseline": PAIRED, "paired_vs_random": PAIRED}
    chosen = {"k": 9, "strength": 1.0, "reach": 0.03}
    _write(tmp_path, "transport_screen.json", {"seed": 0, "validation": {"chosen": chosen}, "heldout": held})
    _write(tmp_path, "transport_screen_fixed.json", {"seed": 0, "chosen_by": "fixed by hand",
                                                     "validation": {"chosen": chosen},
                                                     "heldout": held | {"transport": BASE | {"perplexity": 21.0}}})
    _write(tmp_path, "transport_screen_cost_seed1.json", {"seed": 1, "chosen_by": "cost order",
                                                          "validation": {"chosen": None}})  # nothing kept the limits
    ruled, fixed = variants.collect()
    assert ruled["chosen"] == "validated" and "budget order" in ruled["variant"] and ruled["rate_change"] == -0.5
    assert fixed["chosen"] == "fixed" and "lambda 1, reach 0.03)" in fixed["variant"]


@pytest.mark.parametrize(("name", "edit", "chosen", "label"), [
    ("transport_screen_fine_seed2.json", "transport", {"strength": 0.75, "reach": 0.01},
     "lrp-weighted affine transport, seed 2 (lambda 0.75, reach 0.01, cost order, lambda in steps of 1/8)"),
    ("selection_screen_cost_all_seed1.json", "gains", {"strength": 0.5, "reach": 0.1},
     "lrp gains, seed 1 (s 0.5, reach 0.1, cost order on all validation tokens)"),
    ("selection_screen_cost_all_seed0.json", "gains", {"strength": 1.0, "reach": 0.3},
     "lrp gains, seed 0 (s 1, reach 0.3, cost order on all validation tokens; not evidence: written after this "
     "seed's held-out rows)"),
])
def test_a_screen_row_names_its_edit_and_its_search(variants, tmp_path: Path, name: str, edit: str, chosen: dict,
                                                   label: str) -> None:
    held = {"unpruned": BASE, edit: {"behaviour_rate": 0.12, "behaviour_mean": 0.2, "perplexity": 20.4},
            "paired_vs_baseline": PAIRED, "paired_vs_random": PAIRED}
    _write(tmp_path, name, {"seed": int(name[-6]), "chosen_by": "cost order", "heldout": held,
                            "validation": {"chosen": {"k": 9, **chosen}}})
    (row,) = variants.collect()
    assert row["chosen"] == "validated" and row["variant"] == label
    assert row["rate_change"] == pytest.approx(0.12 / 0.2 - 1) and row["ppl_change"] == pytest.approx(0.02)
