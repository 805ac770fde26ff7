"""Which ranking recipe gives the same correction for another reference draw? Measured without held-out runs.

    python benchmarks/ranking_stability.py draw --seeds 0,1,2,3 --root runs/ranking-stability
    python benchmarks/ranking_stability.py compare --root runs/ranking-stability
    python benchmarks/ranking_stability.py heldout --root runs/ranking-stability --groups 0,1,0+1+2+3,4+5+6+7
    python benchmarks/ranking_stability.py draw --target continuation --seeds 0,1,2,3   # sequence-level samples
    python benchmarks/ranking_stability.py compare --target continuation --json .../ranking_stability_continuation.json
    python benchmarks/ranking_stability.py heldout --groups 0,1,0@continuation,1@continuation --json .../X.json

``draw``: per seed, the toxicity suite's reference continuations of the default model (sampled with that seed) and
the LRP relevance of every MLP neuron per sample of each contrast set, saved to ROOT/seed-N.safetensors (a seed
already drawn is skipped). This is the whole seed-dependent part of ``correct``: what follows is arithmetic.
``--target continuation`` explains the whole flagged continuation instead of its toxic tokens (the suite's
``reference.target``), reusing the seed's cached continuations; its files are ROOT/seed-N-continuation.
``--target vocabulary`` explains, at the toxic tokens' positions, the behaviour's vocabulary
(``reference.explain: vocabulary``); files ROOT/seed-N-vocabulary.

``compare``: for each ranking variant, the proportional gains of make correct's chosen setting (strength 0.5,
reach 0.3, guard 2%) from every draw, and between draws the Jaccard of the 100 most dampened neurons and the
gain-weighted Jaccard (as benchmarks/stability.py computes them from finished runs). Pooled variants average
disjoint groups of draws, as more samples per prompt would. Writes benchmarks/results/ranking_stability.json.
A variant that agrees across draws still has to earn its place held out (benchmarks/stability.py).

``heldout``: that edit from each group of draws ('+' pools them), measured on the held-out eval prompts and test
text with the same gains on random neurons beside it, as ``correct`` measures its chosen edit (the setting stays
fixed: no validation search). Each row keeps its per-prompt scores, and every two edits are compared on the same
prompts (paired bootstrap of the mean and of the rate): whether two edits really differ, or only by eval noise.
A group ``N@continuation`` uses the sequence-level draw of seed N. Writes --json (default
benchmarks/results/ranking_stability_heldout.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from stability import TOP, jaccard  # the same overlap as the held-out seed benchmark

from safety_prune.attribution import Relevance
from safety_prune.contrast import contrast_scores
from safety_prune.interventions import proportional
from safety_prune.selection import guard, stable_selection

SETS = ("general", "benign", "undesired")
STRENGTH, REACH, GUARD = 0.5, 0.3, 0.02


def _path(root: Path, seed: int, target: str = "tokens") -> Path:
    """The draw file of one seed; the suite's default target keeps the plain name."""
    return root / (f"seed-{seed}.safetensors" if target == "tokens" else f"seed-{seed}-{target}.safetensors")


def _group_draws(root: Path, group: str) -> list[dict[str, torch.Tensor]]:
    """'0+1' or '0@continuation+1@continuation': the draw files a heldout group pools."""
    out = []
    for part in group.split("+"):
        seed, _, target = part.partition("@")
        out.append(load_file(str(_path(root, int(seed), target or "tokens"))))
    return out


def draw(root: Path, seeds: list[int], target: str = "tokens") -> None:
    """Reference draws and per-sample LRP neuron relevance, one file per seed."""
    from safety_prune.evaluation.behaviour import GenerationCache
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import build_references, suite_scorer
    from safety_prune.suite import load_suite

    root.mkdir(parents=True, exist_ok=True)
    suite = load_suite("toxicity")
    what = {"explain": "vocabulary", "target": "tokens"} if target == "vocabulary" else {"target": target}
    suite = replace(suite, reference=replace(suite.reference, **what))
    lm = None
    for seed in seeds:
        path = _path(root, seed, target)
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


