"""The report of one run: the view model of ``report.html.j2`` and the renderers of the behaviour and task jobs.

Every number on the page comes from ``results.json``; model and user text is always escaped (jinja2 autoescape, no
``|safe`` on such text) and the page loads nothing from anywhere: inline CSS, plots as inline SVG drawn from numbers
(``charts.py``), and a CSP meta tag that forbids every fetch. Re-rendering needs only the run directory, never the
model, so a report can be rebuilt or compared long after the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from typing_extensions import TypedDict

from .. import __version__
from ..gate import (
    evaluate_gate,
    verdict,
)
from ..io import write_text
from ..metrics import METRIC_KEYS, METRICS, metric_ci
from ..results import (
    BehaviourResults,
    CircuitResults,
    CompressResults,
    MetricBlock,
    SampleRow,
    Scalar,
    SecondaryMetrics,
    TokenContext,
    TopUnit,
)
from .charts import curves_chart, heatmap_chart, layer_chart, metrics_chart, tradeoff_chart
from .facts import (
    N_BOOT,
    STATE_WORDS,
    ShownRow,
    behaviour_of,
    command_line,
    labels_of,
    manifest_view,
    p_floor,
    paired_signal,
    pruned_of,
    rate_totals,
    reduced_limit,
    run_id_of,
    selection_of,
    shown_row,
    signal,
    started_at,
    verdict_view,
)
from .load import load_results, load_samples
from .templates import environment, write_page
from .words import (
    decision,
    git_dirty_words,
    hardware_words,
    model_words_of,
    run_file_sums,
    saved_model_of,
    scope_of,
    validation_sources,
)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


_N_EXAMPLES = 12


def _visible(text: object) -> str:
    """Model text with control characters shown as Unicode control pictures instead of silently dropped."""
    return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group()) if ord(m.group()) < 0x20 else 0x2421),
                        "" if text is None else str(text))


_MARKED = {"\n": ("⏎", "newline"), "\t": ("⇥", "tab"), "\r": ("␍", "carriage return")}


class Piece(TypedDict):
    """A run of model text, or a mark standing for whitespace (``name`` says which)."""

    text: str
    name: str | None


def _pieces(text: object, *, token: bool = False) -> list[Piece]:
    """Model text as runs of plain text and marks (``name`` says what a mark stands for), so whitespace that
    carries a unit's relevance is never an invisible sliver: newline, tab and carriage return always; in a
    token also its leading spaces as "·" (all of it when it is only spaces) and an empty token as "∅"."""
    raw = "" if text is None else str(text)
    if token and not raw:
        return [{"text": "∅", "name": "empty token"}]
    lead = len(raw) - len(raw.lstrip(" ")) if token else 0
    out: list[Piece] = []
    for i, ch in enumerate(raw):
        shown, name = ("·", "space") if i < lead else _MARKED.get(ch, (_visible(ch), None))
        if name is None and out and out[-1]["name"] is None:
            out[-1]["text"] = f"{out[-1]['text']}{shown}"
        else:
            out.append({"text": shown, "name": name})
    return out


def _metric_rows(base: MetricBlock, corr: MetricBlock | None, labels: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for key, _label, help_, better in METRICS:
        if not isinstance(base.get(key), int | float):
            continue
        row: dict[str, Any] = {"key": key, "label": labels[key], "help": help_, "better": better, "base": base[key],
               "base_ci": metric_ci(base, key), "corr": None, "corr_ci": None, "delta": None, "rel": None,
               "signal": None, "good": None}
        if corr and isinstance(corr.get(key), int | float):
            delta = corr[key] - base[key]
            row |= {"corr": corr[key], "corr_ci": metric_ci(corr, key), "delta": delta,
                    "rel": delta / abs(base[key]) if base[key] else None,
                    "signal": signal(metric_ci(base, key), metric_ci(corr, key)), "signal_by": "intervals",
                    "good": None if delta == 0 else (delta < 0) == (better == "lower")}
            paired = paired_signal(corr.get("paired_vs_baseline")) if key == "behaviour_mean" else None
            if paired:
                row |= {"signal": paired, "signal_by": "paired test"}
        rows.append(row)
    return rows


def _identical_rows(rows: list[ShownRow]) -> list[list[str]]:
    """Groups of methods whose comparison rows match on every measured number (at the same k)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        paired = row["paired_vs_baseline"]
        numbers: dict[str, object] = {"k": row["k"], **{k: row.get(k) for k in METRIC_KEYS},
                   "paired_vs_baseline": paired["delta"] if paired else None}
        if not any(isinstance(x, int | float) for k, x in numbers.items() if k != "k"):
            continue
        groups.setdefault(json.dumps(numbers, sort_keys=True, default=str), []).append(str(row["method"]))
    return [names for names in groups.values() if len(names) > 1]


