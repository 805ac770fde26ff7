"""Compression and circuit discovery on one model, every variant side by side in one process (issue 12).

    python benchmarks/tasks.py compress [--model default] [--quick]
    python benchmarks/tasks.py circuit  [--model default] [--quick]

**compress**: 50% row-wise sparsity of every block weight. Wanda and every LRP variant calibrate on the very
same samples; each variant's held-out perplexity (the toxicity suite's general test split, as `safety-prune
compress`) is printed with its ratio to Wanda's on those samples and its calibration time relative to Wanda's.
Variants: calibration (one sample per document of <= 128 tokens, as `compress` by default, or windows cut from
the documents joined end to end), what is explained (``--target``), how per-token relevance is aggregated
(``--aggregation``) and the LRP rules (``--variant``).

**circuit**: IOI heads (or neurons) pruned least relevant first; per variant, the accuracy at every pruned share,
the largest share prunable at >= 90% of the unpruned accuracy, and the accuracy at 50%. Variants: signed
relevance, per-prompt |R| or per-prompt positive part, per-prompt normalisation, one-shot or iterative
re-attribution, heads or neurons; gradient x activation, activation and random as baselines.

Both use the library's own building blocks (``jobs.compress.weight_scores``, ``jobs.circuit.prune_curve``), so a
number here is what the job computes with those options. JSON goes to ``benchmarks/results/tasks_<task>.json``.
``--quick`` runs a few variants on fewer samples (a smoke test, not a measurement). ``--resume`` keeps the rows of
the last run's JSON and measures only the variants it lacks (a stopped run goes on where it stopped); ``runs`` in
the JSON names each run's command, threads, time and the rows it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from safety_prune.evaluation.ioi import ioi_prompts, ioi_samples, ioi_scores
from safety_prune.jobs.circuit import GRID, prune_curve
from safety_prune.jobs.compress import calibration_samples, heldout_perplexity, weight_scores
from safety_prune.jobs.options import CircuitOptions, CompressOptions
from safety_prune.models import load_model
from safety_prune.pruning import pruned_copy, select
from safety_prune.suite import load_suite

RESULTS = Path(__file__).parent / "results"

DOCS = {"calibration": "documents"}  # one sample per general reference document, <= 128 tokens
WINDOWS = {"calibration": "windows", "window": 512, "n_windows": 32}


def lrp(aggregation: str, target: str = "actual", variant: str = "attnlrp") -> dict[str, str]:
    return {"target": target, "aggregation": aggregation, "variant": variant}


# (label, calibration options, lrp options), every option spelled out so that a changed default cannot change a
# row's meaning; wanda is measured once per calibration.
COMPRESS = [
    ("docs 128x<=128, sample_abs (the old default)", DOCS, lrp("sample_abs")),
    ("windows 32x512, sample_abs", WINDOWS, lrp("sample_abs")),
    ("windows 32x512, token_l2 (compress default)", WINDOWS, lrp("token_l2")),
    ("windows 32x512, token_l1", WINDOWS, lrp("token_l1")),
    ("windows 32x512, token_l2, logprob", WINDOWS, lrp("token_l2", target="logprob")),
    ("windows 32x512, token_l2, predicted", WINDOWS, lrp("token_l2", target="predicted")),
    ("windows 32x512, token_l2, cp", WINDOWS, lrp("token_l2", variant="cp")),
]

# (label, method, circuit options)
CIRCUIT = [
    ("lrp abs", "lrp", {"relevance": "abs"}),
    ("lrp signed (circuit default)", "lrp", {"relevance": "signed"}),
    ("lrp abs, per-prompt normalised", "lrp", {"relevance": "abs", "normalise": "sample"}),
    ("lrp signed, per-prompt normalised", "lrp", {"relevance": "signed", "normalise": "sample"}),
    ("lrp abs, iterative", "lrp", {"relevance": "abs", "schedule": "iterative"}),
    ("lrp signed, iterative", "lrp", {"relevance": "signed", "schedule": "iterative"}),
    ("lrp positive part", "lrp", {"relevance": "positive"}),
    ("lrp positive part, neurons", "lrp", {"relevance": "positive", "unit": "neuron"}),
    ("gradient x activation abs", "gradient", {"relevance": "abs"}),
    ("gradient x activation signed", "gradient", {"relevance": "signed"}),
    ("gradient x activation positive part", "gradient", {"relevance": "positive"}),
    ("gradient x activation positive part, neurons", "gradient", {"relevance": "positive", "unit": "neuron"}),
    ("activation", "activation", {}),
    ("random", "random", {}),
]


def run_compress(model: str, quick: bool, save, previous: list[dict[str, Any]]) -> dict[str, Any]:
    lm = load_model(model)
    suite = load_suite("toxicity")
    variants = COMPRESS[:3] if quick else COMPRESS
    dense = heldout_perplexity(lm, lm.model, suite, 0)
    print(f"dense perplexity {dense['perplexity']:.3f} on {dense['n_tokens']} held-out tokens", flush=True)
    rows = list(previous)
    wanda: dict[str, dict[str, Any]] = {}

    def prune(method: str, samples, opt: CompressOptions) -> dict[str, Any]:
        clock = time.perf_counter()
        scores = weight_scores(lm, method, samples, 4 if opt.calibration == "windows" else 8, 0, target=opt.target,
                               aggregation=opt.aggregation, variant=opt.variant)
        seconds = time.perf_counter() - clock
        units = select(scores, "weight", sparsity=0.5, scope="rowwise", largest=False)
        del scores
        ppl = heldout_perplexity(lm, pruned_copy(lm.model, units), suite, 0)
        return {"perplexity": ppl["perplexity"], "perplexity_ci": ppl["perplexity_ci"], "seconds": seconds}

    for label, calib, ranking in variants:
        if any(r["calibration"] == calib and r["lrp"] == ranking for r in rows):
            continue
        opt = CompressOptions(**calib, **ranking, limit=8 if quick else None)
        samples = calibration_samples(lm, suite, opt)
        key = json.dumps(calib, sort_keys=True)
        tokens = sum(len(s.input_ids) for s in samples)
        if key not in wanda:
            wanda[key] = prune("wanda", samples, opt)
            print(f"wanda on {len(samples)} samples, {tokens} tokens: perplexity {wanda[key]['perplexity']:.3f} "
                  f"({wanda[key]['seconds']:.0f} s)", flush=True)
        got = prune("lrp", samples, opt)
        row = {"label": label, "calibration": calib, "lrp": ranking, "n_samples": len(samples), "tokens": tokens,
               "lrp_perplexity": got["perplexity"], "lrp_perplexity_ci": got["perplexity_ci"],
               "wanda_perplexity": wanda[key]["perplexity"],
               "ratio_vs_wanda": got["perplexity"] / wanda[key]["perplexity"],
               "lrp_seconds": got["seconds"], "wanda_seconds": wanda[key]["seconds"],
               "time_vs_wanda": got["seconds"] / wanda[key]["seconds"]}
        rows.append(row)
        save({"task": "compress", "partial": True, "dense": dense, "rows": rows})
        print(f"{label:<48} LRP {row['lrp_perplexity']:8.3f}  Wanda {row['wanda_perplexity']:8.3f}  "
              f"ratio {row['ratio_vs_wanda']:.3f}  time x{row['time_vs_wanda']:.1f}", flush=True)
    order = [(calib, ranking) for _, calib, ranking in COMPRESS]
    rows.sort(key=lambda r: order.index((r["calibration"], r["lrp"])))
    return {"task": "compress", "sparsity": 0.5, "granularity": "rowwise", "dense": dense, "rows": rows}


def run_circuit(model: str, quick: bool, save, previous: list[dict[str, Any]]) -> dict[str, Any]:
    lm = load_model(model)
    tok = lm.tokenizer
    base_opt = CircuitOptions(n_reference=16 if quick else 64, n_eval=64 if quick else 256)
    reference = ioi_prompts(tok, base_opt.n_reference, base_opt.seed)
    seen = {p.text for p in reference}
    held_out = [p for p in ioi_prompts(tok, base_opt.n_eval, base_opt.seed + 1) if p.text not in seen]
    samples = ioi_samples(tok, reference, foil=True)
    base = ioi_scores(lm.model, tok, held_out)
    print(f"unpruned IOI accuracy {base['accuracy']:.3f} on {len(held_out)} held-out prompts", flush=True)
    rows = list(previous)
    for label, method, knobs in (CIRCUIT[:3] + CIRCUIT[-1:] if quick else CIRCUIT):
        if any(r["method"] == method and r["knobs"] == knobs for r in rows):
            continue
        opt = CircuitOptions(**{**vars(base_opt), **knobs, "methods": (method,)})
        clock = time.perf_counter()
        curve, _ = prune_curve(lm.model, tok, samples, held_out, method, opt)
        ok = [p["fraction_pruned"] for p in curve if p["accuracy"] >= 0.9 * base["accuracy"]]
        row = {"label": label, "method": method, "knobs": knobs, "seconds": time.perf_counter() - clock,
               "max_fraction_at_90pct": max(ok, default=0.0),
               "accuracy_at_50pct": next(p["accuracy"] for p in curve if abs(p["fraction_pruned"] - 0.5) < 0.01),
               "curve": [{"fraction_pruned": p["fraction_pruned"], "accuracy": p["accuracy"]} for p in curve]}
        rows.append(row)
        save({"task": "circuit", "partial": True, "baseline": base, "rows": rows})
        print(f"{label:<36} prunable {row['max_fraction_at_90pct']:.2f}  acc@50% {row['accuracy_at_50pct']:.3f}  "
              + " ".join(f"{p['accuracy']:.2f}" for p in curve) + f"  ({row['seconds']:.0f} s)", flush=True)
    order = [(method, knobs) for _, method, knobs in CIRCUIT]
    rows.sort(key=lambda r: order.index((r["method"], r["knobs"])))
    return {"task": "circuit", "unit": "head, or neuron where a row's knobs say so", "target": "logit_diff",
            "baseline": base, "n_reference": len(samples), "n_eval": len(held_out), "grid": list(GRID), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The README's table, from a finished run's JSON (so the README is regenerated, not retyped)."""
    if result["task"] == "compress":
        lines = [f"dense perplexity {result['dense']['perplexity']:.2f}", "",
                 "| LRP variant | calibration tokens | LRP perplexity | Wanda perplexity (same samples) "
                 "| ratio vs Wanda | LRP time vs Wanda |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['tokens']:,} | {r['lrp_perplexity']:.2f} | {r['wanda_perplexity']:.2f} | "
                  f"{r['ratio_vs_wanda']:.3f} | {r['time_vs_wanda']:.1f}x |" for r in result["rows"]]
    else:
        lines = ["| ranking | largest share pruned at >= 90% accuracy | accuracy at 50% | curve |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['max_fraction_at_90pct']:.2f} | {r['accuracy_at_50pct']:.3f} | "
                  + " ".join(f"{p['accuracy']:.2f}" for p in r["curve"]) + " |" for r in result["rows"]]
    return "\n".join(lines)


