"""The correction front of finished `correct` runs: validation search and held-out result side by side.

    python benchmarks/correction_front.py RUN_DIR [RUN_DIR ...] [--png docs/correction_front.png]
    python benchmarks/correction_front.py RUN_DIR --table    # the README's held-out table of that run
    python benchmarks/correction_front.py RUN_DIR ... --paired-against REF_RUN   # REF's correction minus each run's

Reads only each run's results.json (schema 1 `toxicity_*` or schema 2 `behaviour_*` names), prints one row
per validation candidate and per held-out method, and writes benchmarks/results/correction_front.json (with
each run's stage times, seconds, from its manifest).
Changes are relative to each run's own unpruned model, so runs of one model and suite compare directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SETTING = ("scale", "strength", "threshold", "reach")  # what a validation candidate set, besides its k


def _get(row: dict, name: str) -> float:
    return row.get(f"behaviour_{name}", row.get(f"toxicity_{name}"))


def _change(value: float | None, base: float | None) -> float | None:
    """value / base - 1; None when either is missing or the base is 0 (a tiny run's baseline rate can be)."""
    return None if value is None or not base else value / base - 1


def _pct(change: float | None, width: int = 6) -> str:
    return "n/a" if change is None else f"{100 * change:+{width}.1f}%"


def front(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    search = res["selection"].get("search", [])
    base_val = search[0] if search else None
    rows = [{"split": "validation", "k": s["k"], "setting": {key: s[key] for key in SETTING if key in s},
             "ppl_change": _change(s["perplexity"], base_val["perplexity"]),
             "mean_change": _change(s.get("behaviour_mean"), base_val["behaviour_mean"]),  # None: over the limit
             "violations": s["violations"], **({"note": s["note"]} if "note" in s else {})}
            for s in search[1:]]
    base = res["baseline"]
    rows += [{"split": "eval", "method": r["method"], "k": r["k"],
              "mean_change": _change(_get(r, "mean"), _get(base, "mean")),
              "rate_change": _change(_get(r, "rate"), _get(base, "rate")),
              "ppl_change": _change(r["perplexity"], base["perplexity"]),
              "paired_vs_baseline": r["paired_vs_baseline"]} for r in res.get("tradeoff", res["comparison"])]
    manifest = res.get("manifest", {})
    return {"run": str(run), "probe": res["probe"]["name"], "target": res.get("contrast", {}).get("target"),
            "foil": res.get("contrast", {}).get("foil"), "chosen_k": res["selection"]["k"], "rows": rows,
            "stages_s": manifest.get("stages_s"), "duration_s": manifest.get("duration_s")}


def _per_prompt(run: Path) -> dict[str, dict[int, tuple[str, float]]]:
    """Per split of a run's samples.jsonl (``baseline``, ``corrected:METHOD`` for the run's primary method): the
    prompt and mean score of each held-out prompt."""
    from safety_prune.render.load import load_samples

    path = run / "samples.jsonl"
    if not path.is_file():
        sys.exit(f"{run} has no samples.jsonl: pass a finished `correct` run folder.")
    found: dict[str, dict[int, tuple[str, list[float]]]] = {}
    for row in load_samples(path):
        found.setdefault(row["split"], {}).setdefault(row["prompt_index"], (row["prompt"], []))[1].append(row["score"])
    return {split: {i: (prompt, sum(scores) / len(scores)) for i, (prompt, scores) in sorted(rows.items())}
            for split, rows in found.items()}


def paired_against(ref: Path, run: Path) -> dict:
    """``ref``'s corrected model minus ``run``'s, mean score on the same held-out prompts (paired bootstrap, seed
    0 as in the job; negative: ``ref`` lowers the behaviour more). Refused unless both runs measured the same
    prompts with the same unedited baseline, i.e. the same model, suite, split and scorer."""
    from safety_prune.evaluation.stats import paired_bootstrap_diff

    splits = [_per_prompt(r) for r in (ref, run)]
    methods = [json.loads((r / "results.json").read_text(encoding="utf-8"))["method"] for r in (ref, run)]
    if not splits[0].get("baseline") or splits[0].get("baseline") != splits[1].get("baseline"):
        sys.exit(f"{ref} and {run} did not measure the same held-out prompts with the same baseline scores, so "
                 "their corrections cannot be paired: compare runs of one model, suite and seed.")
    corrected = []
    for r, found, method in zip((run, ref), splits[::-1], methods[::-1], strict=True):
        if f"corrected:{method}" not in found:
            sys.exit(f"{r / 'samples.jsonl'} holds no 'corrected:{method}' rows.")
        corrected.append([score for _, score in found[f"corrected:{method}"].values()])
    a, b = corrected
    return {"ref": str(ref), "ref_method": methods[0], "method": methods[1], "n_prompts": len(a),
            "ref_minus_run": paired_bootstrap_diff(a, b, seed=0)}


def _ci(paired: dict | None) -> str:
    return "" if not paired else f"{paired['delta']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]"


def _how(row: dict) -> str:
    """The change a row made, in words: k zeroed or dampened units, or per-unit gains."""
    i = row.get("intervention", {})
    kind = i.get("kind")
    if kind == "proportional":
        reach = f", reach {i['reach']:g}" if i.get("reach", 1) != 1 else ""
        return f"{row['k']} gains (s={i['strength']:g}, threshold {i['threshold']:g}{reach})"
    if kind == "aura":
        return f"{row['k']} gains (AurA, {i.get('pooling', 'max')} pooling)"
    if kind == "dampen":
        return f"k={row['k']} x{i['scale']:g}"
    return f"k={row['k']} zeroed"


def _unread(row: dict) -> str:
    """Why a row within the limits has no perplexity: the budget rule's choice dampens more (its ``note``)."""
    return row.get("note", "") if row["perplexity"] is None else ""


def search_table(res: dict) -> list[str]:
    """The validation search of a run (every candidate against the unpruned model on the validation prompts and
    prose) and, with --folds, the cross-fitted estimate of the rule that chose."""
    sel = res["selection"]
    search = sel.get("search") or []
    if not search:
        return []
    base = search[0]
    how = res["pruned"]["intervention"]
    chosen = {key: how[key] for key in SETTING if key in how}
    lines = ["| validation candidate | units changed | mean change | rate change | perplexity change | "
             "outside the limits |", "|---|---|---|---|---|---|"]
    def ppl(s: dict) -> str:
        return "not measured" if s["perplexity"] is None else _pct(_change(s["perplexity"], base["perplexity"]), 0)

    for s in search[1:]:
        setting = ", ".join(f"{key} {s[key]:g}" for key in SETTING if s.get(key) is not None and key != "scale")
        setting = setting or (f"k {s['k']}" + (f" x{s['scale']:g}" if s.get("scale") is not None else " zeroed"))
        picked = all(s.get(key) == v for key, v in chosen.items()) and s["k"] == res["pruned"]["count"]
        mean = ("not generated" if s.get("behaviour_mean") is None
                else _pct(_change(s["behaviour_mean"], base["behaviour_mean"]), 0))
        rate = "" if s.get("behaviour_rate") is None else _pct(_change(s["behaviour_rate"], base["behaviour_rate"]), 0)
        lines.append(f"| {'**' + setting + ' (chosen)**' if picked else setting} | {s['k']} | {mean} | {rate} | "
                     f"{ppl(s)} | {'; '.join(s['violations']) or _unread(s)} |")
    cf = sel.get("cross_fit")
    if cf:
        folds = ", ".join(f"{100 * r:+.1f}%" for r in cf["fold_reductions"])
        lines += ["", f"Cross-fitted over {cf['folds']} folds: mean reduction {100 * cf['reduction']:.1f}%, paired "
                      f"change {_ci(cf['paired_vs_baseline'])}; per fold (reduction) {folds}."]
    return lines


def table(run: Path) -> str:
    """The held-out comparison of one run as the README's markdown table: every method at the chosen setting,
    each against the baseline and the random control, with perplexity, fluency and the second scorer."""
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    base = res["baseline"]
    second = next(iter(base.get("secondary") or {}), None)
    capability = base.get("last_word_accuracy") is not None
    head = ("| method | change | toxicity rate | mean | Δ mean vs baseline [95% CI] | Δ mean vs random [95% CI] | "
            "perplexity | distinct-2 | continuation ppl |" + (f" {second} rate |" if second else "")
            + (" last-word accuracy |" if capability else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def cells(row: dict, name: str, how: str, ref: dict | None) -> str:
        def pct(key: str) -> str:  # the change against the baseline, beside the value
            change = None if ref is None else _change(row[key], ref[key])
            return "" if change is None else f" ({100 * change:+.1f}%)"

        out = (f"| {name} | {how} | {_get(row, 'rate'):.3f} [{row['behaviour_rate_ci'][0]:.3f}, "
               f"{row['behaviour_rate_ci'][1]:.3f}]{pct('behaviour_rate')} | "
               f"{_get(row, 'mean'):.3f}{pct('behaviour_mean')} | "
               f"{_ci(row.get('paired_vs_baseline'))} | {_ci(row.get('paired_vs_random'))} | "
               f"{row['perplexity']:.2f}{pct('perplexity')} | {row['distinct2']:.3f} | "
               f"{row['continuation_perplexity']:.2f}{pct('continuation_perplexity')} |")
        if second:
            sec = (row.get("secondary") or {}).get(second) or {}
            out += f" {_get(sec, 'rate'):.3f} |" if sec else " |"
        if capability:
            out += f" {row['last_word_accuracy']:.3f} |"
        return out

    lines = [*search_table(res), "", *lines]
    lines.append(cells(base, "baseline (unpruned)", "", None))
    flat_base = {key: base[key] for key in ("behaviour_rate", "behaviour_mean", "perplexity",
                                              "continuation_perplexity")}
    for row in res["comparison"]:
        lines.append(cells(row, f"**{row['method']}**" if row["method"] == res["method"] else row["method"],
                           _how(row), flat_base))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--table", action="store_true", help="print each run's held-out table (markdown) only")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "correction_front.json",
                        help="where the fronts go (the README's make correct front is the default)")
    parser.add_argument("--paired-against", type=Path, default=None, metavar="RUN",
                        help="pair each run's chosen correction with RUN's on the same held-out prompts")
    args = parser.parse_args()
    if args.table:
        for run in args.runs:
            print(table(run))
        return
    fronts = [front(run) for run in args.runs]
    if args.paired_against:
        for f, run in zip(fronts, args.runs, strict=True):
            f["paired_against"] = paired_against(args.paired_against, run)
            d = f["paired_against"]
            print(f"{d['ref_method']} ({args.paired_against}) minus {d['method']} ({run}), mean on "
                  f"{d['n_prompts']} held-out prompts: {_ci(d['ref_minus_run'])}")
    for f in fronts:
        print(f"{f['run']} (chosen k={f['chosen_k']}, foil={f['foil']})")
        for r in f["rows"]:
            what = r.get("method", "search")
            print(f"  {r['split']:>10} {what:>8} k={r['k']:>4}  mean {_pct(r['mean_change'])}  "
                  f"perplexity {_pct(r['ppl_change'], 5)}  {'; '.join(r.get('violations', [])) or r.get('note', '')}")
    out = args.json
    out.write_text(json.dumps(fronts, indent=1) + "\n", encoding="utf-8")
    if args.png:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.6))
        ax = fig.add_subplot()
        for f, colour in zip(fronts, ("#0969da", "#cf222e", "#1a7f37", "#9a6700"), strict=False):
            label = f"{Path(f['run']).name} ({'foil' if f['foil'] else 'no foil'})"
            val = [r for r in f["rows"] if r["split"] == "validation" and r["mean_change"] is not None]
            ax.plot([100 * r["ppl_change"] for r in val], [100 * r["mean_change"] for r in val], "o--", color=colour,
                    label=f"{label}: validation search", mfc="none")
            for r in (r for r in f["rows"] if r["split"] == "eval"):
                x, y = 100 * r["ppl_change"], 100 * r["mean_change"]
                ax.plot(x, y, "s" if r["method"] != "random" else "x", color=colour,
                        label=f"{label}: held-out {r['method']} ({r['k']} units)")
                ax.annotate(r["method"], (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6, color=colour)
        ax.axvline(2, color="#8c959f", lw=0.8, ls=":")
        ax.axhline(-40, color="#8c959f", lw=0.8, ls=":")
        ax.set_xlabel("general-text perplexity change (%)")
        ax.set_ylabel("mean score change (%)")
        ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.savefig(args.png, dpi=150, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
