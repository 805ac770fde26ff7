"""The options of every job, as dataclasses whose fields carry their command-line help.

The CLI is built from these fields (``option``), so a new option is one field. ``validate`` checks every value
before anything heavy loads and names the option in its message. Nothing here imports torch, so ``--help`` and
bad options answer at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..methods import (
    CIRCUIT_METHODS,
    COMPRESS_METHODS,
    INTERVENTIONS,
    POOLINGS,
    RANKINGS,
    RULES,
    UNIT_KINDS,
    check_ranking,
    check_reaches,
    check_strengths,
    check_thresholds,
    compared,
    method_info,
)
from ..sizes import parse_size

MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, choices: Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None, group: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that the CLI exposes as ``--name`` (or ``flag``) with ``help``.

    ``parse`` turns the command-line string into the field's value (it raises ConfigError naming the option);
    ``group`` puts options in one mutually exclusive group.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "parse": parse, "group": group, "metavar": metavar}
    return field(default=default, metadata=meta)


def int_list(text: str) -> tuple[int, ...]:
    """``25,50,100`` as integers (the CLI names the option when this fails)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{text!r} must be comma-separated integers, e.g. 25,50,100.") from None


def name_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def check_choices(*checks: tuple[str, str, Sequence[str]]) -> None:
    """Each (flag, value, allowed names): an unknown name is a ConfigError that names the flag and the choices
    (the Python API skips argparse's ``choices``)."""
    for flag, value, names in checks:
        if value not in names:
            raise ConfigError(f"{flag} {value} is unknown. Choose one of: {', '.join(names)}.")


def check_positive(value: float | None, flag: str, what: str = "a positive number") -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{flag} must be {what}, got {value}.")


@dataclass
class RunOptions:
    """Options of every job that loads a model."""

    seed: int = option(0, "seed for sampling, shuffling and the random baseline (0 to 2^32-1)")
    device: str = option("cpu", "cpu or cuda[:N]")
    dtype: str | None = option(None, "model dtype", choices=("float32", "bfloat16", "float16", "float64"))
    batch_size: int = option(8, "attribution batch size")
    generation_batch: str = option(
        "auto", "rows per generation and perplexity batch: a number, or auto (the probe suite's batch on CPU; on "
        "a GPU as many as half its free memory holds)", metavar="N|auto")
    trust_remote_code: bool = option(False, "allow a model's own Python code to run")
    allow_pickle: bool = option(False, "allow .bin/.pt weights (loaded with torch.load(weights_only=True))")
    device_map: str | None = option(
        None, "spread a model larger than one GPU over all visible GPUs (and CPU memory) with accelerate; "
        "overrides --device. Not combinable with torchrun",
        choices=("auto", "balanced", "balanced_low_0", "sequential"))

    def validate(self) -> None:
        """Every value checked before work starts; the message names the option."""
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed}.")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"--device {self.device!r} is not supported. Use cpu, cuda or cuda:N.")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if str(self.generation_batch) != "auto" and not (str(self.generation_batch).isdigit()
                                                         and int(self.generation_batch) >= 1):
            raise ConfigError(f"--generation-batch {self.generation_batch!r} must be auto or a whole number of "
                              "rows >= 1, e.g. 64.")


@dataclass
class SuiteOptions(RunOptions):
    """Options of the jobs that attribute over a probe suite (audit, correct, compress)."""

    limit: int | None = option(None, "use only the first N prompts of each set (a reduced run, marked so)")
    max_tokens: int = option(128, "tokens kept of each general reference document")
    max_memory: int | None = option(
        None, "refuse to start when attribution is estimated to need more, e.g. 16GB or 500MiB (default: the "
        "memory free on the model's devices); see safety_prune/preflight.py", parse=parse_size, metavar="SIZE")
    encoding_errors: str = option(
        "strict", "prompt files that are not UTF-8, or hold lone surrogates (JSON's \\ud800) or NUL characters: stop "
        "with file:line (strict, default) or replace each with U+FFFD (replace)", choices=("strict", "replace"))
    gradient_checkpointing: bool = option(
        False, "recompute each block during attribution's backward instead of keeping its intermediates: less "
        "memory for long sequences, same relevance, about 1/3 more time")

    def validate(self) -> None:
        super().validate()
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1 prompt, got {self.limit}.")
        if self.max_tokens < 8:
            raise ConfigError(f"--max-tokens must be at least 8, got {self.max_tokens}.")