def earlier_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind a results file's rows, each with its command, threads, time and the labels it measured (a
    file written before ``runs`` existed describes its single run at the top level)."""
    if "runs" in doc:
        return doc["runs"]
    keys = ("command", "torch_threads", "machine", "wall_seconds", "note")
    return [{k: doc[k] for k in keys if k in doc} | {"labels": [r["label"] for r in doc["rows"]]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("compress", "circuit"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="a few variants on few samples (smoke test)")
    parser.add_argument("--table", action="store_true", help="print the README table of the last run's JSON")
    parser.add_argument("--resume", action="store_true", help="keep the last run's rows; measure only the rest")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads((RESULTS / f"tasks_{args.task}.json").read_text(encoding="utf-8"))))
        return
    started = time.time()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tasks_{args.task}{'_quick' if args.quick else ''}.json"
    earlier = json.loads(out.read_text(encoding="utf-8")) if args.resume and out.exists() else None
    previous = earlier["rows"] if earlier else []
    runs = earlier_runs(earlier) if earlier else []
    about = {"model": args.model, "quick": args.quick}
    this_run = {"command": f"python benchmarks/tasks.py {args.task}" + (" --quick" if args.quick else "")
                + (" --resume" if earlier else ""), "torch_threads": torch.get_num_threads(),
                "machine": platform.machine()}

    def save(result: dict[str, Any]) -> None:  # after every variant, so a stopped run keeps what it measured
        measured = [r["label"] for r in result["rows"] if r not in previous]
        run = this_run | {"wall_seconds": time.time() - started, "labels": measured}
        out.write_text(json.dumps(result | about | {"runs": [*runs, run]}, indent=1) + "\n", encoding="utf-8")

    result = (run_compress if args.task == "compress" else run_circuit)(args.model, args.quick, save, previous)
    save(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
