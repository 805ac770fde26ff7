"""The comparison page of two runs: what changed in their inputs, each metric side by side with a noise note,
and both verdicts; written only where it replaces nothing of a run, a model or a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

from .. import __version__
from ..errors import OutputError
from ..metrics import METRICS, metric_ci, metric_labels
from ..results import BehaviourResults, MetricBlock
from ..run import COMPARE_NAME, RUN_FILES, run_job
from .facts import behaviour_of, command_line, labels_of, pruned_of, signal, verdict_view
from .load import load_results
from .templates import environment, write_page


class Change(TypedDict):
    """One compared input of the two runs: its value in each, and whether they differ."""

    field: str
    a: Any
    b: Any
    changed: bool


def _changes(a: BehaviourResults, b: BehaviourResults) -> list[Change]:
    """What differs between two runs' inputs: one row per compared field, changed ones flagged."""
    ma, mb = a["manifest"], b["manifest"]
    pa, pb = pruned_of(a), pruned_of(b)
    rows: list[tuple[str, Any, Any]] = [
        ("job", a["job"], b["job"]),
        ("model", a["model"]["spec"], b["model"]["spec"]),
        ("model name", a["model"]["name"], b["model"]["name"]),
        ("probe suite", a["probe"]["name"], b["probe"]["name"]),
        ("scorer", a["scorer"]["name"], b["scorer"]["name"]),
        ("method", a.get("method"), b.get("method")),
        ("pruned units", pa["count"] if pa else None, pb["count"] if pb else None),
        ("seed", ma.get("seed"), mb.get("seed")),
        ("git commit", ma.get("git_commit"), mb.get("git_commit")),
        ("command", command_line(ma), command_line(mb)),
    ]
    for label, da, db in (("model file", ma.get("model_sha256") or {}, mb.get("model_sha256") or {}),
                          ("data file", ma.get("data_sha256") or {}, mb.get("data_sha256") or {}),
                          ("version of", ma.get("versions") or {}, mb.get("versions") or {})):
        rows += [(f"{label} {name}", da.get(name), db.get(name)) for name in dict.fromkeys([*da, *db])]
    return [{"field": f, "a": va, "b": vb, "changed": va != vb} for f, va, vb in rows]


def _compare_metrics(a: BehaviourResults, b: BehaviourResults) -> list[dict[str, Any]]:
    ca, cb = a.get("corrected"), b.get("corrected")
    both = ca is not None and cb is not None
    blocks: list[tuple[str, str, MetricBlock, MetricBlock]] = [
        ("baseline", "before correction" if both else "measured", a["baseline"], b["baseline"])]
    if ca is not None and cb is not None:
        blocks.append(("corrected", "after correction", ca, cb))
    labels = labels_of(a) if behaviour_of(a) == behaviour_of(b) else metric_labels(None)
    out = []
    for block, title, xa, xb in blocks:
        rows = []
        for key, _label, _help, better in METRICS:
            va, vb = xa.get(key), xb.get(key)
            if not isinstance(va, int | float) or not isinstance(vb, int | float):
                continue
            rows.append({"label": labels[key], "better": better, "a": va, "b": vb, "a_ci": metric_ci(xa, key),
                         "b_ci": metric_ci(xb, key), "delta": vb - va,
                         "signal": signal(metric_ci(xa, key), metric_ci(xb, key))})
        out.append({"block": block, "title": title, "rows": rows})
    return out


def _compare_target(out_path: str | Path, run_a: str | Path, run_b: str | Path, model_files: Sequence[str]
                    ) -> Path:
    """Where the comparison page goes: ``out_path``, or ``out_path/compare.html`` for an existing directory.

    A folder given must be empty or a run directory. The page is written to a new file, or over an earlier
    comparison page (recognised by its generator tag), never over any other file (a run's own, a model's, a
    suite's or a user's), and never into a model folder (one holding a ``model_files`` entry of the runs'
    manifests).
    """
    out = Path(out_path)
    if out.is_dir():
        folder, out = out, out / COMPARE_NAME
        if out.is_dir():
            raise OutputError(f"{out_path} is a directory and {out} is one too, so there is nowhere to write the "
                              f"comparison page. Give a file path, e.g. {Path(run_b) / COMPARE_NAME}.")
        if any(folder.iterdir()) and run_job(folder) is None:
            raise OutputError(f"--out {out_path} is a folder that is neither empty nor a run directory, so the page "
                              f"is not put among its files. Give a file path, e.g. {Path(run_b) / COMPARE_NAME}.")
    fix = f"Write the page to a new file, e.g. {Path(run_b) / COMPARE_NAME} (the default)."
    folder = out.parent.resolve()  # the last component is replaced, never followed, so it is not resolved
    if out.name in RUN_FILES and run_job(folder) is not None:
        runs = {Path(run_a).resolve(): "run A", Path(run_b).resolve(): "run B"}
        which = f"{runs[folder]} ({folder})" if folder in runs else f"the run in {folder}"
        raise OutputError(f"The comparison page {out} would replace {out.name} of {which}, which is part of that "
                          f"run. {fix}")
    if out.is_symlink() or (out.exists() and not _is_compare_page(out)):
        raise OutputError(f"--out {out} already exists and is not a comparison page written by safety-prune; it "
                          f"is never replaced. {fix}")
    for name in model_files:
        src = Path(name)
        if src.exists() and src.resolve().parent in (folder, *folder.parents):
            raise OutputError(f"--out {out} lies in the model folder {folder} (it holds {src.name}, recorded by "
                              f"the compared runs). A model folder is never written to. {fix}")
    return out


def _is_compare_page(path: Path) -> bool:
    """Whether ``path`` is a page ``render_compare`` wrote (so writing the page again may replace it)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return path.is_file() and '<meta name="generator" content="safety-prune' in head \
        and "<title>safety-prune run comparison" in head


def render_compare(run_a: str | Path, run_b: str | Path, out_path: str | Path) -> Path:
    """Write a page showing what changed between two runs and each metric side by side with a noise note.

    ``out_path`` is the page's file; an existing directory gets ``compare.html`` inside it. A file a run consists
    of (results.json, samples.jsonl, report.html, ... in run A, run B or another run directory) is refused with
    an OutputError, as is any location that cannot be written. Returns the path written.
    """
    a, b = load_results(run_a), load_results(run_b)
    models = [name for r in (a, b) for name in r["manifest"].get("model_sha256") or {}]
    out = _compare_target(out_path, run_a, run_b, models)
    changes = _changes(a, b)
    html = environment().get_template("compare.html.j2").render(
        a=a, b=b, dir_a=str(run_a), dir_b=str(run_b), changes=changes, n_changed=sum(c["changed"] for c in changes),
        blocks=_compare_metrics(a, b), verdict_a=verdict_view(a), verdict_b=verdict_view(b), version=__version__)
    write_page(out, html)
    return out
