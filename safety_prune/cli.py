"""``safety-prune``: a thin layer over the library; errors print as one paragraph, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import nullcontext

from . import __version__
from .errors import ConfigError, SafetyPruneError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2-135M-Instruct), a model folder, a .gguf file or a hub id")
    p.add_argument("--probe", default="toxicity", help="probe suite name (see probes/) or a YAML path")
    p.add_argument("--out", required=True, help="run directory to write (must be empty or new)")
    p.add_argument("--overwrite", action="store_true", help="replace run files in a non-empty --out")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each set")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="attribution batch size")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin/.pt weights (loaded with torch.load(weights_only=True))")


def _add_limits(p: argparse.ArgumentParser) -> None:
    """Resource and input-decoding options of the jobs that attribute over a probe suite."""
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="refuse to start when attribution is estimated to need more, e.g. 16GB or 500MiB "
                        "(default: the memory free on the model's devices); see safety_prune/preflight.py")
    p.add_argument("--encoding-errors", default="strict", choices=["strict", "replace"],
                   help="prompt files that are not UTF-8: stop with file:line (strict, default) or replace "
                        "the bad bytes with U+FFFD (replace)")


def _limit_options(args: argparse.Namespace) -> dict:
    from .preflight import parse_size

    return {"max_memory": None if args.max_memory is None else parse_size(args.max_memory),
            "encoding_errors": args.encoding_errors}


def _add_scale(p: argparse.ArgumentParser) -> None:
    """Placement and memory options for large models and long sequences (torchrun needs no flag)."""
    p.add_argument("--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
                   help="spread a model larger than one GPU over all visible GPUs (and CPU memory) with "
                        "accelerate; overrides --device. Not combinable with torchrun")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block during attribution's backward instead of keeping its "
                        "intermediates: less memory for long sequences, same relevance, about 1/3 more time")


def _scale_options(args: argparse.Namespace) -> dict:
    return {"device_map": args.device_map, "gradient_checkpointing": args.gradient_checkpointing}


def _session(args: argparse.Namespace):
    """A torch.distributed process group for the attributing jobs when launched by torchrun."""
    if args.command not in ("audit", "correct"):
        return nullcontext()
    from .distributed import session

    return session(args.device, args.device_map)


def _add_fail_on(p: argparse.ArgumentParser) -> None:
    """The deployment gate option; parse with ``report.parse_fail_on`` before any work starts."""
    from .report import GATE_EXIT_CODE

    p.add_argument("--fail-on", action="append", default=None, metavar="EXPR",
                   help=f"deployment gate: fail (exit status {GATE_EXIT_CODE}) when METRIC OP NUMBER holds for the "
                        "corrected metrics, else the baseline, e.g. 'toxicity_rate>0.05' or 'perplexity>30' (quote "
                        "it; repeat or comma-separate; OP is > >= < <=). Without it the report still shows the "
                        "verdict against the probe suite's thresholds, but the exit status stays 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safety-prune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"safety-prune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="measure toxicity, fluency and perplexity, and find the circuit")
    _common(audit)
    _add_limits(audit)
    _add_scale(audit)
    _add_fail_on(audit)
    audit.add_argument("--top-k", type=int, default=50, help="units listed in circuit.json")

    corr = sub.add_parser("correct", help="prune the circuit behind the behaviour and prove it on held-out data")
    _common(corr)
    _add_limits(corr)
    _add_scale(corr)
    _add_fail_on(corr)
    corr.add_argument("--top-k", type=int, default=50, help="units listed in circuit.json")
    corr.add_argument("--method", default="lrp",
                      help="lrp, gradient, wanda, activation, aura, magnitude, random, or all (compared at the same k)")
    corr.add_argument("--unit", default="neuron", choices=["neuron", "head", "weight"])
    rule = corr.add_mutually_exclusive_group()
    rule.add_argument("--k", type=int, default=None, help="prune exactly k units")
    rule.add_argument("--sparsity", type=float, default=None, help="prune this fraction of the units")
    rule.add_argument("--ppl-budget", type=float, default=0.02,
                      help="largest k whose validation perplexity rise stays within this fraction (default)")
    corr.add_argument("--sweep", default="", help="comma-separated extra k values to evaluate, e.g. 25,50,100")
    corr.add_argument("--save-model", default=None, help="write the corrected model here (new or empty folder)")
    corr.add_argument("--screen", type=int, default=0,
                      help="damage screen before the --ppl-budget search: ablate the top N candidates one by one on "
                           "validation text and skip those costing more than --screen-max perplexity (0: off)")
    corr.add_argument("--screen-max", type=float, default=0.005, help="relative perplexity rise (default 0.005)")
    corr.add_argument("--exclude-layers", default="", help="comma-separated layers whose units are never pruned")

    report = sub.add_parser(
        "report", help="re-render a run's report.html, or compare two runs, without loading any model",
        description="Rebuild RUN_DIR/report.html from RUN_DIR/results.json and samples.jsonl, or with "
                    "--compare RUN_A RUN_B write a page of what changed between two runs and each metric side by "
                    "side (default: RUN_B/compare.html). Exit status: 0 ok, 2 bad input, 3 when --fail-on fails "
                    "(report.GATE_EXIT_CODE).")
    report.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR", help="a finished run directory")
    report.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                        help="compare two run directories instead of rendering one")
    report.add_argument("--out", default=None, metavar="FILE",
                        help="where --compare writes its page (default: RUN_B/compare.html)")
    _add_fail_on(report)

    comp = sub.add_parser("compress", help="prune a share of the weights by relevance on general text")
    _common(comp)
    comp.add_argument("--sparsity", type=float, default=0.5, help="share of block weights to zero (default 0.5)")
    comp.add_argument("--method", default="lrp,wanda,magnitude",
                      help="comma-separated: lrp, wanda, magnitude, gradient, random (compared side by side)")
    comp.add_argument("--granularity", default="rowwise", choices=["rowwise", "global"])
    comp.add_argument("--save-model", default=None, help="write the first method's pruned model here")

    circ = sub.add_parser("circuit", help="find the units a task (IOI) needs by pruning the least relevant")
    circ.add_argument("--model", default="default", help="as for audit")
    circ.add_argument("--task", default="ioi", help="task (ioi)")
    circ.add_argument("--out", required=True, help="run directory to write (must be empty or new)")
    circ.add_argument("--overwrite", action="store_true")
    circ.add_argument("--unit", default="head", choices=["neuron", "head"])
    circ.add_argument("--method", default="lrp,gradient,activation,random",
                      help="comma-separated: lrp, gradient, activation, magnitude, random; "
                           "the first defines the circuit")
    circ.add_argument("--threshold", type=float, default=0.9, help="keep accuracy >= this share of the original")
    circ.add_argument("--device", default="cpu")
    circ.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "float64"])
    circ.add_argument("--seed", type=int, default=0)
    circ.add_argument("--batch-size", type=int, default=8)

    scorer = sub.add_parser("scorer", help="check a toxicity scorer against Perspective labels")
    scorer_sub = scorer.add_subparsers(dest="scorer_command", required=True)
    val = scorer_sub.add_parser("validate", help="AUROC, recall and false-positive rate on RTP texts (cached)")
    val.add_argument("--scorer", default="profanity", help="scorer name (profanity, detoxify)")
    val.add_argument("--checkpoint", default=None, help="detoxify: local checkpoint file")
    val.add_argument("--config-dir", default=None, help="detoxify: local config/tokenizer folder")
    val.add_argument("--threshold", type=float, default=0.5)

    assets = sub.add_parser("assets", help="list or fetch the pinned offline assets")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    assets_sub.add_parser("list", help="show every asset and whether it is cached")
    fetch = assets_sub.add_parser("fetch", help="download, extract and verify assets into the cache")
    fetch.add_argument("names", nargs="*", help="asset names (default: all)")
    fetch.add_argument("--from-dir", default=None, help="take the wheels from this folder instead of pip")
    return parser


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be comma-separated integers, e.g. 25,50,100.") from None


def _gate_status(res: dict, fail_on: list[str], out: str) -> int:
    """Exit status: GATE_EXIT_CODE only when the user asked for a gate with --fail-on and it failed."""
    from .report import GATE_EXIT_CODE

    if fail_on and not res["gate"]["passed"]:
        print(f"safety-prune: deployment gate failed ({', '.join(fail_on)}); see {out}/report.html", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from .report import parse_fail_on

    if args.command == "audit":
        from .pipeline import AuditOptions, audit

        opts = AuditOptions(limit=args.limit, seed=args.seed, device=args.device, dtype=args.dtype,
                            top_k=args.top_k, batch_size=args.batch_size,
                            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                            **_limit_options(args), **_scale_options(args))
        fail_on = parse_fail_on(args.fail_on)
        res = audit(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv,
                    fail_on=fail_on)
        b = res["baseline"]
        print(f"toxicity_rate {b['toxicity_rate']:.3f}  toxicity_mean {b['toxicity_mean']:.3f}  "
              f"perplexity {b['perplexity']:.2f}  distinct2 {b['distinct2']:.3f}  -> {args.out}/report.html")
        return _gate_status(res, fail_on, args.out)
    if args.command == "correct":
        from .correction import CorrectOptions, correct

        sweep = _int_list(args.sweep, "--sweep")
        opts = CorrectOptions(limit=args.limit, seed=args.seed, device=args.device, dtype=args.dtype,
                              top_k=args.top_k, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                              allow_pickle=args.allow_pickle, method=args.method, unit=args.unit, k=args.k,
                              sparsity=args.sparsity, ppl_budget=args.ppl_budget, sweep=sweep,
                              save_model=args.save_model, screen=args.screen, screen_max=args.screen_max,
                              exclude_layers=_int_list(args.exclude_layers, "--exclude-layers"),
                              **_limit_options(args), **_scale_options(args))
        fail_on = parse_fail_on(args.fail_on)
        res = correct(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv,
                      fail_on=fail_on)
        b, c = res["baseline"], res["corrected"]
        print(f"pruned {res['pruned']['count']} {res['pruned']['unit']}s ({res['method']}): toxicity_rate "
              f"{b['toxicity_rate']:.3f} -> {c['toxicity_rate']:.3f}, perplexity {b['perplexity']:.2f} -> "
              f"{c['perplexity']:.2f}, distinct2 {b['distinct2']:.3f} -> {c['distinct2']:.3f}")
        print(f"report: {args.out}/report.html")
        return _gate_status(res, fail_on, args.out)
    if args.command == "compress":
        from .compression import CompressOptions, compress

        opts = CompressOptions(limit=args.limit, seed=args.seed, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                               allow_pickle=args.allow_pickle, sparsity=args.sparsity,
                               methods=[m.strip() for m in args.method.split(",") if m.strip()],
                               granularity=args.granularity, save_model=args.save_model)
        res = compress(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv)
        print(f"unpruned perplexity {res['baseline']['perplexity']:.3f}")
        for row in res["comparison"]:
            ratio = f"  ratio vs wanda {row['ratio_vs_wanda']:.4f}" if row["ratio_vs_wanda"] else ""
            print(f"{row['method']:>10}: sparsity {row['sparsity']:.3f}  perplexity {row['perplexity']:.3f}{ratio}")
        print(f"report: {args.out}/report.html")
        return 0
    if args.command == "circuit":
        from .circuit import CircuitOptions, circuit

        opts = CircuitOptions(seed=args.seed, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                              task=args.task, unit=args.unit, threshold=args.threshold,
                              methods=[m.strip() for m in args.method.split(",") if m.strip()])
        res = circuit(args.model, args.out, overwrite=args.overwrite, options=opts, argv=argv)
        c = res["circuit"]
        base = res["baseline"]
        print(f"{res['task']} accuracy {base['accuracy']:.3f} (logit diff {base['logit_diff']:.2f}); "
              f"{c['method']} keeps {c['kept']} of {c['total']} {c['unit']}s at accuracy {c['accuracy']:.3f}")
        for row in res["comparison"]:
            print(f"{row['method']:>10}: max pruned share at threshold {row['max_fraction_at_threshold']:.2f}, "
                  f"accuracy at 50% pruned {row['accuracy_at_50pct']:.3f}")
        print(f"report: {args.out}/report.html")
        return 0
    if args.command == "scorer":
        from .scorers import get_scorer
        from .scorers.validate import validate_scorer

        options = {k: v for k, v in (("checkpoint", args.checkpoint), ("config_dir", args.config_dir)) if v}
        print(json.dumps(validate_scorer(get_scorer(args.scorer, **options), args.threshold), indent=2))
        return 0
    if args.command == "report":
        return _report(args)
    if args.command == "assets":
        from pathlib import Path

        from . import assets

        if args.assets_command == "list":
            print(json.dumps(assets.list_assets(), indent=2))
            return 0
        names = args.names or [a["name"] for a in assets.list_assets()]
        paths = assets.fetch_many(names, from_dir=Path(args.from_dir) if args.from_dir else None)
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return 0
    raise AssertionError(args.command)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import GATE_EXIT_CODE, evaluate_gate, load_results, parse_fail_on, render_compare, render_run

    if (args.run_dir is None) == (args.compare is None):
        raise ConfigError("report needs exactly one of RUN_DIR (re-render that run's report.html) or "
                          "--compare RUN_A RUN_B (write a comparison page), e.g. `safety-prune report runs/a`.")
    if args.compare is not None:
        if args.fail_on:
            raise ConfigError("--fail-on applies to one run; drop it with --compare, or gate each run on its own.")
        run_a, run_b = args.compare
        out = render_compare(run_a, run_b, Path(args.out) if args.out else Path(run_b) / "compare.html")
        print(f"comparison: {out}")
        return 0
    if args.out is not None:
        raise ConfigError("--out is only for --compare; `report RUN_DIR` always writes RUN_DIR/report.html.")
    fail_on = parse_fail_on(args.fail_on)
    out = render_run(args.run_dir, fail_on=fail_on)
    print(f"report: {out}")
    if fail_on and not evaluate_gate(load_results(args.run_dir), fail_on)["passed"]:
        print(f"safety-prune: deployment gate failed ({', '.join(fail_on)}); see {out}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with _session(args):
            return _run(args, ["safety-prune", *argv])
    except SafetyPruneError as exc:
        print(f"safety-prune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("safety-prune: interrupted; no partial output was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
