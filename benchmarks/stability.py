"""Same command, same answer: the chosen correction of one recipe across seeds, side by side.

    python benchmarks/stability.py --seeds 0,1,2 --root runs/stability [-- CORRECT OPTIONS ...]
    python benchmarks/stability.py --runs RUN_DIR RUN_DIR ...     # summarise finished runs only

Runs ``safety-prune correct`` once per seed, one after another (two torch processes on a small CPU slow each
other many times over), each into ROOT/seed-N; a seed whose folder already holds a finished run of the very same
command is read, not rerun. The seed changes the reference draw (sampled continuations), the bootstrap and the
folds, so the spread across seeds is what a user who changes nothing but the seed would see.

Writes benchmarks/results/stability.json: per seed the chosen setting, the held-out rate and mean with their
CIs and changes, the paired change against random at the same budget, perplexity, distinct-2 and time; between
seeds the Jaccard of the 100 most dampened units (ties in gain ordered by the run's ranking score) and the
gain-weighted Jaccard over every unit (sum of min(1 - g) / sum of max(1 - g)); and the spread (largest minus
smallest change, in percentage points).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

RECIPE = ["--model", "default", "--probe", "toxicity", "--method", "lrp", "--intervention", "proportional",
          "--threshold", "0", "--reach", "1,0.3,0.1,0.03", "--folds", "5"]  # make correct's
TOP = 100


def seeds_of(text: str) -> list[int]:
    """``0,1,2`` as a list; a duplicate or a non-integer is refused (a repeated seed would fake agreement)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2.") from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SystemExit(f"--seeds {text!r}: seed(s) {repeated} given twice; each seed is one draw, so a repeat "
                         "would count the same run as agreement. Give each seed once.")
    if len(seeds) < 2:
        raise SystemExit(f"--seeds {text!r}: a spread needs at least two seeds.")
    return seeds


def run_seed(root: Path, seed: int, extra: list[str]) -> Path:
    """The run folder of ``seed``, running ``correct`` there unless it already holds this command's result."""
    out = root / f"seed-{seed}"
    args = ["correct", *RECIPE, *extra, "--seed", str(seed), "--out", str(out)]
    done = out / "results.json"
    if done.is_file() and json.loads(done.read_text(encoding="utf-8"))["manifest"]["command"][1:] == args:
        print(f"seed {seed}: reading the finished run in {out}", flush=True)
        return out
    subprocess.run([sys.executable, "-m", "safety_prune", *args, "--overwrite"], check=True)
    return out


def gains(run: Path) -> dict[str, tuple[float, float]]:
    """Each changed unit's gain (zeroed: 0) from the run's masks.json, with its ranking score (the run's
    relevance.safetensors ``diff.<kind>``; lower is more undesired). Many units share a gain (every one past
    ``reach`` gets the full ``1 - strength``; top-k zeroing gives all k gain 0), so the score orders them."""
    masks = json.loads((run / "masks.json").read_text(encoding="utf-8"))
    scale = masks.get("intervention", {}).get("scale")
    scores = load_file(str(run / "relevance.safetensors"))
    return {u["id"]: (u.get("gain", 0.0 if scale is None else scale),
                      float(scores[f"diff.{u['kind']}"][u["layer"], u["index"]])) for u in masks["units"]}


