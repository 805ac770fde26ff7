"""The comparison page (``render/compare.py``)."""

from __future__ import annotations

from pathlib import Path

from report_pages import (
    dom,
    straddling,
    write_run,
)


def test_compare_page_shows_not_settled(tmp_path: Path) -> None:
    from safety_prune.render import render_compare

    a = write_run(tmp_path / "a", straddling(0.11, [0.05, 0.17]))
    b = write_run(tmp_path / "b", straddling(0.16, [0.12, 0.2]))
    doc = dom(render_compare(a, b, tmp_path / "cmp.html").read_text(encoding="utf-8"))
    badges = [n.text() for n in doc.one("div", cls="banner").all("span", cls="badge")]
    assert badges == ["NOT SETTLED", "FAIL"]
