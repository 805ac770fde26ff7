"""The report's charts: matplotlib figures drawn from numbers and returned as inline SVG markup.

Each public function returns the chart as ``Markup`` (safe to embed: drawn here from numbers, and matplotlib escapes
any text it writes) or None when the data has nothing to draw. The SVG is deterministic for the same input: the
element ids are salted with the chart's name and the date metadata is dropped.
"""

from __future__ import annotations

import functools
import io
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal

from markupsafe import Markup
from typing_extensions import ParamSpec, TypedDict

from ..metrics import METRIC_KEYS, metric_ci
from ..results import CircuitInfo, CurvePoint, MetricBlock, MetricRow
from .facts import ShownRow

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

_BASE_COLOUR, _CORR_COLOUR = "#8c959f", "#0969da"
_METHOD_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#57606a")


# matplotlib's tick locators and axis margins overflow near the largest float (a perplexity of 1e308 from a broken
# model warns "overflow encountered" and draws nothing useful): a number beyond this is drawn at it, and the tables
# beside the charts give the exact value
_PLOT_LIMIT = 1e15


def _plottable(value: float) -> float:
    """``value`` as a float within +-_PLOT_LIMIT (NaN stays NaN: matplotlib leaves it out)."""
    value = float(value)
    return value if math.isnan(value) else max(-_PLOT_LIMIT, min(_PLOT_LIMIT, value))


_RC: dict[RcKeyType, Any] = {"svg.fonttype": "none", "font.size": 8, "axes.titlesize": 8.5, "axes.spines.top": False,
       "axes.spines.right": False, "axes.edgecolor": "#8c959f", "axes.grid": True, "grid.color": "#eaeef2",
       "grid.linewidth": 0.6, "axes.axisbelow": True, "legend.frameon": False, "font.family": "DejaVu Sans"}


_P = ParamSpec("_P")


def _figure(name: str) -> Callable[[Callable[Concatenate[Any, _P], bool]], Callable[_P, Markup | None]]:
    """Draw a chart under the report style and return it as inline SVG; ``name`` salts its element ids.

    A bare ``Figure`` (no pyplot) touches no global backend or figure registry of the calling process.
    """
    def wrap(draw: Callable[Concatenate[Any, _P], bool]) -> Callable[_P, Markup | None]:
        @functools.wraps(draw)
        def chart(*args: _P.args, **kwargs: _P.kwargs) -> Markup | None:
            import matplotlib
            from matplotlib.figure import Figure

            with matplotlib.rc_context({**_RC, "svg.hashsalt": name}):
                fig = Figure()
                if not draw(fig, *args, **kwargs):
                    return None
                buf = io.StringIO()
                fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
            svg = buf.getvalue()
            svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg[svg.index("<svg"):], flags=re.S)
            # safe to embed unescaped: drawn here from numbers, and matplotlib escapes any text it writes
            return Markup(svg)
        return chart
    return wrap


def _plot_label(text: Any, width: int | None = None) -> str:
    """Plot text from results (method names, the suite's behaviour labels): short, and no '$' so mathtext never
    parses it; ``width`` wraps it onto lines of that many characters instead of cutting it."""
    text = str(text).replace("$", "")
    return textwrap.fill(text[:80], width) if width else text[:40]


@_figure("metrics")
def metrics_chart(fig: Any, base: MetricBlock, corr: MetricBlock | None, labels: dict[str, str]) -> bool:
    """One panel per metric; ``labels``: ``metrics.metric_labels`` of the run's behaviour."""
    keys = [k for k in METRIC_KEYS if isinstance(base.get(k), int | float)]
    if not keys:
        return False
    rows = (len(keys) + 3) // 4
    cols = (len(keys) + rows - 1) // rows
    fig.set_size_inches(2.3 * cols, 1.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    series = [("baseline", base, _BASE_COLOUR)] + ([("corrected", corr, _CORR_COLOUR)] if corr else [])
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, (name, block, colour) in enumerate(series):
            val = _plottable(block.get(key, float("nan")))
            ci = [_plottable(c) for c in metric_ci(block, key) or []] or None
            err = [[max(val - ci[0], 0.0)], [max(ci[1] - val, 0.0)]] if ci else None
            ax.bar(i, val, width=0.6, color=colour, yerr=err, capsize=3, ecolor="#24292f", label=name)
        ax.set_xticks(range(len(series)), [s[0] for s in series])
        tops = [_plottable(b.get(key, 0.0)) for _, b, _ in series] + [
            _plottable(c) for _, b, _ in series for c in (metric_ci(b, key) or [])]
        if min(tops) >= 0:
            ax.set_ylim(0, 1.15 * max(tops) or 1.0)
        ax.set_title(_plot_label(labels[key], 28))
        ax.grid(axis="x", visible=False)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return True


@_figure("layers")
def layer_chart(fig: Any, circuit: CircuitInfo) -> bool:
    panels = [(title, rows) for title, rows in (("MLP neurons", circuit.get("per_layer")),
                                                ("attention heads", (circuit.get("heads") or {}).get("per_layer")))
              if rows]
    if not panels:
        return False
    from matplotlib.ticker import MaxNLocator

    fig.set_size_inches(4.2 * len(panels), 2.2)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, rows) in zip(axes.flat, panels, strict=True):
        ax.bar([int(r["layer"]) for r in rows], [_plottable(r["abs_share"]) for r in rows], color=_CORR_COLOUR)
        ax.set_title(f"{title}: share of |R_diff| per layer")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return True


