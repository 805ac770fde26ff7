"""The saved model's card (``render/card.py``): its release verdict, held-out numbers and saved files' sha256."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from report_pages import (
    full_run,
    load_fixture,
    page_of,
    straddling,
)

from safety_prune.gate import evaluate_gate


def _card(res: dict[str, Any]) -> str:
    from safety_prune.render import model_card

    return model_card(res)


def test_model_card_carries_the_release_verdict() -> None:
    res = full_run(load_fixture("correct_results.json"))
    res["gate"] = evaluate_gate(res, [])
    res["release"] = {"allowed": False, "reasons": ["perplexity +3.1% (limit +2.0%)"], "limits": {"ppl_rise": 0.02}}
    card = _card(res)
    title = card.splitlines()[0]
    assert title.startswith("# ") and "release check REFUSED" in title and "--force" in title
    assert "deployment gate PASS" in title
    assert "- perplexity +3.1% (limit +2.0%)" in card  # the reasons, each on its own line
    assert "| behaviour_rate | 0 (0/12) [0, 0] | 0 (0/12) [0, 0] |" in card  # held-out numbers with counts
    assert "Held-out measurements on 12 prompts" in card and "p = 0.22" in card
    res["release"] = {"allowed": True, "reasons": [], "limits": {"ppl_rise": 0.02}}
    assert "release check passed" in _card(res).splitlines()[0]
    del res["release"]
    assert "release check not recorded" in _card(res).splitlines()[0]
    straddle = straddling(0.11, [0.05, 0.17])
    card = _card(straddle)
    assert "deployment gate NOT SETTLED" in card.splitlines()[0] and "0.11 (95% CI [0.05, 0.17]): NOT SETTLED" in card
    reduced = copy.deepcopy(res)
    reduced["probe"]["limit"] = 12
    assert "Reduced run (--limit 12): not a full measurement" in _card(reduced)


def test_saved_model_sha256_is_shown_when_recorded(tmp_path: Path) -> None:
    res = full_run(load_fixture("correct_results.json"))
    res["release"] = {"allowed": True, "reasons": []}
    # the fixture's command has --save-model but results.json records no sums: the page says so
    _, doc = page_of(tmp_path, res, name="unrecorded")
    saved = doc.by_id("saved-model").text()
    assert "does not record its sha256" in saved and "pruned.saved_model_sha256" in saved
    sha = "ab" * 32
    res["pruned"]["saved_model_sha256"] = {"model.safetensors": sha}
    _, doc = page_of(tmp_path, res, name="recorded")
    assert sha in doc.by_id("saved-model").text() and "model.safetensors" in doc.by_id("saved-model").text()
    assert f"`model.safetensors` {sha}" in _card(res)
    res["release"] = {"allowed": False, "reasons": ["x"]}
    res["pruned"].pop("saved_model_sha256")
    res["manifest"]["command"] = [c for c in res["manifest"]["command"] if c != "--force"]
    _, doc = page_of(tmp_path, res, name="refused")
    assert "not written" in doc.by_id("saved-model").text()