class ShownUnit(TopUnit):
    """A unit of the circuit as the page lists it: its id, and whether the correction changed it."""

    name: str
    pruned: bool


def _shown_units(units: list[TopUnit] | None, kind: Literal["neuron", "head"], pruned: set[Scalar]
                 ) -> list[ShownUnit]:
    out: list[ShownUnit] = []
    for u in units or []:
        layer, index = u.get("layer"), u.get("index")
        name = f"L{layer}.mlp.neuron[{index}]" if kind == "neuron" else f"L{layer}.attn.head[{index}]"
        out.append({"name": name, **u, "pruned": name in pruned})
    return out


def _circuit(results: BehaviourResults) -> dict[str, Any] | None:
    circuit = results.get("circuit")
    if not circuit:
        return None
    section = pruned_of(results)
    pruned = set((section.get("units") if section else None) or [])
    grid = results.get("circuit_heatmap")
    return {"c": {"method": circuit.get("method"), "variant": circuit.get("variant"),
                  "n_undesired": circuit.get("n_undesired"), "n_general": circuit.get("n_general"),
                  "normalisation": circuit.get("normalisation"),
                  "conservation_ratio": circuit.get("conservation_ratio")},
            "units": _shown_units(circuit.get("top_units"), "neuron", pruned),
            "heads": _shown_units((circuit.get("heads") or {}).get("top_units"), "head", pruned),
            "heatmap": heatmap_chart(grid, results["model"].get("n_neurons_per_layer")) if grid else None,
            "layer_chart": layer_chart(circuit)}


def _unit_examples(results: BehaviourResults) -> list[dict[str, Any]]:
    def token(c: TokenContext) -> list[Piece]:
        if c.get("special"):  # named, with the marker text it decodes to on hover
            return [{"text": _visible(c["special"]), "name": f"special token {_visible(c.get('token'))}"}]
        return _pieces(c.get("token"), token=True)

    def ctx(items: list[TokenContext] | None) -> list[dict[str, Any]]:
        return [{"left": _pieces(c.get("left")), "token": token(c), "right": _pieces(c.get("right")),
                 "relevance": c.get("relevance")} for c in items or []]

    return [{"unit": str(u.get("unit", "?")), "r_diff": u.get("r_diff"), "specificity": u.get("specificity"),
             "undesired": ctx(u.get("undesired")), "general": ctx(u.get("general"))}
            for u in results.get("unit_examples") or []]


class Said(TypedDict):
    """One continuation as the examples show it."""

    text: str
    score: float | None


class Example(TypedDict):
    """A prompt's baseline and corrected continuation, side by side."""

    prompt_index: Scalar
    sample: Scalar
    prompt: str
    base: Said | None
    corr: Said | None


