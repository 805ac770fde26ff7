"""Render a run's ``results.json`` (and samples) into one self-contained, escaped HTML page.

Every number on the page comes from ``results.json``; model and user text is always escaped (jinja2
autoescape, no ``|safe`` on such text) and the page loads nothing from anywhere: inline CSS, plots as
inline SVG drawn here from numbers, and a CSP meta tag that forbids every fetch. Re-rendering needs
only the run directory, never the model, so a report can be rebuilt or compared long after the run.
"""

from __future__ import annotations

import functools
import io
import json
import operator
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from . import __version__
from .errors import ConfigError, ResultsError
from .io import write_text
from .resources import resource_dir
from .run import SCHEMA_VERSION

GATE_EXIT_CODE = 3
"""Exit status of a job or ``report`` whose deployment gate (``--fail-on``) failed; 0 pass, 2 usage/input error."""

# key, label, what it means, which direction is better
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("toxicity_rate", "Toxicity rate", "share of continuations scoring above the scorer threshold", "lower"),
    ("toxicity_mean", "Mean toxicity", "mean scorer output over continuations", "lower"),
    ("expected_max_toxicity", "Expected max toxicity", "mean over prompts of the highest-scoring sample", "lower"),
    ("toxicity_probability", "Toxicity probability", "share of prompts with at least one toxic sample", "lower"),
    ("perplexity", "Perplexity (general text)", "held-out general prose; a rise means general ability lost",
     "lower"),
    ("distinct2", "Distinct-2", "unique bigrams / bigrams per continuation; low means looping text", "higher"),
    ("continuation_perplexity", "Continuation perplexity",
     "continuations under the original model; high means garbled text", "lower"),
)
GATE_METRICS = tuple(m[0] for m in METRICS)
_LABEL = {m[0]: m[1] for m in METRICS}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_N_EXAMPLES = 12


# ---------------------------------------------------------------------------------------------- loading

def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json``; every way it can be unusable becomes one ResultsError naming the fix."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise ResultsError(f"Run directory {run_dir} does not exist or is not a directory. Pass the folder "
                           "that was given as --out to `safety-prune audit` or `safety-prune correct`.")
    if not path.is_file():
        raise ResultsError(f"{run_dir} has no results.json, so it is not a finished safety-prune run (a failed "
                           "run leaves nothing behind). Pass the folder that was given as --out to a completed "
                           "`safety-prune audit` or `safety-prune correct`, or rerun the job.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). The "
                           "file was truncated or edited by hand; restore it from a copy or rerun the job that "
                           "wrote it.") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path} is not UTF-8 text (byte {exc.start}). Restore it from a copy or rerun the "
                           "job that wrote it.") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path} holds a JSON {type(results).__name__}, not an object. Restore it from a "
                           "copy or rerun the job that wrote it.")
    found = results.get("schema_version")
    if found != SCHEMA_VERSION:
        raise ResultsError(f"{path} has results schema_version {found!r}, but safety-prune {__version__} reads "
                           f"schema_version {SCHEMA_VERSION} only (incompatible schema). Render it with the "
                           "safety-prune version that wrote it (see manifest.versions in the file), or rerun "
                           "the job with this version.")
    missing = [k for k in ("job", "model", "probe", "scorer", "baseline", "manifest") if k not in results]
    if missing:
        raise ResultsError(f"{path} lacks the key(s) {', '.join(missing)} that every run writes. Restore it "
                           "from a copy or rerun the job that wrote it.")
    return results


def load_samples(path: Path) -> list[dict[str, Any]]:
    """Rows of ``samples.jsonl``; a missing file gives no examples, a damaged line is an error."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path} line {lineno}, column {exc.colno} is not valid JSON ({exc.msg}). "
                               "Restore the file or delete it to render the report without examples.") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------- gate

def _parse_expr(expr: str) -> tuple[str, str, float]:
    match = _EXPR.match(expr)
    if not match or match.group(1) not in GATE_METRICS:
        raise ConfigError(f"--fail-on {expr!r} is not a gate expression. Write METRIC OP NUMBER with OP one of "
                          f"> >= < <=, e.g. 'toxicity_rate>0.05' (quote it in the shell); METRIC is one of "
                          f"{', '.join(GATE_METRICS)}.")
    return match.group(1), match.group(2), float(match.group(3))


def parse_fail_on(values: Iterable[str] | None) -> list[str]:
    """Split repeated/comma-separated ``--fail-on`` values and check each early, before any model loads."""
    exprs = [part.strip() for value in values or () for part in value.split(",") if part.strip()]
    for expr in exprs:
        _parse_expr(expr)
    return exprs


def _threshold_exprs(results: dict[str, Any]) -> list[str]:
    """The probe suite's thresholds as fail-on expressions: a metric above its threshold fails."""
    return [f"{k}>{v:g}" for k, v in (results.get("probe", {}).get("thresholds") or {}).items()
            if k in GATE_METRICS and isinstance(v, int | float)]


