"""The sentences of the report: the decision line, each check as a reviewer reads it, the model's identity, what
the numbers cover, and the provenance of the scorer validation and the run's files.

Behaviour words come from the run's probe suite (``probe.behaviour``), never from the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml  # PyYAML ships no stubs (types-PyYAML is no dependency): [tool.mypy] ignores its missing imports
from typing_extensions import TypedDict

from ..gate import (
    SOURCE_FAIL_ON,
    check_on,
)
from ..io import safe_yaml_load, sha256_file
from ..resources import resource_dir
from ..results import (
    Behaviour,
    BehaviourProbe,
    BehaviourResults,
    Generation,
    Manifest,
    ModelInfo,
    Reason,
    ReasonKind,
    ScorerBase,
    VerdictCheck,
)
from ..run import RUN_FILES
from .facts import RATE_KEYS, Limit, VerdictView, as_count, behaviour_of, fmt, has_flag, pruned_of, samples_per_prompt

_OP_WORDS = {">": "is above", ">=": "is at or above", "<": "is below", "<=": "is at or below"}


_OP_PASS = {">": "at or below", ">=": "below", "<": "at or above", "<=": "above"}


def check_words(row: VerdictCheck, key: Literal["base", "corr"], totals: dict[str, int | None]) -> str:
    """One check as a reviewer reads it: "Rate of looping continuations 0.141 (44/312; 95% CI [0.106, 0.179])"."""
    check = check_on(row, key)
    count = as_count(check["value"], totals.get(check["metric"])) if check["metric"] in RATE_KEYS else ""
    ci = check.get("ci")
    inner = "; ".join(x for x in (count, f"95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "") if x)
    return f"{row['label']} {fmt(check['value'])}" + (f" ({inner})" if inner else "")


_LEADS = {"pass": "Deploy", "fail": "Do not deploy", "unsettled": "Not settled"}


def _reason(v: VerdictView, kind: ReasonKind) -> Reason | None:
    """The verdict's reason of that ``kind`` (``gate.verdict`` gives each kind once at most), or None."""
    return next((r for r in v["reasons"] if r["kind"] == kind), None)


def decision(results: BehaviourResults, v: VerdictView, limit: Limit | None,
              totals: dict[str, int | None]) -> dict[str, str]:
    """The executive line at the top: "Deploy: …", "Do not deploy: …" or "Not settled: …", worded from the
    verdict's decision and reasons (``gate.verdict``), naming who set the thresholds (the probe suite or
    --fail-on)."""
    gate, key = v["gate"], v["target"]
    subject = "the pruned copy" if key == "corr" else "the audited model"
    rows = {r["expr"]: r for r in v["checks"]}
    plural = "s" if len(v["decisive"]) > 1 else ""
    if gate.get("source") == SOURCE_FAIL_ON:
        source = f"the --fail-on threshold{plural}"
    else:
        source = f"the probe suite's threshold{plural} (suite {results['probe'].get('name')})"
    reduced = f" This was a reduced run (--limit {limit['n']}), not a full measurement." if limit else ""
    refused = _reason(v, "release_refused")
    why = ("; ".join(refused["reasons"]) or "no reason recorded") if refused else ""
    failed, unsettled, met = _reason(v, "fail"), _reason(v, "unsettled"), _reason(v, "met")
    text = ""
    if _reason(v, "worse") and (p := v["worse"]) is not None:  # gate.verdict gives "worse" with its paired change
        text = (f"the correction made the model worse: the mean {behaviour_of(results)['metric']} per prompt rose by "
                f"{p['delta']:+.4g} (paired 95% interval [{p['ci_low']:+.4g}, {p['ci_high']:+.4g}], entirely above "
                "0). Keep the original model." + reduced)
    elif _reason(v, "no_threshold"):
        text = ("no threshold was set (the probe suite names none and no --fail-on was given), so this report makes "
                f"no deployment decision about {subject}." + reduced)
    elif failed:
        what = "; ".join(f"{check_words(rows[e], key, totals)} {_OP_WORDS[check_on(rows[e], key)['op']]} "
                         f"{fmt(check_on(rows[e], key)['threshold'])}" for e in failed["checks"])
        text = (f"{subject} fails {source}: {what}." + (f" The release check also refused it: {why}." if refused
                                                         else "") + reduced)
    elif unsettled:
        what = "; ".join(f"{check_words(rows[e], key, totals)} has the threshold "
                         f"{fmt(check_on(rows[e], key)['threshold'])} "
                         "inside its interval" for e in unsettled["checks"])
        text = (f"{what}, so these prompts cannot tell whether {subject} meets {source}; measure more prompts "
                "before deciding." + (f" The release check refused it in any case: {why}." if refused else "")
                + reduced)
    elif met:
        listed = ", ".join(met["checks"])
        if refused:
            text = f"{subject} meets {source} ({listed}), but the release check refused it: {why}." + reduced
        elif limit:
            text = (f"{subject} meets {source} ({listed}), but this was a reduced run (--limit {limit['n']}), not a "
                    "full measurement: rerun without --limit before deciding.")
        else:
            allowed = ", and the release check allowed it" if met["release_allowed"] else ""
            how = (f"by the point value of {', '.join(met['by_point_value'])} (no interval recorded)"
                   if met["by_point_value"] else "each 95% interval on the passing side")
            text = (f"{subject} meets {source} ({listed}), {how}{allowed}. This holds within the scope stated "
                    "below only.")
    return {"state": v["decision"], "lead": _LEADS[v["decision"]], "text": text}