def _guarded(rel: dict[str, Relevance], share: float = GUARD) -> dict[str, torch.Tensor]:
    scores, _ = guard(contrast_scores(rel, "max"), rel["general"].scores, share)
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


def _gains(scores: dict[str, torch.Tensor], strength: float = STRENGTH, reach: float = REACH
           ) -> dict[int, tuple[float, float]]:
    """Each changed neuron's gain and score (the score orders the neurons ``reach`` gives the same gain)."""
    g = proportional(scores, "neuron", strength, 0.0, reach).flatten()
    idx = (g < 1).nonzero()[:, 0]
    return dict(zip(idx.tolist(), zip(g[idx].tolist(), scores["neuron"].flatten()[idx].tolist(), strict=True),
                    strict=True))


def which_set_varies(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """The shipped recipe's agreement when only one set comes from the second draw, and between the two halves
    of the first draw's undesired samples: which set's sampling moves the correction."""
    def gains(general: torch.Tensor, benign: torch.Tensor, undesired: torch.Tensor) -> dict[int, tuple[float, float]]:
        return _gains(_guarded(_relevance({"general": general, "benign": benign, "undesired": undesired})))

    first = gains(a["general"], a["benign"], a["undesired"])
    half = len(a["undesired"]) // 2
    return {"only the benign set redrawn": jaccard(first, gains(a["general"], b["benign"], a["undesired"])),
            "only the undesired set redrawn": jaccard(first, gains(a["general"], a["benign"], b["undesired"])),
            "undesired halves of one draw": jaccard(gains(a["general"], a["benign"], a["undesired"][:half]),
                                                     gains(a["general"], a["benign"], a["undesired"][half:]))}


def compare(root: Path, out: Path, target: str = "tokens") -> dict:
    draws = {int(p.stem.split("-")[1]): load_file(str(p)) for p in sorted(root.glob("seed-*.safetensors"))
             if p == _path(root, int(p.stem.split("-")[1]), target)}
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
        pairs = [jaccard(a, b) for a, b in itertools.combinations(gains, 2)]
        row = {"draws": label, "variant": name, "groups": parts, "changed": [len(g) for g in gains],
               **{key: {"mean": statistics.fmean(p[key] for p in pairs), "min": min(p[key] for p in pairs),
                        "max": max(p[key] for p in pairs)} for key in (f"top{TOP}", "weighted")},
               "seconds": round(time.time() - started, 1)}
        rows.append(row)
        print(f"{label:16s} {name:30s} top{TOP} {row[f'top{TOP}']['mean']:.2f} "
              f"[{row[f'top{TOP}']['min']:.2f}, {row[f'top{TOP}']['max']:.2f}]  weighted "
              f"{row['weighted']['mean']:.2f}  changed {min(row['changed'])}-{max(row['changed'])}", flush=True)
    result = {"what": __doc__.split("\n")[0], "target": target,
              "setting": {"strength": STRENGTH, "reach": REACH, "guard": GUARD},
              "seeds": seeds, "rows": rows, "which_set_varies": which_set_varies(draws[seeds[0]], draws[seeds[1]])}
    for key, value in result["which_set_varies"].items():
        print(f"{key}: top{TOP} {value[f'top{TOP}']:.2f}, weighted {value['weighted']:.2f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _setting_label(strength: float, reach: float, share: float) -> str:
    return f"s {strength:g}, reach {reach:g}, guard {share:g}"


def parse_settings(text: str) -> list[tuple[float, float, float]]:
    """'0.5/0.3,1/0.3/0.1': strength/reach[/guard share] per setting, the guard defaulting to make correct's."""
    out = []
    for item in text.split(","):
        parts = item.split("/")
        try:
            values = [float(x) for x in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3):
            raise SystemExit(f"--settings item {item!r}: write strength/reach or strength/reach/guard, e.g. 1/0.3/0.1.")
        strength, reach, share = (*values, GUARD)[:3]
        if not (0 < strength <= 1 and 0 < reach <= 1 and 0 <= share < 1):
            raise SystemExit(f"--settings item {item!r}: strength and reach in (0, 1], guard in [0, 1).")
        out.append((strength, reach, share))
    if len(set(out)) != len(out):
        raise SystemExit(f"--settings {text!r}: each setting once.")
    return out


def heldout(root: Path, groups: list[str], out: Path, settings: list[tuple[float, float, float]] | None = None,
            control: bool = True) -> dict:
    """Each group's pooled draws turned into make correct's chosen edit, or into each of ``settings`` (strength,
    reach, guard share), with no validation search, and measured on the held-out eval prompts and test text
    against the unpruned model and (``control``) against the same gains on random neurons, as ``correct``
    measures its chosen edit. Writes ``out``."""
    settings = settings or [(STRENGTH, REACH, GUARD)]
    from safety_prune.evaluation.behaviour import GenerationCache, evaluate
    from safety_prune.evaluation.stats import behaviour_per_prompt, paired_bootstrap_diff
    from safety_prune.interventions import gains_edit, random_like
    from safety_prune.jobs.common import open_model
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.jobs.stages import measure_baseline, suite_scorer
    from safety_prune.results import flat_metrics
    from safety_prune.suite import load_suite

    opt = CorrectOptions(seed=0)
    (root / "heldout").mkdir(parents=True, exist_ok=True)
    suite = load_suite("toxicity")
    scorer = suite_scorer(suite)
    lm = open_model("default", opt)
    started = time.time()
    base = measure_baseline(lm, suite, scorer, None, opt.seed, GenerationCache(None, root / "heldout"))
    base_scores = base.generations.per_prompt_mean()

    def flags(res) -> list[float]:  # the per-prompt rate, as results.json's behaviour_rate counts it
        return behaviour_per_prompt(res.scores, suite.scorer.threshold)["behaviour_rate"]

    def measure(edit) -> tuple[dict, list[float], list[float]]:
        pruned = replace(lm, model=edit.apply(lm.model))
        metrics, res = evaluate(pruned, lm, suite, scorer, base.prompts, base.test_text, opt.seed,
                                capability=base.capability)
        flat = {k: v for k, v in flat_metrics(metrics).items() if k != "details"}
        return flat, res.per_prompt_mean(), flags(res)

    keys = ("behaviour_rate", "behaviour_rate_ci", "behaviour_mean", "behaviour_mean_ci", "perplexity",
            "distinct2", "continuation_perplexity", "last_word_accuracy_drop")
    rows = [{"draws": "", "label": "unpruned", **{k: flat_metrics(base.metrics)[k] for k in keys},
             "per_prompt_mean": base_scores, "per_prompt_flagged": flags(base.generations)}]
    gains_by_group = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for group, (strength, reach, share) in itertools.product(groups, settings):
        t = time.time()
        draws = _group_draws(root, group)
        scores = _guarded(_relevance({n: torch.cat([d[n] for d in draws]) for n in SETS}), share)
        dense = proportional(scores, "neuron", strength, 0.0, reach)
        edit = gains_edit("neuron", dense, {"kind": "proportional", "strength": strength, "threshold": 0.0,
                                             "reach": reach})
        metrics, mine, mine_flags = measure(edit)
        name = group if len(settings) == 1 else f"{group} @ {_setting_label(strength, reach, share)}"
        gains_by_group.append((name, _gains(scores, strength, reach)))
        row = {"draws": name, "label": f"{len(draws)} draw(s) pooled",
               "setting": {"strength": strength, "reach": reach, "guard": share}, "changed": len(edit.units),
               **{k: metrics[k] for k in keys},
               "paired_vs_baseline": paired_bootstrap_diff(base_scores, mine, seed=opt.seed),
               "per_prompt_mean": mine, "per_prompt_flagged": mine_flags}
        if control:
            noise = {"neuron": torch.rand(dense.shape, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)}
            random_metrics, theirs, _ = measure(random_like(edit, noise, "neuron"))
            row |= {"paired_vs_random": paired_bootstrap_diff(theirs, mine, seed=opt.seed),
                    "random": {k: random_metrics[k] for k in keys}}
        row["seconds"] = round(time.time() - t, 1)
        rows.append(row)
        out.with_suffix(".partial.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")
        vs_random = (f", vs random {row['paired_vs_random']['delta']:+.4f} [{row['paired_vs_random']['ci_low']:+.4f}, "
                     f"{row['paired_vs_random']['ci_high']:+.4f}]" if control else "")
        print(f"draws {group}, s {strength} reach {reach} guard {share}: rate "
              f"{base.metrics['behaviour_rate']['value']:.3f} -> {row['behaviour_rate']:.3f}, "
              f"mean {row['paired_vs_baseline']['delta']:+.4f}{vs_random}, ppl {row['perplexity']:.2f}, "
              f"{row['seconds']:.0f} s", flush=True)
    between = {}
    for a, b in itertools.combinations(rows[1:], 2):
        d = between[f"{b['draws']} - {a['draws']}"] = {
            key: paired_bootstrap_diff(a[f"per_prompt_{key}"], b[f"per_prompt_{key}"], seed=opt.seed)
            for key in ("mean", "flagged")}
        print(f"{b['draws']} - {a['draws']}: mean {d['mean']['delta']:+.4f} [{d['mean']['ci_low']:+.4f}, "
              f"{d['mean']['ci_high']:+.4f}], rate {d['flagged']['delta']:+.4f} [{d['flagged']['ci_low']:+.4f}, "
              f"{d['flagged']['ci_high']:+.4f}]", flush=True)
    result = {"what": "held-out effect of fixed settings (make correct's chosen one by default) from single and "
                      "pooled reference draws; never used to choose a setting",
              "settings": [{"strength": st, "reach": r, "guard": g} for st, r, g in settings], "rows": rows,
              "jaccard": {f"{a} vs {b}": jaccard(ga, gb)
                          for (a, ga), (b, gb) in itertools.combinations(gains_by_group, 2)},
              "edit_vs_edit": between,
              "seconds": round(time.time() - started, 1)}
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=("draw", "compare", "heldout"))
    ap.add_argument("--root", type=Path, default=Path("runs/ranking-stability"))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--groups", default="0,1,0+1+2+3,4+5+6+7",
                    help="heldout: the draws of each edit, '+' pooling draws, e.g. 0,1,0+1+2+3,4+5+6+7")
    ap.add_argument("--settings", default=f"{STRENGTH}/{REACH}/{GUARD}",
                    help="heldout: strength/reach[/guard] of each edit, e.g. 0.5/0.3,1/0.3,1/0.3/0.1 (a front)")
    ap.add_argument("--no-random", action="store_true",
                    help="heldout: leave out the random-neuron control (half the time; no paired CI vs random)")
    ap.add_argument("--target", default="tokens", choices=("tokens", "continuation", "vocabulary"),
                    help="draw/compare: what the undesired samples explain (the suite's reference.target; "
                         "vocabulary: the toxic tokens' positions with reference.explain: vocabulary)")
    ap.add_argument("--json", type=Path, default=None,
                    help="the JSON to write (default benchmarks/results/ranking_stability[_heldout].json)")
    a = ap.parse_args()
    results = Path(__file__).parent / "results"
    if a.stage == "draw":
        seeds = [int(s) for s in a.seeds.split(",")]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--seeds {a.seeds!r}: each seed once (a repeat would count one draw as agreement).")
        draw(a.root, seeds, a.target)
    elif a.stage == "heldout":
        heldout(a.root, a.groups.split(","), a.json or results / "ranking_stability_heldout.json",
                parse_settings(a.settings), control=not a.no_random)
    else:
        compare(a.root, a.json or results / "ranking_stability.json", a.target)


if __name__ == "__main__":
    main()