def jaccard(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Overlap of two runs' changes: the ``TOP`` most dampened units, and gain-weighted over all of them."""
    def top(g: dict[str, tuple[float, float]]) -> set[str]:
        return set(sorted(g, key=lambda u: (*g[u], u))[:TOP])

    ta, tb = top(a), top(b)
    units = a.keys() | b.keys()
    low = sum(min(1 - a.get(u, (1.0,))[0], 1 - b.get(u, (1.0,))[0]) for u in units)
    high = sum(max(1 - a.get(u, (1.0,))[0], 1 - b.get(u, (1.0,))[0]) for u in units)
    return {f"top{TOP}": len(ta & tb) / len(ta | tb) if ta | tb else 1.0,
            "weighted": low / high if high else 1.0}


def row(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text(encoding="utf-8"))
    base, c, man = res["baseline"], res["corrected"], res["manifest"]
    how = res["pruned"]["intervention"]
    return {"seed": man["seed"], "run": str(run), "git_commit": man.get("git_commit"),
            "setting": {k: how[k] for k in ("kind", "strength", "threshold", "reach", "scale") if k in how},
            "units": res["pruned"]["count"],
            "rate": [base["behaviour_rate"], c["behaviour_rate"]], "rate_ci": c["behaviour_rate_ci"],
            "rate_change": c["behaviour_rate"] / base["behaviour_rate"] - 1,
            "mean": [base["behaviour_mean"], c["behaviour_mean"]], "mean_ci": c["behaviour_mean_ci"],
            "mean_change": c["behaviour_mean"] / base["behaviour_mean"] - 1,
            "paired_vs_baseline": c["paired_vs_baseline"], "paired_vs_random": c.get("paired_vs_random"),
            "ppl_change": c["perplexity"] / base["perplexity"] - 1,
            "distinct2_change": c["distinct2"] / base["distinct2"] - 1,
            "cross_fit": {k: v for k, v in (res["selection"].get("cross_fit") or {}).items()
                          if k in ("reduction", "paired_vs_baseline", "fold_reductions")} or None,
            "release_allowed": res["release"]["allowed"], "seconds": man["duration_s"],
            "stages_s": man.get("stages_s")}


def summary(runs: list[Path]) -> dict:
    rows = [row(r) for r in runs]
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"the runs have seeds {seeds}: a seed given twice would count one draw as agreement.")
    pairs = {f"{a['seed']}-{b['seed']}": jaccard(gains(ra), gains(rb))
             for (a, ra), (b, rb) in itertools.combinations(zip(rows, runs, strict=True), 2)}
    spread = {key: 100 * (max(r[key] for r in rows) - min(r[key] for r in rows))
              for key in ("rate_change", "mean_change")}
    checks = {"rate spread <= 5 pp": spread["rate_change"] <= 5, "mean spread <= 5 pp": spread["mean_change"] <= 5,
              f"top-{TOP} Jaccard >= 0.7 for every pair": all(p[f"top{TOP}"] >= 0.7 for p in pairs.values()),
              "CI vs random below 0 for every seed": all((r["paired_vs_random"] or {}).get("ci_high", 0) < 0
                                                         for r in rows)}
    return {"what": "benchmarks/stability.py: one correct recipe at several seeds, held out, side by side",
            "rows": rows, "jaccard": pairs, "spread_pp": spread, "checks": checks}


def show(s: dict) -> None:
    for r in s["rows"]:
        vr = r["paired_vs_random"]
        print(f"seed {r['seed']}: {r['setting']} units {r['units']}: rate {r['rate'][0]:.3f} -> {r['rate'][1]:.3f} "
              f"({100 * r['rate_change']:+.1f}%), mean {100 * r['mean_change']:+.1f}%, ppl "
              f"{100 * r['ppl_change']:+.1f}%, vs random "
              + (f"{vr['delta']:+.3f} [{vr['ci_low']:+.3f}, {vr['ci_high']:+.3f}]" if vr else "none")
              + f", {r['seconds'] / 60:.1f} min")
    for pair, j in s["jaccard"].items():
        print(f"seeds {pair}: Jaccard top-{TOP} {j[f'top{TOP}']:.2f}, gain-weighted {j['weighted']:.2f}")
    print(f"spread: rate {s['spread_pp']['rate_change']:.1f} pp, mean {s['spread_pp']['mean_change']:.1f} pp")
    for check, ok in s["checks"].items():
        print(f"{'holds' if ok else 'FAILS'}: {check}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", type=Path, default=Path("runs/stability"))
    ap.add_argument("--runs", type=Path, nargs="+", help="summarise these finished runs; run nothing")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "stability.json")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more options for every correct run")
    a = ap.parse_args()
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    runs = a.runs or [run_seed(a.root, seed, extra) for seed in seeds_of(a.seeds)]
    s = summary(runs)
    show(s)
    a.json.write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
