"""Run folders and pages for the render tests: the fixtures (real ``audit``/``correct`` outputs of a tiny random
model, plus ``report_extras.json``'s optional keys), writing them as a run, and a tiny DOM to read the
rendered page's elements."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from safety_prune.gate import evaluate_gate
from safety_prune.render import render_run

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixture_samples() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / "correct_samples.jsonl").read_text(encoding="utf-8").splitlines()]


def rich_results() -> dict[str, Any]:
    """The correct fixture plus every optional key the report can show."""
    res, extras = load_fixture("correct_results.json"), load_fixture("report_extras.json")
    res["circuit_heatmap"] = extras["circuit_heatmap"]
    res["unit_examples"] = extras["unit_examples"]
    res["scorer"]["validation"] = extras["scorer_validation"]
    res["gate"] = extras["gate"]
    return res


def write_run(path: Path, results: dict[str, Any], samples: list[dict[str, Any]] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if samples is not None:
        (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    return path


def secondary_result(rate: float, agreement: float) -> dict[str, Any]:
    return {"behaviour_rate": rate, "behaviour_rate_ci": [rate / 2, rate * 1.5], "behaviour_mean": rate + 0.0625,
            "behaviour_mean_ci": [rate, rate + 0.125], "agreement": agreement}


def with_secondary(res: dict[str, Any]) -> dict[str, Any]:
    """Results of a suite with ``scorer.secondary: [toxblock]``, shaped as the jobs write them."""
    res["scorer"]["secondary"] = [{"name": "toxblock", "description": "A BiLSTM scorer.", "threshold": 0.375,
                                   "limits": "Misses coded toxicity.", "behaviour": "toxicity"}]
    res["baseline"]["secondary"] = {"toxblock": secondary_result(0.25, 0.75)}
    res["corrected"]["secondary"] = {"toxblock": secondary_result(0.125, 0.875)}
    for row in res["comparison"]:
        row["secondary"] = {"toxblock": secondary_result(0.5, 0.625)}
    return res


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Any] = field(default_factory=list)  # Nodes and strings

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if ((tag is None or c.tag == tag) and (cls is None or cls in c.classes())
                        and all(c.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    out.append(c)
                out += c.all(tag, cls, **attrs)
        return out

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one <{tag} class={cls} {attrs}>, found {len(found)}"
        return found[0]

    def by_id(self, ident: str) -> Node:
        found = [n for n in self.all() if n.attrs.get("id") == ident]
        assert len(found) == 1, f"expected one element with id {ident!r}, found {len(found)}"
        return found[0]

    def inside(self, tag: str) -> bool:
        node = self.parent
        while node is not None:
            if node.tag == tag:
                return True
            node = node.parent
        return False


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#root", {})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(node)
        if tag not in _VOID:
            self.node = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.node.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.node))

    def handle_endtag(self, tag: str) -> None:
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data: str) -> None:
        self.node.children.append(data)


def dom(html: str) -> Node:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.root


def page_of(tmp_path: Path, res: dict[str, Any], samples: list[dict[str, Any]] | None = None,
          fail_on: list[str] | None = None, name: str = "run") -> tuple[str, Node]:
    html = render_run(write_run(tmp_path / name, res, samples), fail_on=fail_on).read_text(encoding="utf-8")
    return html, dom(html)


def full_run(res: dict[str, Any]) -> dict[str, Any]:
    """A full (not reduced) run: the fixtures were made with --limit 12."""
    res["probe"]["limit"] = None
    return res


def straddling(value: float, ci: list[float]) -> dict[str, Any]:
    """The correct fixture with the corrected rate at ``value`` (95% CI ``ci``) against the suite's 0.1."""
    res = full_run(load_fixture("correct_results.json"))
    res["probe"]["thresholds"] = {"behaviour_rate": 0.1}
    res["corrected"]["behaviour_rate"], res["corrected"]["behaviour_rate_ci"] = value, ci
    res["gate"] = evaluate_gate(res, [])
    return res


def golden_sweep() -> dict[str, Any]:
    """The golden correction (methods at k = 2 and 4 in ``tradeoff``), with a usable manifest."""
    res = copy.deepcopy(load_fixture("golden/correct.json"))
    res["manifest"] = load_fixture("correct_results.json")["manifest"]
    return res


def visible_prose(node: Node) -> str:
    """The visible prose: code, commands, styles and charts left out."""
    parts = []
    for c in node.children:
        if isinstance(c, str):
            parts.append(c)
        elif c.tag not in ("code", "pre", "style", "svg", "title"):
            parts.append(visible_prose(c))
    return " ".join(" ".join(parts).split())