def _examples(results: BehaviourResults, samples: list[SampleRow]) -> dict[str, Any]:
    """Baseline and corrected continuations of the same prompts, highest-scoring first."""
    splits = {str(r.get("split")) for r in samples}
    method = results.get("method")
    corr_split = f"corrected:{method}" if f"corrected:{method}" in splits else next(
        (s for s in sorted(splits) if s.startswith("corrected:")), None)
    if results.get("corrected") is None:
        corr_split = None  # an audit shows the audited model's continuations only
    pairs: dict[tuple[Scalar, Scalar], Example] = {}
    for r in samples:
        side: Literal["base", "corr"] | None = (
            "base" if r.get("split") == "baseline" else "corr" if r.get("split") == corr_split else None)
        if side is None:
            continue
        pair = pairs.setdefault((r.get("prompt_index"), r.get("sample", 0)),
                                {"prompt_index": r.get("prompt_index"), "sample": r.get("sample", 0),
                                 "prompt": _visible(r.get("prompt")), "base": None, "corr": None})
        pair[side] = {"text": _visible(r.get("continuation")), "score": r.get("score")}

    def worst(p: Example) -> float:
        return max((float(said["score"]) for said in (p["base"], p["corr"]) if said and said["score"] is not None),
                   default=0.0)

    ordered = sorted(pairs.values(), key=lambda p: (-worst(p), str(p["prompt_index"])))
    return {"rows": ordered[:_N_EXAMPLES], "total": len(ordered), "method": corr_split.split(":", 1)[1]
            if corr_split else None}


_SECONDARY_ROWS: tuple[tuple[Literal["behaviour_rate", "behaviour_mean"], str], ...] = (
    ("behaviour_rate", "rate (share above the scorer's threshold)"), ("behaviour_mean", "mean score"))


def _secondary(results: BehaviourResults, base: MetricBlock, corr: MetricBlock | None) -> list[dict[str, Any]]:
    """Each secondary scorer beside the primary: rate and mean before/after for both, and their agreement."""
    thresholds = {str(s.get("name")): s.get("threshold") for s in results["scorer"].get("secondary") or []}
    out = []
    for name, sec in (base.get("secondary") or {}).items():
        after: SecondaryMetrics = ((corr.get("secondary") if corr else None) or {}).get(name) or {}
        rows = [{"key": key, "label": label, "primary_base": base.get(key), "primary_base_ci": metric_ci(base, key),
                 "primary_corr": corr.get(key) if corr else None,
                 "primary_corr_ci": metric_ci(corr, key) if corr else None,
                 "secondary_base": sec.get(key), "secondary_base_ci": metric_ci(sec, key),
                 "secondary_corr": after.get(key), "secondary_corr_ci": metric_ci(after, key)}
                for key, label in _SECONDARY_ROWS]
        out.append({"name": name, "threshold": thresholds.get(name), "rows": rows,
                    "agreement_base": sec.get("agreement"), "agreement_corr": after.get("agreement")})
    return out


def _sections(corrected: bool, comparison: bool) -> dict[str, dict[str, Any]]:
    """The numbered sections in page order (the table of contents and the headings read the same list)."""
    items = [("run", "What was run"), ("scorer", "The scorer and its limits"),
             ("metrics", "Baseline vs corrected" if corrected else "Measurements"), ("circuit", "The circuit"),
             ("units", f"What the {'removed' if corrected else 'top'} units respond to")]
    items += [("comparison", "Method comparison and sweep")] if comparison else []
    items += [("examples", "Examples"), ("limits", "Limitations and reproducibility"),
              ("review", "Evidence mapping and sign-off")]
    return {sid: {"id": sid, "num": i, "title": title} for i, (sid, title) in enumerate(items, 1)}