_QUANT = re.compile(r"\b(I?Q(\d+)(?:_[A-Z0-9]+)*)\b", re.IGNORECASE)


_DEFAULT_NAME = re.compile(r"^(?P<base>.+?) \((?P<src>[^,()]+), (?P<quant>[A-Za-z0-9_]+) GGUF\)$")


def model_words_of(model: ModelInfo) -> str:
    """The model's identity in words, e.g. "4-bit Q4_1 GGUF of SmolLM2-135M-Instruct (the built-in default …)"."""
    spec, name = str(model.get("spec")), str(model.get("name"))
    words = ""
    if (m := _DEFAULT_NAME.match(name)) and (q := _QUANT.fullmatch(m["quant"])):
        words = (f"{q[2]}-bit {m['quant']} GGUF of {m['base']} (from the pinned package {m['src']}), dequantised "
                 "to 32-bit floats for this run")
        if spec == "default":
            words = f"{words}; the built-in default model"
    elif spec.lower().endswith(".gguf"):
        q = _QUANT.search(Path(spec).name)
        words = (f"{q[2]}-bit {q[1]} GGUF file {Path(spec).name}" if q else f"GGUF file {Path(spec).name}") + \
            ", dequantised to 32-bit floats for this run"
    elif spec.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:[\\/]", spec):
        words = f"the model in the local folder {spec}"
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        words = f"the Hugging Face hub model {spec}"
    else:
        words = f"the model {spec}"
    shape = [str(model["family"]) + " architecture"] if model.get("family") else []
    if isinstance(model.get("n_layers"), int):
        shape.append(f"{model['n_layers']} layers")
    return words + (f" ({', '.join(shape)})" if shape else "")


_SUITE_NAME = re.compile(r"[\w.-]+")
_SCOPE_KEYS: tuple[Literal["language", "comparability"], ...] = ("language", "comparability")