def _gate_target(results: dict[str, Any]) -> str:
    return "corrected" if isinstance(results.get("corrected"), dict) else "baseline"


def _check(block: dict[str, Any], expr: str, where: str) -> dict[str, Any]:
    metric, op, threshold = _parse_expr(expr)
    value = block.get(metric)
    if not isinstance(value, int | float):
        have = [k for k in GATE_METRICS if isinstance(block.get(k), int | float)]
        raise ConfigError(f"--fail-on {expr!r}: the {where} metrics of this run have no {metric!r}. Use one of "
                          f"{', '.join(have)}.")
    ci = block.get(f"{metric}_ci")
    ci = [float(ci[0]), float(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None
    failed = _OPS[op](float(value), threshold)
    # "settled": the whole 95% interval lies on the same side of the threshold as the point value
    settled = None if ci is None else all(_OPS[op](c, threshold) == failed for c in ci)
    return {"expr": f"{metric}{op}{threshold:g}", "metric": metric, "op": op, "threshold": threshold,
            "value": float(value), "ci": ci, "failed": failed, "settled": settled}


def evaluate_gate(results: dict[str, Any], fail_on: Sequence[str]) -> dict[str, Any]:
    """Check fail-on expressions against the corrected metrics (else baseline); the probe thresholds by default.

    Each expression names the failing condition, e.g. ``toxicity_rate>0.05`` fails when the rate is above 0.05.
    The returned dict is what ``results["gate"]`` stores and what decides the exit status (GATE_EXIT_CODE).
    """
    exprs = parse_fail_on(fail_on)
    source = "--fail-on"
    if not exprs:
        exprs, source = _threshold_exprs(results), "probe suite thresholds"
    target = _gate_target(results)
    checks = [_check(results[target], expr, target) for expr in exprs]
    return {"passed": not any(c["failed"] for c in checks), "target": target, "source": source,
            "checks": checks}


# ------------------------------------------------------------------------------------------------ plots

_BASE_COLOUR, _CORR_COLOUR = "#8c959f", "#0969da"
_METHOD_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#57606a")


_RC = {"svg.fonttype": "none", "font.size": 8, "axes.titlesize": 8.5, "axes.spines.top": False,
       "axes.spines.right": False, "axes.edgecolor": "#8c959f", "axes.grid": True, "grid.color": "#eaeef2",
       "grid.linewidth": 0.6, "axes.axisbelow": True, "legend.frameon": False, "font.family": "DejaVu Sans"}


def _figure(name: str) -> Callable[[Callable[..., Any]], Callable[..., Markup | None]]:
    """Draw a chart under the report style and return it as inline SVG; ``name`` salts its element ids.

    A bare ``Figure`` (no pyplot) touches no global backend or figure registry of the calling process.
    """
    def wrap(draw: Callable[..., Any]) -> Callable[..., Markup | None]:
        @functools.wraps(draw)
        def chart(*args: Any) -> Markup | None:
            import matplotlib
            from matplotlib.figure import Figure

            with matplotlib.rc_context({**_RC, "svg.hashsalt": name}):
                fig = Figure()
                if not draw(fig, *args):
                    return None
                buf = io.StringIO()
                fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
            svg = buf.getvalue()
            svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg[svg.index("<svg"):], flags=re.S)
            # safe to embed unescaped: drawn here from numbers, and matplotlib escapes any text it writes
            return Markup(svg)
        return chart
    return wrap


def _plot_label(text: Any) -> str:
    """Plot text from results (method names): short, and no '$' so mathtext never parses it."""
    return str(text).replace("$", "")[:40]


@_figure("metrics")
def _metrics_chart(fig: Any, base: dict[str, Any], corr: dict[str, Any] | None) -> bool:
    keys = [k for k in GATE_METRICS if isinstance(base.get(k), int | float)]
    if not keys:
        return False
    rows = (len(keys) + 3) // 4
    cols = (len(keys) + rows - 1) // rows
    fig.set_size_inches(2.3 * cols, 1.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    series = [("baseline", base, _BASE_COLOUR)] + ([("corrected", corr, _CORR_COLOUR)] if corr else [])
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, (name, block, colour) in enumerate(series):
            val = float(block.get(key, float("nan")))
            ci = block.get(f"{key}_ci")
            err = [[max(val - ci[0], 0.0)], [max(ci[1] - val, 0.0)]] if ci else None
            ax.bar(i, val, width=0.6, color=colour, yerr=err, capsize=3, ecolor="#24292f", label=name)
        ax.set_xticks(range(len(series)), [s[0] for s in series])
        tops = [float(b.get(key, 0.0)) for _, b, _ in series] + [c for _, b, _ in series for c in (_ci(b, key) or [])]
        if min(tops) >= 0:
            ax.set_ylim(0, 1.15 * max(tops) or 1.0)
        ax.set_title(_LABEL[key])
        ax.grid(axis="x", visible=False)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return True


@_figure("layers")
def _layer_chart(fig: Any, circuit: dict[str, Any]) -> bool:
    panels = [(title, rows) for title, rows in (("MLP neurons", circuit.get("per_layer")),
                                                ("attention heads", (circuit.get("heads") or {}).get("per_layer")))
              if rows]
    if not panels:
        return False
    from matplotlib.ticker import MaxNLocator

    fig.set_size_inches(4.2 * len(panels), 2.2)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, rows) in zip(axes.flat, panels, strict=True):
        ax.bar([int(r["layer"]) for r in rows], [float(r["abs_share"]) for r in rows], color=_CORR_COLOUR)
        ax.set_title(f"{title}: share of |R_diff| per layer")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return True


@_figure("heatmap")
def _heatmap(fig: Any, grid: Any, n_units: Any) -> bool:
    import numpy as np

    try:
        arr = np.abs(np.asarray(grid, dtype=float))
    except (TypeError, ValueError):
        return False
    if arr.ndim != 2 or arr.size == 0 or not np.isfinite(arr).all():
        return False
    fig.set_size_inches(7.5, min(0.16 * arr.shape[0] + 1.2, 6.0))
    ax = fig.subplots()
    # vector cells, not imshow: a raster would be an embedded data: image the browser still "requests"
    im = ax.pcolormesh(arr, cmap="Reds", edgecolors="none")
    layers, bins = arr.shape
    step = max(1, layers // 12)
    ax.set_yticks(np.arange(0, layers, step) + 0.5, [str(i) for i in range(0, layers, step)])
    ax.set_ylabel("layer")
    if isinstance(n_units, int) and n_units >= bins:  # label bin edges with the neuron index they start at
        ticks = np.linspace(0, bins, min(bins, 8) + 1)
        ax.set_xticks(ticks, [str(round(t * n_units / bins)) for t in ticks])
        ax.set_xlabel(f"MLP neuron index ({bins} bins of {n_units // bins})")
    else:
        ax.set_xlabel("MLP neuron bin")
    ax.grid(False)
    bar = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    bar.solids.set_rasterized(False)
    bar.set_label("|sum of negative R_diff|")
    fig.tight_layout()
    return True


@_figure("tradeoff")
def _tradeoff_chart(fig: Any, rows: list[dict[str, Any]], base: dict[str, Any]) -> bool:
    ys = [k for k in ("toxicity_rate", "toxicity_mean") if any(isinstance(r.get(k), int | float) for r in rows)]
    if not ys or not any(isinstance(r.get("perplexity"), int | float) for r in rows):
        return False
    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    fig.set_size_inches(4.1 * len(ys) + 1.2, 2.8)
    axes = fig.subplots(1, len(ys), squeeze=False)
    for ax, key in zip(axes.flat, ys, strict=True):
        for i, method in enumerate(methods):
            pts = sorted((r.get("k") or 0, r["perplexity"], r[key]) for r in rows
                         if str(r.get("method")) == method and isinstance(r.get(key), int | float)
                         and isinstance(r.get("perplexity"), int | float))
            colour = _METHOD_COLOURS[i % len(_METHOD_COLOURS)]
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", ms=4, lw=1.2, color=colour,
                    label=_plot_label(method), alpha=0.85)
        if isinstance(base.get(key), int | float) and isinstance(base.get("perplexity"), int | float):
            ax.plot([base["perplexity"]], [base[key]], marker="*", ms=10, color="#24292f", ls="none",
                    label="baseline (unpruned)")
        ax.set_xlabel("perplexity on general text (lower is better)")
        ax.set_ylabel(_LABEL[key].lower())
        if key == "toxicity_rate":
            ax.set_ylim(bottom=0)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return True


# ------------------------------------------------------------------------------------------- view model

def _visible(text: Any) -> str:
    """Model text with control characters shown as Unicode control pictures instead of silently dropped."""
    return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group()) if ord(m.group()) < 0x20 else 0x2421),
                        "" if text is None else str(text))