@_figure("heatmap")
def heatmap_chart(fig: Any, grid: list[list[float]], n_units: int | None) -> bool:
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


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
Rows = Sequence[ShownRow | MetricRow]
"""The rows of a trade-off chart: the page's (``ShownRow``), or results.json's ``comparison``/``tradeoff``."""
YKey = Literal["behaviour_rate", "behaviour_mean"]
_Y_KEYS: tuple[YKey, ...] = ("behaviour_rate", "behaviour_mean")


class Series(TypedDict):
    """One method's points of the trade-off chart and how they are drawn."""

    method: str
    points: list[tuple[float, float]]
    index: int
    colour: str
    marker: str
    size: float
    line: bool


def tradeoff_series(rows: Rows, key: YKey) -> list[Series]:
    """One series per method for the trade-off chart: its (perplexity, ``key``) points sorted by k, a joining line
    only when it has two or more points (so the legend never shows a line the chart lacks), and a marker shape and
    size of its own, larger for earlier methods, so methods with the same numbers stay visible on top of each other.
    """
    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    out: list[Series] = []
    for i, method in enumerate(methods):
        pts = sorted((r.get("k") or 0, x, y) for r in rows
                     if str(r.get("method")) == method and isinstance(y := r.get(key), int | float)
                     and isinstance(x := r.get("perplexity"), int | float))
        out.append({"method": method, "points": [(p[1], p[2]) for p in pts], "index": i,
                    "colour": _METHOD_COLOURS[i % len(_METHOD_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)],
                    "size": max(4.0, 11.0 - 1.2 * i), "line": len(pts) > 1})
    return out


@_figure("tradeoff")
def tradeoff_chart(fig: Any, rows: Rows, base: MetricBlock, labels: dict[str, str]) -> bool:
    """Each method's rows (one point per k; joined when there are several k) against general-text perplexity.

    Hollow markers of different shapes and sizes, the first method largest and drawn lowest, keep points that
    coincide (two methods with the same numbers) all visible. Element ids: ``tradeoff-legend`` for the legend and
    ``tradeoff-series-<i>`` for method i's points (in the panel and the legend).
    """
    ys = [k for k in _Y_KEYS if any(isinstance(r.get(k), int | float) for r in rows)]
    if not ys or not any(isinstance(r.get("perplexity"), int | float) for r in rows):
        return False
    fig.set_size_inches(4.1 * len(ys) + 1.2, 2.8)
    axes = fig.subplots(1, len(ys), squeeze=False)
    for ax, key in zip(axes.flat, ys, strict=True):
        for s in tradeoff_series(rows, key):
            if not s["points"]:
                continue
            (line,) = ax.plot([_plottable(p[0]) for p in s["points"]], [_plottable(p[1]) for p in s["points"]],
                              marker=s["marker"],
                              ms=s["size"], mfc="none", mew=1.3, lw=1.2 if s["line"] else 0,
                              ls="-" if s["line"] else "none", color=s["colour"], label=_plot_label(s["method"]),
                              alpha=0.9, zorder=2 + 0.01 * s["index"])
            line.set_gid(f"tradeoff-series-{s['index']}")
        if isinstance(base.get(key), int | float) and isinstance(base.get("perplexity"), int | float):
            ax.plot([_plottable(base["perplexity"])], [_plottable(base[key])], marker="*", ms=10, color="#24292f",
                    ls="none", label="baseline (unpruned)", zorder=3)
        ax.set_xlabel("perplexity on general text (lower is better)")
        ax.set_ylabel(_plot_label(labels[key][:1].lower() + labels[key][1:], 36))
        if key == "behaviour_rate":
            ax.set_ylim(bottom=0)
    handles, names = axes.flat[0].get_legend_handles_labels()
    legend = fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5))
    legend.set_gid("tradeoff-legend")
    fig.tight_layout()
    return True


CurveKey = Literal["fraction_pruned", "k", "accuracy", "logit_diff", "n"]


@_figure("curves")
def curves_chart(fig: Any, curves: dict[str, list[CurvePoint]], x: CurveKey, y: CurveKey, ylabel: str) -> bool:
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