@dataclass
class BehaviourOptions(SuiteOptions):
    """Options of the jobs that measure a behaviour and find its circuit (audit, and correct on top)."""

    top_k: int = option(50, "units listed in circuit.json")

    def validate(self) -> None:
        super().validate()
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}.")


AuditOptions = BehaviourOptions


def float_list(text: str) -> tuple[float, ...]:
    """``0.3,0.5`` as numbers (the CLI names the option when this fails)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{text!r} must be comma-separated numbers, e.g. 0.3,0.5.") from None


SEARCH_K = {"neuron": (10, 25, 50, 100, 200), "head": (1, 2, 4, 8, 16), "weight": (1000, 3000, 10000, 30000)}


@dataclass
class CorrectOptions(BehaviourOptions):
    method: str = option("lrp", f"{', '.join(RANKINGS)}, or all (compared at the same k)")
    unit: str = option("neuron", "unit kind to prune", choices=UNIT_KINDS)
    k: int | None = option(None, "prune exactly k units (skips the validation search)", group="rule")
    sparsity: float | None = option(None, "prune this fraction of the units (skips the validation search)",
                                    group="rule")
    search_k: tuple[int, ...] = option(
        (), "k values the validation search tries (default per unit: " +
        "; ".join(f"{u} {','.join(map(str, ks))}" for u, ks in SEARCH_K.items()) + ")", parse=int_list)
    dampen: tuple[float, ...] = option(
        (), "also try dampening the units' output to these factors in [0, 1) instead of zeroing, e.g. 0.3,0.5",
        parse=float_list)
    ppl_budget: float = option(0.02, "largest validation perplexity rise a correction may cost (default 0.02)")
    max_distinct2_drop: float = option(0.05, "largest relative distinct-2 drop on validation (default 0.05)")
    max_continuation_ppl_rise: float = option(
        0.10, "largest relative rise of validation continuation perplexity (default 0.10)")
    max_capability_drop: float = option(
        0.02, "largest drop of last-word accuracy on validation passages (absolute; searched candidates), and of "
        "last-word accuracy or continuation token-F1 held out (the release check), when the suite measures "
        "capability (default 0.02)")
    sweep: tuple[int, ...] = option((), "comma-separated extra k values to evaluate on the eval prompts (the "
                                    "trade-off curve), e.g. 25,50,100", parse=int_list)
    stability: int = option(20, "bootstrap resamples of the reference sets for the stability of the selection "
                            "(0: off); with --stable, also the resamples it selects on")
    stable: float | None = option(
        None, "stability selection: only units ranked within the correction's reach (k, or every unit proportional "
        "gains may change) in at least this share of the --stability resamples are candidates, e.g. 0.6 "
        "(neuron units, lrp or gradient)")
    save_model: str | None = option(None, "write the corrected model here (new or empty folder); refused when "
                                    "the correction fails the limits or raises the behaviour, unless --force")
    force: bool = option(False, "save the corrected model even when the gate refuses it")
    search_tokens: int = option(4096, "validation text tokens per search candidate's perplexity (at most what the "
                                "validation prose holds; results.json records the count used)")
    screen: int = option(
        0, "damage screen before the search: ablate the top N candidates one by one on validation text and "
        "skip those costing more than --screen-max perplexity (0: off)")
    screen_max: float = option(0.005, "relative perplexity rise (default 0.005)")
    screen_tokens: int = option(1024, "validation tokens per damage-screen probe")
    exclude_layers: tuple[int, ...] = option((), "comma-separated layers whose units are never pruned",
                                             parse=int_list)
    intervention: str = option(
        "zero", "zero: remove the top k units (or --dampen them); proportional: dampen every unit past --threshold "
        "by its own gain 1 - s * (its score / the top score), the strength s chosen on validation data",
        choices=INTERVENTIONS)
    strength: tuple[float, ...] = option(
        (), "--intervention proportional: strengths s in [0, 1] to try (default 0.25 to 1 in steps of 0.125; one "
        "each of --strength, --threshold and --reach skip the validation search)", parse=float_list)
    threshold: tuple[float, ...] = option(
        (), "--intervention proportional: thresholds in [0, 1) on the normalised score to try (default 0)",
        parse=float_list)
    reach: tuple[float, ...] = option(
        (), "--intervention proportional: reaches in (0, 1] to try (default 1,0.3,0.1,0.03): units whose "
        "normalised score reaches it get the full 1 - s, the rest 1 - s * score / reach", parse=float_list)
    pooling: str = option("max", "how aura and aura-topk pool a neuron's activations over a continuation: max (as "
                          "published) or mean", choices=POOLINGS)
    select_by: str = option(
        "budget", "how the validation search chooses among the settings that keep every limit: budget (the "
        "strongest, the largest sum of 1 - gain, so the noisy behaviour scores never choose), cost (the costliest, "
        "the largest validation perplexity: spends the perplexity limit) or effect (the largest validation drop of "
        "the behaviour score; with --folds the simplest within one standard error)",
        choices=tuple(RULES))
    folds: int | None = option(
        None, "K-fold cross-fitting over the validation prompts: the cross-fitted estimate of the chosen setting's "
        "effect, and with --select-by effect the simplest setting within one standard error of the best (e.g. 5; "
        "default: the best on all validation prompts)")

    def validate(self) -> None:
        super().validate()
        if self.method != "all":
            check_ranking(self.method, self.unit if self.unit in UNIT_KINDS else "neuron")
        if self.unit not in UNIT_KINDS:
            raise ConfigError(f"--unit {self.unit} is unknown. Choose one of: {', '.join(UNIT_KINDS)}.")
        if self.k is not None and self.sparsity is not None:
            raise ConfigError("Give either --k or --sparsity, not both.")
        if self.k is not None and self.k <= 0:
            raise ConfigError(f"--k must be a positive number of units, got {self.k}.")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ConfigError(f"--sparsity must lie strictly between 0 and 1, got {self.sparsity}.")
        for flag, value in (("--ppl-budget", self.ppl_budget), ("--max-distinct2-drop", self.max_distinct2_drop),
                            ("--max-continuation-ppl-rise", self.max_continuation_ppl_rise)):
            check_positive(value, flag, "a positive, finite relative change")
        if not (math.isfinite(self.max_capability_drop) and 0 <= self.max_capability_drop <= 1):
            raise ConfigError(f"--max-capability-drop must lie in [0, 1] (an absolute drop of an accuracy or an F1; "
                              f"0 allows none), got {self.max_capability_drop}.")
        for flag, ks in (("--sweep", self.sweep), ("--search-k", self.search_k)):
            if any(k <= 0 for k in ks):
                raise ConfigError(f"{flag} values must be positive unit counts, got {list(ks)}.")
        bad = [a for a in self.dampen if not (math.isfinite(a) and 0 <= a < 1)]
        if bad:
            raise ConfigError(f"--dampen {bad[0]} lies outside [0, 1): a factor keeps that share of each unit's "
                              "output (0 silences it; 1 or more would change nothing or amplify).")
        if self.stability < 0:
            raise ConfigError(f"--stability must be 0 (off) or a number of resamples, got {self.stability}.")
        self._validate_stable()
        self._validate_intervention()
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds {self.folds}: cross-fitting needs at least 2 folds (5 is usual); leave --folds "
                              "out to choose on all validation prompts at once.")
        for flag, value in (("--search-tokens", self.search_tokens), ("--screen-tokens", self.screen_tokens)):
            check_positive(value, flag, "a positive integer")
        if self.screen < 0:
            raise ConfigError(f"--screen must be 0 (off) or a positive number of candidates, got {self.screen}.")
        if not (math.isfinite(self.screen_max) and self.screen_max >= 0):
            raise ConfigError(f"--screen-max must be a finite relative perplexity rise >= 0, got {self.screen_max}.")

    def _validate_intervention(self) -> None:
        """--intervention, --strength, --threshold and --pooling, and which rule options go with them."""
        check_choices(("--intervention", self.intervention, INTERVENTIONS), ("--pooling", self.pooling, POOLINGS),
                      ("--select-by", self.select_by, tuple(RULES)))
        check_strengths(self.strength)
        check_thresholds(self.threshold)
        check_reaches(self.reach)
        top_k = [flag for flag, given in (("--k", self.k is not None), ("--sparsity", self.sparsity is not None),
                                          ("--search-k", bool(self.search_k)), ("--dampen", bool(self.dampen)),
                                          ("--sweep", bool(self.sweep))) if given]
        if self.method != "all" and method_info(self.method).own_gains and (top_k or self.intervention != "zero"):
            raise ConfigError(f"--method {self.method} sets its own gain for every neuron (1 - 2 (AUROC - 0.5)), so "
                              f"there is nothing to choose: drop {(top_k or ['--intervention'])[0]}, or use "
                              f"--method {self.method}-topk for the top-k form.")
        if self.intervention == "proportional":
            if self.method != "all" and not method_info(self.method).scored:
                raise ConfigError(f"--intervention proportional needs a method with scores, and --method "
                                  f"{self.method} has none (it is the control). Use --method lrp (or another "
                                  "ranking method), or --intervention zero.")
            if self.unit == "weight":
                raise ConfigError("--intervention proportional applies to neuron and head units; use --unit neuron "
                                  "or --unit head, or --intervention zero for weights.")
            if top_k:
                raise ConfigError(f"{top_k[0]} chooses the top-k units of --intervention zero; with --intervention "
                                  "proportional give --strength and --threshold instead.")
        elif self.strength or self.threshold or self.reach:
            flag = "--strength" if self.strength else "--threshold" if self.threshold else "--reach"
            raise ConfigError(f"{flag} applies to --intervention proportional; add --intervention proportional, or "
                              "drop it.")

    def _validate_stable(self) -> None:
        if self.stable is None:
            return
        if not (math.isfinite(self.stable) and 0 < self.stable <= 1):
            raise ConfigError(f"--stable {self.stable}: the share of resamples a unit must be selected in lies in "
                              "(0, 1], e.g. 0.6.")
        if self.stability < 2:
            raise ConfigError(f"--stable selects on --stability resamples, and {self.stability} is too few to "
                              "estimate a share: give --stability 20 or more.")
        if self.unit != "neuron" or self.method not in ("lrp", "gradient", "all"):
            raise ConfigError(f"--stable needs per-sample relevance of neurons, which --method {self.method} "
                              f"--unit {self.unit} does not keep: use --unit neuron with --method lrp or gradient.")

    def methods(self) -> list[str]:
        """The compared methods, the primary first; "all" leaves out those that cannot rank this unit kind."""
        if self.method != "all":
            return [self.method]
        return compared(self.unit)


GRANULARITIES = ("rowwise", "global")
# Names as in safety_prune.attribution (EXPLAIN) and lrp.composite (VARIANTS); kept here so that --help needs no torch.
COMPRESS_TARGETS = ("actual", "predicted", "logprob")
AGGREGATIONS = ("sample_abs", "signed", "token_l1", "token_l2")
LRP_VARIANTS = ("attnlrp", "cp")
CALIBRATIONS = ("windows", "documents")


@dataclass
class CompressOptions(SuiteOptions):
    batch_size: int = option(4, "calibration samples per attribution pass (default 4: four 512-token windows "
                             "were faster than eight and need about half the memory)")
    sparsity: float = option(0.5, "share of block weights to zero (default 0.5)")
    methods: tuple[str, ...] = option(
        ("lrp", "wanda", "magnitude"), f"comma-separated: {', '.join(COMPRESS_METHODS)} (compared side by side)",
        flag="--method", parse=name_list)
    granularity: str = option("rowwise", "rank weights within each row (as Wanda) or over the whole model",
                              choices=GRANULARITIES)
    save_model: str | None = option(None, "write the first method's pruned model here")
    calibration: str = option(
        "windows", "what every data-driven method calibrates on: windows cut from the general text joined end to "
        "end (windows, default), or one sample per general reference document, cut to --max-tokens (documents)",
        choices=CALIBRATIONS)
    window: int | None = option(
        None, "tokens per calibration window (default 512, or the model's max positions if fewer; the paper uses "
        "2048)", metavar="TOKENS")
    n_windows: int | None = option(
        None, "how many calibration windows (default 32, or as many as the general calibration text holds)")
    target: str = option(
        "actual", "what lrp and gradient explain at every position: the logit of the actual next token (actual), "
        "of the model's top token (predicted), or the actual token's log-probability (logprob)",
        choices=COMPRESS_TARGETS)
    aggregation: str = option(
        "token_l2", "how lrp and gradient reduce a weight's relevance over tokens: per token, sqrt of the sum of "
        "R_t^2 (token_l2, default) or sum of |R_t| (token_l1); |sum over a sample| summed over samples "
        "(sample_abs), or |sum over everything| (signed)", choices=AGGREGATIONS)
    variant: str = option("attnlrp", "LRP rules for attention: attnlrp, or cp (q and k detached: their weights "
                          "get relevance 0 and are pruned in index order)", choices=LRP_VARIANTS)

    def validate(self) -> None:
        super().validate()
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"--sparsity must lie strictly between 0 and 1, got {self.sparsity}.")
        if self.window is not None and self.window < 8:
            raise ConfigError(f"--window must be at least 8 tokens, got {self.window}.")
        if self.n_windows is not None and self.n_windows < 1:
            raise ConfigError(f"--n-windows must be at least 1, got {self.n_windows}.")
        if self.calibration == "documents" and (self.window, self.n_windows) != (None, None):
            raise ConfigError("--window and --n-windows cut windows; they do not apply to --calibration documents "
                              "(which uses --max-tokens). Drop them, or use --calibration windows.")
        check_choices(("--calibration", self.calibration, CALIBRATIONS), ("--target", self.target, COMPRESS_TARGETS),
                      ("--aggregation", self.aggregation, AGGREGATIONS),
                      ("--variant", self.variant, LRP_VARIANTS))
        bad = [m for m in self.methods if m not in COMPRESS_METHODS]
        if bad or not self.methods:
            raise ConfigError(f"--method {','.join(bad) or '(none)'} is not a compression method. Choose from: "
                              f"{', '.join(COMPRESS_METHODS)}.")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"--granularity {self.granularity} is unknown. "
                              f"Choose one of: {', '.join(GRANULARITIES)}.")


TASKS = ("ioi",)
RELEVANCE = ("signed", "abs", "positive")
NORMALISE = ("none", "sample")
SCHEDULES = ("oneshot", "iterative")


@dataclass
class CircuitOptions(RunOptions):
    task: str = option("ioi", f"task ({', '.join(TASKS)})")
    unit: str = option("head", "unit kind the circuit is made of", choices=("neuron", "head"))
    methods: tuple[str, ...] = option(
        ("lrp", "gradient", "activation", "random"),
        f"comma-separated: {', '.join(CIRCUIT_METHODS)}, or all; the first defines the circuit", flag="--method",
        parse=lambda text: CIRCUIT_METHODS if text.strip() == "all" else name_list(text))
    threshold: float = option(0.9, "keep accuracy >= this share of the original")
    target: str = option("logit_diff", "what attribution explains: the task metric logit(IO) - logit(S) "
                         "(logit_diff) or the logit of the correct name alone (io)", choices=("logit_diff", "io"))
    n_reference: int = option(64, "IOI prompts that attribution explains")
    n_eval: int = option(256, "held-out IOI prompts that accuracy is measured on")
    relevance: str = option(
        "signed", "how lrp and gradient rank units: the signed mean relevance (signed, default: a unit that works "
        "against the task, e.g. a negative name mover, ranks lowest and is pruned first; on IOI it kept 0.60 of "
        "the heads prunable against 0.40 with abs, benchmarks/tasks.py), the mean of each prompt's |R| (abs), or "
        "the mean of each prompt's positive part max(R, 0) (positive: what removing the unit costs the prompts it "
        "helps; the best recipe for gradient)",
        choices=RELEVANCE)
    normalise: str = option(
        "none", "sample: divide each reference prompt's unit relevance by that prompt's total |R| before "
        "averaging, so prompts with large logit differences do not dominate (one attribution pass per prompt); "
        "none: plain mean", choices=NORMALISE)
    schedule: str = option(
        "oneshot", "oneshot: rank once and prune along the grid; iterative: re-attribute the pruned model after "
        "each grid step and prune the least relevant survivors (one attribution per step)", choices=SCHEDULES)

    def validate(self) -> None:
        super().validate()
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task} is unknown. Available tasks: {', '.join(TASKS)}.")
        check_choices(("--relevance", self.relevance, RELEVANCE), ("--normalise", self.normalise, NORMALISE),
                      ("--schedule", self.schedule, SCHEDULES))
        if self.unit not in ("neuron", "head"):
            raise ConfigError(f"--unit {self.unit}: circuits are found over neuron or head units.")
        bad = [m for m in self.methods if m not in CIRCUIT_METHODS]
        if bad or not self.methods:
            raise ConfigError(f"--method {','.join(bad) or '(none)'}: choose from {', '.join(CIRCUIT_METHODS)}.")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold must lie in (0, 1], got {self.threshold}.")
        for flag, n in (("--n-reference", self.n_reference), ("--n-eval", self.n_eval)):
            if n < 1:
                raise ConfigError(f"{flag} must be at least 1 prompt, got {n}.")
