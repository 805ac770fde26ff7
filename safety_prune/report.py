"""Render a run's ``results.json`` (and samples) into one self-contained, escaped HTML page.

Every number on the page comes from ``results.json``; model and user text is
always escaped (jinja2 autoescape, no ``|safe`` on such text) and the page
loads nothing from anywhere (inline CSS, a CSP meta tag that forbids fetches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .io import write_text
from .resources import resource_dir


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(resource_dir("reports"))),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
    return env


def _examples(samples_path: Path, n: int = 12) -> list[dict[str, Any]]:
    if not samples_path.is_file():
        return []
    rows = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: -r.get("score", 0.0))
    return rows[:n]


def render_report(results: dict[str, Any], samples_path: Path, out_path: Path) -> None:
    html = _env().get_template("report.html.j2").render(r=results, examples=_examples(Path(samples_path)))
    write_text(out_path, html)