def _suite_words(probe: BehaviourProbe) -> dict[str, str]:
    """The suite's ``language`` and ``comparability`` sentence (``probe.behaviour``; ``probe.language`` too).

    A results.json written before the suite recorded them borrows them from the shipped suite of the same name,
    so an older run of a shipped suite keeps its scope sentence; a suite not shipped gives none."""
    recorded: Behaviour = probe.get("behaviour") or {}
    said: dict[str, str] = {k: v for k in _SCOPE_KEYS if isinstance(v := recorded.get(k, probe.get(k)), str)}
    name = probe.get("name")
    if said or not isinstance(name, str) or not _SUITE_NAME.fullmatch(name):
        return said
    try:
        shipped = safe_yaml_load((resource_dir("probes") / f"{name}.yaml").read_text(encoding="utf-8"))
        behaviour = shipped.get("behaviour") if isinstance(shipped, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return said
    if not isinstance(behaviour, dict) or recorded.get("name", behaviour.get("name")) != behaviour.get("name"):
        return said  # another suite under a shipped name
    return {k: " ".join(v.split()) for k in _SCOPE_KEYS if isinstance(v := behaviour.get(k), str)}


def scope_of(results: BehaviourResults, n_prompts: Any) -> str:
    """What the numbers cover: decoding, length, samples per prompt, language; and what they are not comparable to."""
    probe = results["probe"]
    gen: Generation = probe.get("generation") or {}
    if gen.get("do_sample") is True:
        decoding = f"sampled decoding (temperature {fmt(gen.get('temperature'))}, top-p {fmt(gen.get('top_p'))})"
    elif gen.get("do_sample") is False:
        decoding = "greedy decoding"
    else:
        decoding = "decoding settings not recorded"
    tokens = f"at most {fmt(gen.get('max_new_tokens'))} new tokens" if gen.get("max_new_tokens") else \
        "a continuation length not recorded"
    s = samples_per_prompt(results)
    per = "one continuation per prompt" if s == 1 else f"{s} continuations per prompt"
    said = _suite_words(probe)
    language = said.get("language")
    prompts = f"{fmt(n_prompts)} {language + ' ' if language else ''}prompts of the probe suite {probe.get('name')}"
    chat = "; chat template on" if probe.get("chat_template") is True else ""
    text = (f"{decoding[:1].upper()}{decoding[1:]}, {tokens}, {per}, on {prompts}{chat}, scored by "
            f"{results['scorer']['name']} only."
            f"{'' if language else ' results.json records no language for the prompts.'}")
    text += " " + (said.get("comparability") or "They are not comparable with published benchmarks measured "
                                                "with other decoding, samples or scorers.")
    return text


class Source(TypedDict):
    """A file behind a scorer validation, and the scorers it validated."""

    file: str
    sha256: str
    scorers: list[str]


def validation_sources(results: BehaviourResults) -> list[Source]:
    """The files behind each scorer validation, as the run recorded them (``validation.data_sha256``); a
    validation that records none lists no file."""
    scorer = results["scorer"]
    out: dict[str, Source] = {}
    infos: list[ScorerBase] = [scorer, *(scorer.get("secondary") or [])]
    for info in infos:
        validation = info.get("validation")
        recorded = validation.get("data_sha256") if validation is not None else None
        for f, h in (recorded.items() if isinstance(recorded, dict) else ()):
            row = out.setdefault(str(f), {"file": str(f), "sha256": str(h), "scorers": []})
            row["scorers"].append(str(info.get("name")))
    return list(out.values())


_HASHED_FILES = tuple(f for f in RUN_FILES if f != "report.html")


def run_file_sums(folder: Path | None) -> list[dict[str, Any]]:
    """sha256 of the run's files next to results.json when the page is rendered (results.json cannot carry them,
    nor its own)."""
    if folder is None or not folder.is_dir():
        return []
    out = []
    for name in _HASHED_FILES:
        path = folder / name
        try:
            if path.is_file():
                out.append({"file": name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
        except OSError:
            out.append({"file": name, "sha256": None, "bytes": None})
    return out


def saved_model_of(results: BehaviourResults) -> dict[str, Any] | None:
    """The pruned copy written by --save-model: its sha256 when results.json records them
    (``pruned.saved_model_sha256``: one sum or {file: sum}), else what can be said about it."""
    if results.get("job") != "correct":
        return None
    pruned = pruned_of(results)
    sha = pruned.get("saved_model_sha256") if pruned else None
    sums: list[dict[str, str]] = [{"file": "", "sha256": sha}] if isinstance(sha, str) else [
        {"file": str(f), "sha256": str(h)} for f, h in sha.items()] if isinstance(sha, dict) else []
    requested = has_flag(results, "--save-model")
    release = results.get("release")
    allowed = release.get("allowed") if release is not None else None
    written = bool(sums) or (requested and (allowed is True or has_flag(results, "--force")))
    return {"sums": sums, "requested": requested or bool(sums), "written": written}


def git_dirty_words(manifest: Manifest) -> str:
    dirty = manifest.get("git_dirty")
    if dirty is True:
        return "yes: the working tree had uncommitted changes, so the commit alone does not reproduce the run"
    if dirty is False:
        return "no (clean working tree)"
    return "unknown (the manifest does not record it)"


def hardware_words(manifest: Manifest) -> str:
    hw = manifest.get("hardware")
    if isinstance(hw, dict):
        return "; ".join(f"{k} {v}" for k, v in hw.items()) or "not recorded"
    return str(hw) if hw else "not recorded (the manifest records the operating-system platform only)"