def _view(results: BehaviourResults, samples: list[SampleRow], folder: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, with optional keys filled in so the template never guesses.

    ``folder``: where results.json lies; the run's other files found there are listed with their sha256."""
    base = results["baseline"]
    corr = results.get("corrected")
    labels = labels_of(results)
    comparison = [shown_row(r) for r in results.get("comparison") or []]
    for row in comparison:
        row["secondary"] = row["secondary"] or {}
    sweep = [shown_row(r) for r in results.get("tradeoff") or []]
    secondary = _secondary(results, base, corr)
    verdict, limit, totals = verdict_view(results), reduced_limit(results), rate_totals(results)
    selection = results.get("selection")
    chosen = selection_of(results)
    split = chosen.get("split") if chosen else None
    return {
        "r": results, "job": results.get("job"), "corr": corr, "manifest": manifest_view(results["manifest"]),
        "started": started_at(results["manifest"]), "command": command_line(results["manifest"]),
        "verdict": verdict, "behaviour": behaviour_of(results), "labels": labels,
        "metrics": _metric_rows(base, corr, labels), "metrics_chart": metrics_chart(base, corr, labels),
        "secondary": secondary, "secondary_names": [s["name"] for s in secondary],
        "secondary_scorers": list(results["scorer"].get("secondary") or []),
        "circuit": _circuit(results), "unit_examples": _unit_examples(results),
        "comparison": comparison, "identical": _identical_rows(comparison),
        "tradeoff_chart": tradeoff_chart(sweep or comparison, base, labels) if comparison else None,
        "tradeoff_ks": sorted({k for r in sweep or comparison if isinstance(k := r["k"], int | float)}),
        "selected_k": corr.get("k") if corr else None, "pruned": results.get("pruned"), "selection": selection,
        "examples": _examples(results, samples), "validation": results["scorer"].get("validation"),
        "version": __version__,
        "limit": limit, "totals": totals, "decision": decision(results, verdict, limit, totals),
        "state_words": STATE_WORDS, "search_totals": rate_totals(results, split.get("n_prompts")) if split is not None
        else {}, "n_boot": N_BOOT, "p_floor": p_floor(),
        "run_id": run_id_of(results["manifest"]), "model_words": model_words_of(results["model"]),
        "scope": scope_of(results, results["probe"].get("n_eval_prompts")),
        "git_dirty": git_dirty_words(results["manifest"]), "hardware": hardware_words(results["manifest"]),
        "validation_sources": validation_sources(results), "run_files": run_file_sums(folder),
        "saved_model": saved_model_of(results),
        "release": results.get("release"),
        "sections": _sections(corr is not None, bool(comparison)),
    }


def render_report(results: BehaviourResults, samples_path: Path, out_path: Path) -> None:
    """Write ``report.html`` for one run (the pipeline calls this while staging the run)."""
    html = environment().get_template("report.html.j2").render(**_view(results, load_samples(Path(samples_path)),
                                                                  Path(out_path).parent))
    write_text(out_path, html)


def render_run(run_dir: str | Path, fail_on: Sequence[str] | None = None) -> Path:
    """Re-render ``RUN_DIR/report.html`` from results.json and samples.jsonl alone; no model is loaded.

    With ``fail_on``, the gate is re-evaluated for the page (results.json is left as the run wrote it).
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if fail_on:
        gate = evaluate_gate(results, fail_on)
        results = {**results, "gate": gate, "verdict": verdict(results, gate)}
    out = run_dir / "report.html"
    html = environment().get_template("report.html.j2").render(**_view(results, load_samples(run_dir / "samples.jsonl"),
                                                                  run_dir))
    write_page(out, html)
    return out


def render_task_report(results: CompressResults | CircuitResults, out_path: Path) -> None:
    """Report for the ``compress`` and ``circuit`` jobs: settings, the method table and curves, provenance."""
    curves = results["curves"] if results["job"] == "circuit" else {}
    chart = curves_chart(curves, "fraction_pruned", "accuracy", "task accuracy") if curves else None
    html = environment().get_template("task.html.j2").render(
        r=results, job=results["job"], chart=chart, manifest=manifest_view(results["manifest"]),
        command=command_line(results["manifest"]),
        started=started_at(results["manifest"]), version=__version__)
    write_text(out_path, html)
