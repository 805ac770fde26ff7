"""The correction-front benchmark reads tiny runs too: a baseline rate of 0 gives n/a, not a ZeroDivisionError."""

from __future__ import annotations

import json
from pathlib import Path

from bench_script import load
from report_pages import load_fixture


def _module():
    return load("correction_front")


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


def test_a_candidate_not_measured_reads_not_measured(tmp_path: Path, monkeypatch, capsys) -> None:
    """A search row that was never built (at least as strong as one over the perplexity limit, or milder than the
    budget rule's choice) has no perplexity: the README's validation table says so and why, and the front carries
    the run's stage times."""
    res = load_fixture("correct_results.json")
    row = {"k": 5, "scale": 0.5, "strength": 0.5, "threshold": 0.0, "reach": 1.0, "distinct2": 0.8,
           "continuation_perplexity": 3.0, "generated": True, "violations": []}
    base = {**row, "k": 0, "scale": None, "behaviour_mean": 0.2, "behaviour_rate": 0.2, "perplexity": 10.0}
    over = {**row, "strength": 1.0, "scale": 0.0, "behaviour_mean": None, "behaviour_rate": None, "perplexity": 11.0,
            "generated": False, "violations": ["perplexity +10.0%"]}
    skipped = {**over, "reach": 0.3, "perplexity": None, "violations": [
        "not measured: it changes every unit at least as much as strength 1, threshold 0, reach 1, which is over "
        "the perplexity limit"]}
    milder = {**row, "strength": 0.25, "behaviour_mean": None, "behaviour_rate": None, "perplexity": None,
              "generated": False, "violations": [],
              "note": "not measured: strength 0.5, threshold 0, reach 1 dampens more and keeps every limit"}
    res["selection"]["search"] = [base, milder,
                                  {**row, "behaviour_mean": 0.1, "behaviour_rate": 0.1, "perplexity": 10.1},
                                  over, skipped]
    res["pruned"]["intervention"] = {"kind": "proportional", "strength": 0.5, "threshold": 0.0, "reach": 1.0}
    res["pruned"]["count"] = 5
    res["manifest"]["stages_s"] = {"baseline": 1.5}
    (tmp_path / "results.json").write_text(json.dumps(res), encoding="utf-8")
    cf = _module()
    lines = cf.search_table(res)
    assert lines[-1].startswith("| strength 1, threshold 0, reach 0.3 | 5 | not generated |  | not measured | not "
                                "measured: it changes")
    assert "| +10.0% | perplexity +10.0% |" in lines[-2]
    assert lines[2].endswith("| not generated |  | not measured | not measured: strength 0.5, threshold 0, reach 1 "
                             "dampens more and keeps every limit |")  # the budget rule did not need its perplexity
    front = cf.front(tmp_path)
    assert [r["ppl_change"] is None for r in front["rows"] if r["split"] == "validation"] == [True, False, False,
                                                                                              True]
    assert front["rows"][0]["note"] == milder["note"]  # why the budget rule did not read it
    assert front["stages_s"] == {"baseline": 1.5}
    monkeypatch.setattr("sys.argv", ["correction_front.py", str(tmp_path), "--json", str(tmp_path / "front.json")])
    cf.main()  # prints every row, the unmeasured one as n/a
    assert "perplexity n/a  not measured: it changes" in capsys.readouterr().out
    assert json.loads((tmp_path / "front.json").read_text())[0]["stages_s"] == {"baseline": 1.5}


def _run(root: Path, method: str, base: list[float], corrected: list[float]) -> Path:
    root.mkdir()
    (root / "results.json").write_text(json.dumps({"method": method}), encoding="utf-8")
    rows = [{"split": split, "prompt_index": i, "sample": 0, "prompt": f"p{i}", "continuation": "c", "score": s}
            for split, scores in (("baseline", base), (f"corrected:{method}", corrected)) for i, s in enumerate(scores)]
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_two_runs_pair_on_the_same_prompts_or_are_refused(tmp_path: Path) -> None:
    """The reference run's correction minus another's, per prompt; runs with other baselines cannot be paired."""
    import pytest

    cf = _module()
    base = [0.5, 0.4, 0.9, 0.1]
    ref = _run(tmp_path / "lrp", "lrp", base, [0.1, 0.2, 0.3, 0.0])
    other = _run(tmp_path / "wanda", "wanda", base, [0.4, 0.4, 0.8, 0.1])
    got = cf.paired_against(ref, other)
    assert (got["ref_method"], got["method"], got["n_prompts"]) == ("lrp", "wanda", 4)
    assert got["ref_minus_run"]["delta"] == pytest.approx((0.6 - 1.7) / 4)  # mean(ref) - mean(other)
    elsewhere = _run(tmp_path / "elsewhere", "wanda", [0.5, 0.4, 0.9, 0.2], [0.4, 0.4, 0.8, 0.1])
    with pytest.raises(SystemExit, match="cannot be paired"):
        cf.paired_against(ref, elsewhere)
    with pytest.raises(SystemExit, match=r"no samples\.jsonl"):
        cf.paired_against(ref, tmp_path)
    audit_like = _run(tmp_path / "audit", "activation", base, [])  # an audit writes the baseline only
    with pytest.raises(SystemExit, match="holds no 'corrected:activation' rows"):
        cf.paired_against(ref, audit_like)
