"""Which ranking recipe gives the same correction for another reference draw? Measured without held-out runs.

    python benchmarks/ranking_stability.py draw --seeds 0,1,2,3 --root runs/ranking-stability
    python benchmarks/ranking_stability.py compare --root runs/ranking-stability

``draw``: per seed, the toxicity suite's reference continuations of the default model (sampled with that seed) and
the LRP relevance of every MLP neuron per sample of each contrast set, saved to ROOT/seed-N.safetensors (a seed
already drawn is skipped). This is the whole seed-dependent part of ``correct``: what follows is arithmetic.

``compare``: for each ranking variant, the proportional gains of make correct's chosen setting (strength 0.5,
reach 0.3, guard 2%) from every draw, and between draws the Jaccard of the 100 most dampened neurons and the
gain-weighted Jaccard (as benchmarks/stability.py computes them from finished runs). Pooled variants average
disjoint groups of draws, as more samples per prompt would. Writes benchmarks/results/ranking_stability.json.
A variant that agrees across draws still has to earn its place held out (benchmarks/stability.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safety_prune.attribution import Relevance
from safety_prune.contrast import contrast_scores
from safety_prune.interventions import proportional
from safety_prune.selection import guard, stable_selection

SETS = ("general", "benign", "undesired")
STRENGTH, REACH, GUARD, TOP = 0.5, 0.3, 0.02, 100


def draw(root: Path, seeds: list[int]) -> None:
    """Reference draws and per-sample LRP neuron relevance, one file per seed."""
    from safety_prune.evaluation.behaviour import GenerationCache
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import build_references, suite_scorer
    from safety_prune.suite import load_suite

    root.mkdir(parents=True, exist_ok=True)
    suite = load_suite("toxicity")
    lm = None
    for seed in seeds:
        path = root / f"seed-{seed}.safetensors"
        if path.is_file():
            print(f"seed {seed}: drawn already ({path})", flush=True)
            continue
        opt = CorrectOptions(seed=seed)
        lm = lm or open_model("default", opt)
        torch.manual_seed(seed)
        started = time.time()
        work = root / f"work-{seed}"
        work.mkdir(exist_ok=True)
        refs = build_references(lm, suite, suite_scorer(suite), opt, GenerationCache(None, work), work)
        rel = refs.contrast.relevance("lrp", ("neuron",))
        save_file({name: rel[name].per_sample["neuron"].contiguous() for name in SETS}, str(path),
                  metadata={"seed": str(seed), "seconds": f"{time.time() - started:.1f}",
                            "info": json.dumps(refs.contrast.sets.info, default=str)})
        counts = ", ".join(f"{n} {rel[n].per_sample['neuron'].shape[0]}" for n in SETS)
        print(f"seed {seed}: {counts} samples, {time.time() - started:.0f} s", flush=True)


def _relevance(per: dict[str, torch.Tensor]) -> dict[str, Relevance]:
    return {name: Relevance("lrp", {"neuron": p.double().mean(0)}, len(p), per_sample={"neuron": p.double()})
            for name, p in per.items()}


def _guarded(rel: dict[str, Relevance]) -> dict[str, torch.Tensor]:
    scores, _ = guard(contrast_scores(rel, "max"), rel["general"].scores, GUARD)
    return scores


def _zscores(rel: dict[str, Relevance]) -> dict[str, torch.Tensor]:
    """Contrast in standard errors: each side's normalised mean difference over its standard error, so a neuron
    that one or two samples push up does not outrank one the whole set agrees on."""
    def norm(r: Relevance) -> tuple[torch.Tensor, torch.Tensor]:
        p = r.per_sample["neuron"]
        scale = r.scores["neuron"].abs().sum().clamp_min(1e-30)
        return p.mean(0) / scale, p.var(0) / len(p) / scale**2

    mu, var = zip(*(norm(rel[n]) for n in SETS), strict=True)
    m = dict(zip(SETS, mu, strict=True))
    v = dict(zip(SETS, var, strict=True))
    z = [(m[s] - m["undesired"]) / (v[s] + v["undesired"]).sqrt().clamp_min(1e-30) for s in ("general", "benign")]
    scores, _ = guard({"neuron": torch.stack(z).amax(0)}, rel["general"].scores, GUARD)
    return scores


def _stable(pi: float, resamples: int = 50):
    def rank(rel: dict[str, Relevance]) -> dict[str, torch.Tensor]:
        scores = _guarded(rel)
        depth = int((scores["neuron"] < 0).sum())
        out, _ = stable_selection(scores, rel, "neuron", "max", GUARD, (), resamples=resamples, seed=0, pi=pi,
                                  depth=depth)
        return out
    return rank


def _per_sample(transform):
    """The shipped contrast of per-sample relevance transformed first (each sample's weight, outliers)."""
    def rank(rel: dict[str, Relevance]) -> dict[str, torch.Tensor]:
        return _guarded(_relevance({n: transform(r.per_sample["neuron"]) for n, r in rel.items()}))
    return rank


def _unit_norm(p: torch.Tensor) -> torch.Tensor:
    """Each sample divided by its total |R|: every sample weighs the same, however large its logit."""
    return p / p.abs().sum((1, 2), keepdim=True).clamp_min(1e-30)


def _winsorised(p: torch.Tensor, q: float = 0.9) -> torch.Tensor:
    """Each unit's per-sample values clipped to its q-quantile of |R|: one sample cannot make a unit."""
    cap = p.abs().quantile(q, dim=0, keepdim=True) if p.shape[0] > 1 else p.abs()
    return p.clamp(-cap, cap)


def _general_only(rel: dict[str, Relevance]) -> dict[str, torch.Tensor]:
    """Contrast with the fixed general set only (the benign set is drawn with the seed too)."""
    scores, _ = guard(contrast_scores({"general": rel["general"], "undesired": rel["undesired"]}, "general"),
                      rel["general"].scores, GUARD)
    return scores


VARIANTS = {"as shipped (mean contrast)": _guarded, "z-score contrast": _zscores,
            "stability selection pi 0.6": _stable(0.6), "stability selection pi 0.9": _stable(0.9),
            "per-sample L1 normalised": _per_sample(_unit_norm),
            "winsorised at each unit's 90th percentile": _per_sample(_winsorised),
            "both": _per_sample(lambda p: _winsorised(_unit_norm(p))),
            "general contrast only": _general_only}


def _gains(scores: dict[str, torch.Tensor]) -> dict[int, float]:
    g = proportional(scores, "neuron", STRENGTH, 0.0, REACH).flatten()
    idx = (g < 1).nonzero()[:, 0]
    return dict(zip(idx.tolist(), g[idx].tolist(), strict=True))


def _jaccard(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    def top(g: dict[int, float]) -> set[int]:
        return set(sorted(g, key=lambda u: (g[u], u))[:TOP])

    ta, tb = top(a), top(b)
    units = a.keys() | b.keys()
    low = sum(min(1 - a.get(u, 1.0), 1 - b.get(u, 1.0)) for u in units)
    high = sum(max(1 - a.get(u, 1.0), 1 - b.get(u, 1.0)) for u in units)
    return {f"top{TOP}": len(ta & tb) / len(ta | tb), "weighted": low / high if high else 1.0}


def which_set_varies(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """The shipped recipe's agreement when only one set comes from the second draw, and between the two halves
    of the first draw's undesired samples: which set's sampling moves the correction."""
    def gains(general: torch.Tensor, benign: torch.Tensor, undesired: torch.Tensor) -> dict[int, float]:
        return _gains(_guarded(_relevance({"general": general, "benign": benign, "undesired": undesired})))

    first = gains(a["general"], a["benign"], a["undesired"])
    half = len(a["undesired"]) // 2
    return {"only the benign set redrawn": _jaccard(first, gains(a["general"], b["benign"], a["undesired"])),
            "only the undesired set redrawn": _jaccard(first, gains(a["general"], a["benign"], b["undesired"])),
            "undesired halves of one draw": _jaccard(gains(a["general"], a["benign"], a["undesired"][:half]),
                                                     gains(a["general"], a["benign"], a["undesired"][half:]))}


def compare(root: Path, out: Path) -> dict:
    draws = {int(p.stem.split("-")[1]): load_file(str(p)) for p in sorted(root.glob("seed-*.safetensors"))}
    seeds = sorted(draws)
    groups = {"one draw": [[s] for s in seeds]}
    for size in (2, 3, 4):
        if len(seeds) >= 2 * size:
            groups[f"{size} draws pooled"] = [seeds[i:i + size] for i in range(0, len(seeds) - size + 1, size)]
    rows = []
    for (label, parts), (name, rank) in itertools.product(groups.items(), VARIANTS.items()):
        started = time.time()
        gains = [_gains(rank(_relevance({n: torch.cat([draws[s][n] for s in part]) for n in SETS})))
                 for part in parts]
        pairs = [_jaccard(a, b) for a, b in itertools.combinations(gains, 2)]
        row = {"draws": label, "variant": name, "groups": parts, "changed": [len(g) for g in gains],
               **{key: {"mean": statistics.fmean(p[key] for p in pairs), "min": min(p[key] for p in pairs),
                        "max": max(p[key] for p in pairs)} for key in (f"top{TOP}", "weighted")},
               "seconds": round(time.time() - started, 1)}
        rows.append(row)
        print(f"{label:16s} {name:30s} top{TOP} {row[f'top{TOP}']['mean']:.2f} "
              f"[{row[f'top{TOP}']['min']:.2f}, {row[f'top{TOP}']['max']:.2f}]  weighted "
              f"{row['weighted']['mean']:.2f}  changed {min(row['changed'])}-{max(row['changed'])}", flush=True)
    result = {"what": __doc__.split("\n")[0], "setting": {"strength": STRENGTH, "reach": REACH, "guard": GUARD},
              "seeds": seeds, "rows": rows, "which_set_varies": which_set_varies(draws[seeds[0]], draws[seeds[1]])}
    for key, value in result["which_set_varies"].items():
        print(f"{key}: top{TOP} {value[f'top{TOP}']:.2f}, weighted {value['weighted']:.2f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=("draw", "compare"))
    ap.add_argument("--root", type=Path, default=Path("runs/ranking-stability"))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "ranking_stability.json")
    a = ap.parse_args()
    if a.stage == "draw":
        seeds = [int(s) for s in a.seeds.split(",")]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--seeds {a.seeds!r}: each seed once (a repeat would count one draw as agreement).")
        draw(a.root, seeds)
    else:
        compare(a.root, a.json)


if __name__ == "__main__":
    main()
