"""The report's sentences (``render/words.py``): an audit speaks of an audit, the decision line names where
its threshold comes from, and the scope and the scorer-validation files come from the run and its suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import report_pages as pages

_CORRECTION_WORDS = re.compile(r"\b(before correction|after correction|the ones pruned|same masks|correct(ed|ion)?|"
                               r"pruned|pruning|baseline|removed|collateral)\b", re.IGNORECASE)


def test_audit_wording_is_its_own(tmp_path: Path) -> None:
    res, extras = pages.load_fixture("audit_results.json"), pages.load_fixture("report_extras.json")
    res["circuit_heatmap"], res["unit_examples"] = extras["circuit_heatmap"], extras["unit_examples"]
    res["scorer"]["validation"] = extras["scorer_validation"]
    res["scorer"]["secondary"] = [{"name": "repetition", "description": "d", "limits": "l", "threshold": 0.5}]
    res["baseline"]["secondary"] = {"repetition": {"behaviour_rate": 0.25, "behaviour_rate_ci": [0.125, 0.375],
                                                   "behaviour_mean": 0.3, "behaviour_mean_ci": [0.2, 0.4],
                                                   "agreement": 0.5}}
    _, doc = pages.page_of(tmp_path, pages.full_run(res), pages.fixture_samples())
    prose = pages.visible_prose(doc)
    assert not _CORRECTION_WORDS.findall(prose), [m.group() for m in _CORRECTION_WORDS.finditer(prose)]
    assert "This audit changed no weights" in prose and "What the top units respond to" in prose
    # the same wording checks hold for a correction report (which may use them)
    res = pages.full_run(pages.rich_results())
    corrected = pages.visible_prose(pages.page_of(tmp_path, res, pages.fixture_samples(), name="corrected")[1])
    assert "they are the ones pruned" in corrected and "same masks" in corrected


@pytest.mark.parametrize(("case", "lead", "words"), [
    ("pass", "Deploy:", ["meets the probe suite's threshold (suite toxicity)", "behaviour_rate>0.1"]),
    ("fail-on", "Do not deploy:", ["fails the --fail-on threshold", "Perplexity (general text) 305.1",
                                   "is above 300"]),
    ("unsettled", "Not settled:", ["has the threshold 0.1 inside its interval"]),
    ("refused", "Do not deploy:", ["the release check refused it: perplexity +3.1%"]),
    ("none", "Not settled:", ["no threshold was set"]),
    ("reduced", "Not settled:", ["reduced run (--limit 12)"]),
])
def test_decision_line_names_the_threshold_source(tmp_path: Path, case: str, lead: str, words: list[str]) -> None:
    res = pages.full_run(pages.load_fixture("correct_results.json"))
    fail_on = None
    if case == "fail-on":
        fail_on = ["perplexity>300"]
    elif case == "unsettled":
        res = pages.straddling(0.11, [0.05, 0.17])
    elif case == "refused":
        res["release"] = {"allowed": False, "reasons": ["perplexity +3.1% (limit +2.0%)"]}
    elif case == "none":
        res["probe"]["thresholds"] = {}
    elif case == "reduced":
        res["probe"]["limit"] = 12
    _, doc = pages.page_of(tmp_path, res, fail_on=fail_on)
    decision = doc.by_id("decision")
    assert decision.one("strong").text() == lead
    for w in words:
        assert w in decision.text(), (w, decision.text())
    body = [n for n in doc.one("body").children if isinstance(n, pages.Node)]
    order = [n.attrs.get("id") for n in body if n.attrs.get("id")]
    assert order.index("decision") < order.index("toc") < order.index("verdict")  # at the top


def test_scope_statement(tmp_path: Path) -> None:
    _, doc = pages.page_of(tmp_path, pages.rich_results(), name="greedy")
    scope = doc.by_id("scope").text()
    for words in ("Greedy decoding", "at most 25 new tokens", "one continuation per prompt", "12 English prompts",
                  "expected maximum toxicity over 25 sampled continuations", "not comparable"):
        assert words in scope, words
    res = pages.rich_results()
    res["probe"]["generation"] |= {"do_sample": True, "num_samples": 25, "temperature": 1.0, "top_p": 0.9}
    _, doc = pages.page_of(tmp_path, res, name="sampled")
    scope = doc.by_id("scope").text()
    assert "Sampled decoding (temperature 1, top-p 0.9)" in scope and "25 continuations per prompt" in scope


def test_scorer_validation_files_are_data_sources(tmp_path: Path) -> None:
    """Listed from what the run recorded only: a validation that records no files lists none (the page names no
    asset of its own)."""
    _, doc = pages.page_of(tmp_path, pages.rich_results(), name="unrecorded")
    assert not doc.all("tr", cls="validation-source")
    res = pages.rich_results()
    res["scorer"]["validation"]["data_sha256"] = {"validation/toxic.jsonl": "c" * 64}
    _, doc = pages.page_of(tmp_path, res, name="recorded")
    rows = doc.all("tr", cls="validation-source")
    assert len(rows) == 1 and "c" * 64 in rows[0].text() and "validation/toxic.jsonl" in rows[0].text()
    assert "scorer validation (profanity)" in rows[0].text()
    _, doc = pages.page_of(tmp_path, pages.load_fixture("correct_results.json"), name="unvalidated")
    assert not doc.all("tr", cls="validation-source")


def test_scope_words_come_from_the_suite(tmp_path: Path) -> None:
    """Language and comparability are the suite's (``probe.behaviour``); a file from before they were recorded
    borrows them from the shipped suite of its name only, and another suite gets the generic sentence."""
    res = pages.rich_results()
    res["probe"] |= {"name": "mine", "behaviour": {"name": "rude replies", "metric": "rudeness",
                                                   "language": "Welsh", "comparability": "Not like any paper."}}
    scope = pages.page_of(tmp_path, res, name="own")[1].by_id("scope").text()
    assert "12 Welsh prompts" in scope and "Not like any paper." in scope and "toxicity" not in scope
    res["probe"]["behaviour"] = {"name": "rude replies", "metric": "rudeness"}
    scope = pages.page_of(tmp_path, res, name="bare")[1].by_id("scope").text()
    assert "records no language" in scope and "not comparable with published benchmarks" in scope
    res["probe"]["name"] = "toxicity"  # a shipped name, but another behaviour: not borrowed
    assert "records no language" in pages.page_of(tmp_path, res, name="other")[1].by_id("scope").text()
