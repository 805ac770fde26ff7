"""Reading run folders (``render/load.py``): files of earlier schema versions still render."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_pages import (
    dom,
    golden_sweep,
    load_fixture,
    page_of,
)

from safety_prune.render import render_report


@pytest.mark.parametrize("name", ["audit_results.json", "correct_results.json"])
def test_schema_2_fixtures_still_render(tmp_path: Path, name: str) -> None:
    _, doc = page_of(tmp_path, load_fixture(name))
    assert doc.by_id("decision") and doc.by_id("toc") and doc.by_id("scope")
    out = tmp_path / "golden.html"
    render_report(golden_sweep(), tmp_path / "none.jsonl", out)
    assert dom(out.read_text()).by_id("release")