def _ci(block: dict[str, Any], key: str) -> list[float] | None:
    ci = block.get(f"{key}_ci")
    return [float(ci[0]), float(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None


def signal(ci_a: Sequence[float] | None, ci_b: Sequence[float] | None) -> str:
    """The page's significance note: separate 95% intervals are 'likely different', overlapping are noise."""
    if not ci_a or not ci_b:
        return "no interval"
    return "likely different" if ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0] else "within noise"


def _metric_rows(base: dict[str, Any], corr: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for key, label, help_, better in METRICS:
        if not isinstance(base.get(key), int | float):
            continue
        row = {"key": key, "label": label, "help": help_, "better": better, "base": base[key],
               "base_ci": _ci(base, key), "corr": None, "corr_ci": None, "delta": None, "rel": None,
               "signal": None, "good": None}
        if corr and isinstance(corr.get(key), int | float):
            delta = corr[key] - base[key]
            row |= {"corr": corr[key], "corr_ci": _ci(corr, key), "delta": delta,
                    "rel": delta / abs(base[key]) if base[key] else None,
                    "signal": signal(_ci(base, key), _ci(corr, key)),
                    "good": None if delta == 0 else (delta < 0) == (better == "lower")}
        rows.append(row)
    return rows


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Every threshold and gate expression evaluated before and after correction, plus the overall call."""
    gate = results.get("gate") if isinstance(results.get("gate"), dict) else None
    if gate is None:
        gate = evaluate_gate(results, [])
    exprs = list(dict.fromkeys(_threshold_exprs(results) + [c["expr"] for c in gate.get("checks", [])]))
    corr = results.get("corrected") if isinstance(results.get("corrected"), dict) else None
    rows = []
    for expr in exprs:
        rows.append({"expr": expr, "label": _LABEL.get(_parse_expr(expr)[0], expr),
                     "from_gate": expr in {c["expr"] for c in gate.get("checks", [])},
                     "from_probe": expr in _threshold_exprs(results),
                     "base": _check(results["baseline"], expr, "baseline"),
                     "corr": _check(corr, expr, "corrected") if corr else None})
    before = not any(r["base"]["failed"] for r in rows)
    after = None if corr is None else not any(r["corr"]["failed"] for r in rows)
    return {"rows": rows, "gate": gate, "passed": bool(gate.get("passed")), "before": before, "after": after,
            "unsettled": [r["expr"] for r in rows if (r["corr"] or r["base"])["settled"] is False]}


def _unit_name(layer: Any, index: Any, kind: str) -> str:
    return f"L{layer}.mlp.neuron[{index}]" if kind == "neuron" else f"L{layer}.attn.head[{index}]"


def _circuit(results: dict[str, Any]) -> dict[str, Any] | None:
    circuit = results.get("circuit")
    if not isinstance(circuit, dict) or not circuit:
        return None
    pruned = set((results.get("pruned") or {}).get("units") or [])
    units = [{"name": _unit_name(u.get("layer"), u.get("index"), "neuron"), **u}
             for u in circuit.get("top_units") or []]
    heads = [{"name": _unit_name(u.get("layer"), u.get("index"), "head"), **u}
             for u in (circuit.get("heads") or {}).get("top_units") or []]
    for u in units + heads:
        u["pruned"] = u["name"] in pruned
    grid = results.get("circuit_heatmap")
    keys = ("method", "variant", "n_undesired", "n_general", "normalisation", "conservation_ratio")
    return {"c": {k: circuit.get(k) for k in keys}, "units": units, "heads": heads,
            "heatmap": _heatmap(grid, results.get("model", {}).get("n_neurons_per_layer")) if grid else None,
            "layer_chart": _layer_chart(circuit)}


def _unit_examples(results: dict[str, Any]) -> list[dict[str, Any]]:
    def ctx(items: Any) -> list[dict[str, Any]]:
        return [{"left": _visible(c.get("left")), "token": _visible(c.get("token")), "right": _visible(c.get("right")),
                 "relevance": c.get("relevance")} for c in items or [] if isinstance(c, dict)]

    return [{"unit": str(u.get("unit", "?")), "r_diff": u.get("r_diff"), "undesired": ctx(u.get("undesired")),
             "general": ctx(u.get("general"))}
            for u in results.get("unit_examples") or [] if isinstance(u, dict)]


def _examples(results: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Baseline and corrected continuations of the same prompts, most toxic first."""
    splits = {str(r.get("split")) for r in samples}
    method = results.get("method")
    corr_split = f"corrected:{method}" if f"corrected:{method}" in splits else next(
        (s for s in sorted(splits) if s.startswith("corrected:")), None)
    pairs: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in samples:
        side = "base" if r.get("split") == "baseline" else "corr" if r.get("split") == corr_split else None
        if side is None:
            continue
        pair = pairs.setdefault((r.get("prompt_index"), r.get("sample", 0)),
                                {"prompt_index": r.get("prompt_index"), "sample": r.get("sample", 0),
                                 "prompt": _visible(r.get("prompt")), "base": None, "corr": None})
        pair[side] = {"text": _visible(r.get("continuation")), "score": r.get("score")}

    def worst(p: dict[str, Any]) -> float:
        return max((float(p[s]["score"]) for s in ("base", "corr") if p[s] and p[s].get("score") is not None),
                   default=0.0)

    ordered = sorted(pairs.values(), key=lambda p: (-worst(p), str(p["prompt_index"])))
    return {"rows": ordered[:_N_EXAMPLES], "total": len(ordered), "method": corr_split.split(":", 1)[1]
            if corr_split else None}


def _started(manifest: dict[str, Any]) -> str | None:
    ts = manifest.get("started_unix")
    if not isinstance(ts, int | float):
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _command(manifest: dict[str, Any]) -> str:
    cmd = manifest.get("command")
    return shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd or "unknown")


_ROW_KEYS = ("method", "k", "fraction", "toxicity_rate", "toxicity_mean", "perplexity", "distinct2",
             "continuation_perplexity", "paired_vs_baseline", "paired_vs_random")
_MANIFEST_KEYS = ("seed", "git_commit", "platform", "duration_s", "model_sha256", "data_sha256", "versions")


def _view(results: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the template shows, with optional keys filled in so the template never guesses."""
    base = results["baseline"]
    corr = results.get("corrected") if isinstance(results.get("corrected"), dict) else None
    comparison = [{k: r.get(k) for k in _ROW_KEYS} for r in results.get("comparison") or [] if isinstance(r, dict)]
    manifest = {k: (results.get("manifest") or {}).get(k) for k in _MANIFEST_KEYS}
    return {
        "r": results, "job": results.get("job"), "corr": corr, "manifest": manifest,
        "started": _started(results["manifest"]), "command": _command(results["manifest"]),
        "verdict": _verdict(results),
        "metrics": _metric_rows(base, corr), "metrics_chart": _metrics_chart(base, corr),
        "circuit": _circuit(results), "unit_examples": _unit_examples(results),
        "comparison": comparison, "tradeoff_chart": _tradeoff_chart(comparison, base) if comparison else None,
        "selected_k": (corr or {}).get("k"), "pruned": results.get("pruned"), "selection": results.get("selection"),
        "examples": _examples(results, samples), "validation": (results.get("scorer") or {}).get("validation"),
        "version": __version__,
    }


# ------------------------------------------------------------------------------------------- templates

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value == int(value) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _signed(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0" if value == 0 else f"{value:+.{digits}g}".replace("-", "\u2212")


def _pct(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return "0%" if value == 0 else f"{100 * value:+.{1 if abs(value) >= 0.001 else 2}f}%".replace("-", "\u2212")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(resource_dir("reports"))),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters |= {"num": _fmt, "signed": _signed, "pct": _pct}
    return env


def render_report(results: dict[str, Any], samples_path: Path, out_path: Path) -> None:
    """Write ``report.html`` for one run (the pipeline calls this while staging the run)."""
    html = _env().get_template("report.html.j2").render(**_view(results, load_samples(Path(samples_path))))
    write_text(out_path, html)


def render_run(run_dir: str | Path, fail_on: Sequence[str] | None = None) -> Path:
    """Re-render ``RUN_DIR/report.html`` from results.json and samples.jsonl alone; no model is loaded.

    With ``fail_on``, the gate is re-evaluated for the page (results.json is left as the run wrote it).
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if fail_on:
        results = {**results, "gate": evaluate_gate(results, fail_on)}
    out = run_dir / "report.html"
    render_report(results, run_dir / "samples.jsonl", out)
    return out


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """What differs between two runs' inputs: one row per compared field, changed ones flagged."""
    ma, mb = a.get("manifest") or {}, b.get("manifest") or {}
    rows: list[tuple[str, Any, Any]] = [
        ("job", a.get("job"), b.get("job")),
        ("model", (a.get("model") or {}).get("spec"), (b.get("model") or {}).get("spec")),
        ("model name", (a.get("model") or {}).get("name"), (b.get("model") or {}).get("name")),
        ("probe suite", (a.get("probe") or {}).get("name"), (b.get("probe") or {}).get("name")),
        ("scorer", (a.get("scorer") or {}).get("name"), (b.get("scorer") or {}).get("name")),
        ("method", a.get("method"), b.get("method")),
        ("pruned units", (a.get("pruned") or {}).get("count"), (b.get("pruned") or {}).get("count")),
        ("seed", ma.get("seed"), mb.get("seed")),
        ("git commit", ma.get("git_commit"), mb.get("git_commit")),
        ("command", _command(ma), _command(mb)),
    ]
    for key, label in (("model_sha256", "model file"), ("data_sha256", "data file"), ("versions", "version of")):
        da, db = ma.get(key) or {}, mb.get(key) or {}
        rows += [(f"{label} {name}", da.get(name), db.get(name)) for name in dict.fromkeys([*da, *db])]
    return [{"field": f, "a": va, "b": vb, "changed": va != vb} for f, va, vb in rows]


def _compare_metrics(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = [("baseline", "before correction")] + (
        [("corrected", "after correction")] if isinstance(a.get("corrected"), dict)
        and isinstance(b.get("corrected"), dict) else [])
    out = []
    for block, title in blocks:
        rows = []
        for key, label, _help, better in METRICS:
            va, vb = a[block].get(key), b[block].get(key)
            if not isinstance(va, int | float) or not isinstance(vb, int | float):
                continue
            rows.append({"label": label, "better": better, "a": va, "b": vb, "a_ci": _ci(a[block], key),
                         "b_ci": _ci(b[block], key), "delta": vb - va,
                         "signal": signal(_ci(a[block], key), _ci(b[block], key))})
        out.append({"block": block, "title": title, "rows": rows})
    return out


def render_compare(run_a: str | Path, run_b: str | Path, out_path: str | Path) -> Path:
    """Write a page showing what changed between two runs and each metric side by side with a noise note."""
    a, b = load_results(run_a), load_results(run_b)
    changes = _changes(a, b)
    html = _env().get_template("compare.html.j2").render(
        a=a, b=b, dir_a=str(run_a), dir_b=str(run_b), changes=changes, n_changed=sum(c["changed"] for c in changes),
        blocks=_compare_metrics(a, b), verdict_a=_verdict(a), verdict_b=_verdict(b), version=__version__)
    out = Path(out_path)
    write_text(out, html)
    return out


# ------------------------------------------------------------------------------------------- task jobs

@_figure("curves")
def _curves_chart(fig: Any, curves: dict[str, list[dict[str, float]]], x: str, y: str, ylabel: str) -> bool:
    """One line per method, e.g. IOI accuracy against the share of units pruned."""
    if not curves:
        return False
    fig.set_size_inches(5.4, 2.9)
    ax = fig.subplots()
    for i, (method, points) in enumerate(curves.items()):
        ax.plot([p[x] for p in points], [p[y] for p in points], marker="o", ms=3, lw=1.2,
                color=_METHOD_COLOURS[i % len(_METHOD_COLOURS)], label=_plot_label(method))
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.legend(loc="best")
    fig.tight_layout()
    return True


def render_task_report(results: dict[str, Any], out_path: Path) -> None:
    """Report for the ``compress`` and ``circuit`` jobs: settings, the method table and curves, provenance."""
    curves = results.get("curves") or {}
    chart = _curves_chart(curves, "fraction_pruned", "accuracy", "task accuracy") if curves else None
    manifest = {k: (results.get("manifest") or {}).get(k) for k in _MANIFEST_KEYS}
    html = _env().get_template("task.html.j2").render(
        r=results, job=results.get("job"), chart=chart, manifest=manifest, command=_command(results["manifest"]),
        started=_started(results["manifest"]), version=__version__)
    write_text(out_path, html)
