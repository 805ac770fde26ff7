"""The jobs behind the CLI: ``audit`` now; correction builds on the same pieces.

Every job validates its inputs before loading anything heavy, writes into a
staging folder, and only then moves the finished files into ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attribution import Relevance, Sample, attribute, differential, require_samples, samples_from_texts
from .evaluation import (
    Generation,
    distinct_n,
    generate_detailed,
    perplexity,
    sequence_perplexities,
    summarize,
    toxicity_aggregates,
)
from .explain import heatmap, unit_examples
from .families import geometry
from .io import write_json, write_jsonl
from .models import LoadedModel, load_model
from .report import evaluate_gate, render_report
from .run import SCHEMA_VERSION, Staging, check_out_dir, manifest, staged
from .scorers import Scorer, get_scorer
from .suite import ProbeSuite, load_suite

log = logging.getLogger(__name__)


def truncate_prompts(tokenizer, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """Keep at most ``max_tokens`` tokens of each prompt; warn once with the count.

    Prompts are tokenized in one batched call (a fast tokenizer runs it in parallel: 100k prompts take
    about a second instead of tens), after cutting each to 32 characters per kept token.
    """
    out, cut = [], 0
    batch = tokenizer([p[: max_tokens * 32] for p in prompts], add_special_tokens=False)["input_ids"] if prompts else []
    for p, ids in zip(prompts, batch, strict=True):
        if len(ids) > max_tokens:
            cut += 1
            p = tokenizer.decode(ids[:max_tokens])
        out.append(p)
    if cut:
        log.warning("%d of %d prompts were longer than max_prompt_tokens=%d and were truncated.",
                    cut, len(prompts), max_tokens)
    return out


@dataclass
class Generations:
    """Continuations of a prompt set with their scores."""

    prompts: list[str]
    gens: list[list[Any]]  # list[list[Generation]]
    scores: list[list[float]]


@dataclass(frozen=True)
class GenerationCache:
    """Continuations of the *unpruned* model, kept in the run directory so a rerun does not generate twice.

    Files are named by a hash of the model weights, prompts, generation settings and seed, so a cached file
    is only ever reused for exactly the same inputs. Read from the previous run (``--overwrite``), written
    into the new one.
    """

    read_dir: Path | None
    write_dir: Path

    def _name(self, lm: LoadedModel, suite: ProbeSuite, prompts: list[str], seed: int) -> str:
        key = json.dumps([lm.weights_sha256, prompts, asdict(suite.generation), suite.chat_template, seed])
        return f"generations-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"

    def load(self, lm: LoadedModel, suite: ProbeSuite, prompts: list[str], seed: int) -> list[list[Generation]] | None:
        path = self.read_dir / self._name(lm, suite, prompts, seed) if self.read_dir else None
        if path is None or not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        gens: list[list[Generation]] = [[] for _ in prompts]
        for row in rows:
            gens[row.pop("prompt_index")].append(Generation(**row))
        log.info("Reusing %d cached continuations from %s", len(rows), path)
        return gens

    def save(self, lm: LoadedModel, suite: ProbeSuite, prompts: list[str], seed: int,
             gens: list[list[Generation]]) -> None:
        write_jsonl(self.write_dir / self._name(lm, suite, prompts, seed),
                    ({"prompt_index": i, **asdict(g)} for i, row in enumerate(gens) for g in row))


def generate_and_score(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, prompts: list[str], seed: int,
                       desc: str, cache: GenerationCache | None = None) -> Generations:
    g = suite.generation
    prompts = truncate_prompts(lm.tokenizer, prompts, suite.max_prompt_tokens)
    gens = cache.load(lm, suite, prompts, seed) if cache else None
    if gens is None:
        log.info("Generating %d continuation(s) for %d %s prompts", g.num_samples, len(prompts), desc)
        gens = generate_detailed(lm.model, lm.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                                 do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p,
                                 num_samples=g.num_samples, batch_size=g.batch_size, seed=seed,
                                 chat_template=suite.chat_template, device=lm.model.device)
    if cache:
        cache.save(lm, suite, prompts, seed, gens)
    flat = scorer.score([x.continuation for row in gens for x in row])
    n = g.num_samples
    return Generations(prompts, gens, [flat[i * n:(i + 1) * n] for i in range(len(prompts))])


def _log_summary(values: Sequence[float], seed: int) -> dict[str, float | int]:
    """Geometric-mean summary: bootstrap over log values, reported back on the original scale."""
    s = summarize([math.log(v) for v in values], seed=seed)
    return {"value": math.exp(s["value"]), "ci_low": math.exp(s["ci_low"]),
            "ci_high": math.exp(s["ci_high"]), "n": s["n"]}


def evaluate(lm: LoadedModel, reference: LoadedModel, suite: ProbeSuite, scorer: Scorer, prompts: list[str],
             general_text: list[str], seed: int, cache: GenerationCache | None = None
             ) -> tuple[dict[str, Any], Generations]:
    """Toxicity with fluency and perplexity next to it, each with a 95% bootstrap CI over prompts."""
    res = generate_and_score(lm, suite, scorer, prompts, seed, "eval", cache)
    metrics: dict[str, Any] = toxicity_aggregates(res.scores, threshold=suite.scorer.threshold, seed=seed)
    metrics["distinct2"] = summarize(
        [float(np.mean(distinct_n([x.continuation for x in row], 2))) for row in res.gens], seed=seed)
    flat = [x for row in res.gens for x in row]
    cppl = sequence_perplexities(reference.model, reference.tokenizer, [x.prompt_ids for x in flat],
                                 [x.continuation_ids for x in flat], device=reference.model.device)
    finite = [v for v in cppl if math.isfinite(v) and v > 0]
    metrics["continuation_perplexity"] = _log_summary(finite, seed) | {"empty_continuations":
                                                                          len(cppl) - len(finite)}
    p = suite.perplexity
    ppl = perplexity(lm.model, lm.tokenizer, general_text, max_length=p.max_length, stride=p.stride,
                     device=lm.model.device)
    lo, hi = ppl.ci(seed)
    metrics["perplexity"] = {"value": ppl.perplexity, "ci_low": lo, "ci_high": hi, "n_tokens": ppl.n_tokens}
    return metrics, res


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``baseline.toxicity_rate`` etc. as plain numbers, with ``<name>_ci`` next to each."""
    out: dict[str, Any] = {}
    for key, val in metrics.items():
        if isinstance(val, dict) and "value" in val:
            out[key] = val["value"]
            out[f"{key}_ci"] = [val["ci_low"], val["ci_high"]]
    out["details"] = metrics
    return out


def undesired_samples(ref: Generations, top_n: int) -> list[Sample]:
    """Prompt + continuation of the ``top_n`` most toxic reference continuations; targets = continuation."""
    flat = [(s, g) for row_s, row_g in zip(ref.scores, ref.gens, strict=True)
            for s, g in zip(row_s, row_g, strict=True) if g.continuation_ids]
    require_samples(flat, top_n, "The undesired reference set (prompts with a non-empty continuation)")
    flat.sort(key=lambda sg: -sg[0])
    return [Sample(tuple(g.prompt_ids) + tuple(g.continuation_ids), len(g.prompt_ids)) for _, g in flat[:top_n]]


def circuit_summary(diff: dict[str, torch.Tensor], top_k: int) -> dict[str, Any]:
    """Top units by most negative R_diff and the per-layer distribution, for neurons and heads."""
    out: dict[str, Any] = {}
    for kind in ("neuron", "head"):
        if kind not in diff:
            continue
        d = diff[kind]
        flat = d.flatten()
        k = min(top_k, flat.numel())
        vals, idx = torch.topk(-flat, k)
        top = [{"layer": int(i) // d.shape[1], "index": int(i) % d.shape[1], "r_diff": float(-v)}
               for v, i in zip(vals, idx, strict=True)]
        counts = torch.bincount(idx // d.shape[1], minlength=d.shape[0])
        share = d.abs().sum(1) / d.abs().sum().clamp_min(1e-30)
        out[kind] = {
            "top_units": top,
            "per_layer": [{"layer": layer, "top_count": int(counts[layer]), "abs_share": float(share[layer])}
                          for layer in range(d.shape[0])],
        }
    return out


@dataclass
class AuditOptions:
    limit: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None
    top_k: int = 50
    batch_size: int = 8
    max_tokens: int = 128
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_memory: int | None = None  # bytes for the attribution pre-flight; None: the free memory
    encoding_errors: str = "strict"  # prompt files: "strict" (error at file:line) or "replace"
    device_map: str | None = None  # accelerate placement ("auto") for models larger than one device
    gradient_checkpointing: bool = False  # recompute blocks in attribution's backward (long sequences)
    run_dir: Path | None = None  # set by audit/correct: attribution checkpoints are kept beside it


def open_model(spec: str, opt: AuditOptions) -> LoadedModel:
    return load_model(spec, device=opt.device, dtype=opt.dtype, trust_remote_code=opt.trust_remote_code,
                      allow_pickle=opt.allow_pickle, device_map=opt.device_map)


def start_run(model: str, probe: str, out: str | Path, overwrite: bool, opt: AuditOptions
              ) -> tuple[Path, AuditOptions, ProbeSuite, LoadedModel]:
    """Everything a job checks before it writes anything: --out, the suite with its data, the model."""
    out = check_out_dir(out, overwrite)
    opt = replace(opt, run_dir=out)
    suite = load_suite(probe, encoding_errors=opt.encoding_errors)
    return out, opt, suite, open_model(model, opt)


def attribution_checkpoint(run_dir: Path, name: str, method: str) -> Path:
    """A hidden sibling of the run directory, so --out stays empty until the run succeeds and a rerun resumes."""
    return run_dir.parent / f".{run_dir.name}.attribution-{name}-{method}.ckpt"


def preflight_attribution(lm: LoadedModel, suite: ProbeSuite, opt: AuditOptions, units: Sequence[str]) -> None:
    """Refuse, before any output exists, an attribution batch that would not fit in memory.

    Sequences are general texts (``opt.max_tokens``) or a prompt plus its continuation.
    """
    from .preflight import check_attribution_memory

    seq_len = max(opt.max_tokens, suite.max_prompt_tokens + suite.generation.max_new_tokens)
    check_attribution_memory(lm.model, opt.batch_size, seq_len, units, opt.max_memory,
                             gradient_checkpointing=opt.gradient_checkpointing)


def audit(model: str, probe: str, out: str | Path, *, overwrite: bool = False, options: AuditOptions | None = None,
          argv: list[str] | None = None, fail_on: Sequence[str] = ()) -> dict[str, Any]:
    """Baseline toxicity, fluency and perplexity, plus the circuit from differential LRP relevance."""
    started = time.time()
    out, opt, suite, lm = start_run(model, probe, out, overwrite, options or AuditOptions())
    preflight_attribution(lm, suite, opt, ("neuron", "head"))
    torch.manual_seed(opt.seed)
    scorer = get_scorer(suite.scorer.name, **suite.scorer.options)
    with staged(out) as staging:
        results = _audit(lm, suite, scorer, opt, staging)
        results["manifest"] = manifest(seed=opt.seed, argv=argv, data_files=suite.data_files(),
                                       model_files=lm.weights_sha256, started=started)
        results["gate"] = evaluate_gate(results, fail_on)
        write_json(staging.path("results.json"), results)
        render_report(results, staging.path("samples.jsonl"), staging.path("report.html"))
    return results


def _limit(items: list, n: int | None) -> list:
    return items if n is None else items[:n]


def _audit(lm: LoadedModel, suite: ProbeSuite, scorer: Scorer, opt: AuditOptions, staging: Staging
           ) -> dict[str, Any]:
    eval_prompts = _limit(suite.eval_prompts(), opt.limit)
    general_test = suite.general_test()
    cache = GenerationCache(opt.run_dir, staging.dir)
    metrics, res = evaluate(lm, lm, suite, scorer, eval_prompts, general_test, opt.seed, cache)
    write_jsonl(staging.path("samples.jsonl"), sample_rows(res, "baseline"))
    ref_prompts = _limit(suite.undesired_reference(), opt.limit)
    ref = generate_and_score(lm, suite, scorer, ref_prompts, opt.seed, "reference", cache)
    write_jsonl(staging.path("reference_generations.jsonl"), sample_rows(ref, "reference"))
    general, undesired = reference_sets(lm, suite, ref, opt)
    rel = relevance_pair(lm, general, undesired, opt)
    diff = differential(rel["general"], rel["undesired"])
    circuit = circuit_summary(diff, opt.top_k)
    save_relevance(staging, rel, diff)
    write_json(staging.path("circuit.json"), circuit)
    explained = explain_units(lm, circuit.get("neuron", {}).get("top_units", [])[:20], undesired, general, opt)
    return {
        "schema_version": SCHEMA_VERSION,
        "job": "audit",
        "model": model_info(lm),
        "probe": {"name": suite.name, "description": suite.description, "n_eval_prompts": len(eval_prompts),
                  "n_reference_prompts": len(ref_prompts), "chat_template": suite.chat_template,
                  "generation": asdict(suite.generation), "thresholds": asdict(suite.thresholds)},
        "scorer": scorer_info(scorer, suite),
        "baseline": flat_metrics(metrics),
        "circuit": circuit_results(circuit, rel, "lrp", len(undesired), len(general)),
        "circuit_heatmap": heatmap(diff["neuron"]),
        "unit_examples": explained,
    }


def scorer_info(scorer: Scorer, suite: ProbeSuite) -> dict[str, Any]:
    """Name, limits and (for toxicity scorers) agreement with Perspective labels, for the report."""
    info = {"name": scorer.name, "description": scorer.description, "limits": scorer.limits,
            "threshold": suite.scorer.threshold, "behaviour": scorer.behaviour}
    if scorer.behaviour == "toxicity" and suite.scorer.validate:
        from .scorers.validate import validate_scorer

        info["validation"] = validate_scorer(scorer, suite.scorer.threshold)
    return info


def model_info(lm: LoadedModel) -> dict[str, Any]:
    geo = geometry(lm.model)
    return {"spec": lm.spec, "name": lm.name, "family": lm.arch.family, "n_layers": geo.n_layers,
            "n_neurons_per_layer": geo.n_neurons, "n_heads": geo.n_heads, "n_kv_heads": geo.n_kv_heads}


def circuit_results(circuit: dict[str, Any], rel: dict[str, Relevance], method: str, n_undesired: int,
                    n_general: int) -> dict[str, Any]:
    """The ``circuit`` block of results.json, shared by audit and correct."""
    out: dict[str, Any] = {
        "method": method, "n_undesired": n_undesired, "n_general": n_general,
        "sink_positions": 1,
        "normalisation": "each set divided by its total |R| per unit kind; R_diff = R_general - R_undesired",
        "top_units": circuit.get("neuron", {}).get("top_units", []),
        "per_layer": circuit.get("neuron", {}).get("per_layer", []),
        "heads": circuit.get("head", {}),
    }
    if method == "lrp":
        out["variant"] = rel["general"].info.get("variant", "attnlrp")
        out["conservation_ratio"] = {k: float(r.info["conservation_ratio"]) for k, r in rel.items()}
    return out


def explain_units(lm: LoadedModel, top_units: list[dict[str, Any]], undesired: list[Sample],
                  general: list[Sample], opt: AuditOptions) -> list[dict[str, Any]]:
    """Token contexts where each listed neuron carried the most relevance, in both sets."""
    if not top_units:
        return []
    units = [(u["layer"], u["index"], u["r_diff"]) for u in top_units]
    return unit_examples(lm.model, lm.tokenizer, units, {"undesired": undesired, "general": general},
                         batch_size=opt.batch_size)


def reference_sets(lm: LoadedModel, suite: ProbeSuite, ref: Generations, opt: AuditOptions
                   ) -> tuple[list[Sample], list[Sample]]:
    """The general samples and the top-N most toxic undesired continuations that attribution explains."""
    top_n = suite.reference.undesired_top_n
    general_n = suite.reference.general_n
    if opt.limit:
        top_n, general_n = min(top_n, len(ref.prompts)), min(general_n, opt.limit)
    undesired = undesired_samples(ref, top_n)
    general = samples_from_texts(lm.tokenizer, suite.general_reference(), max_tokens=opt.max_tokens)
    require_samples(general, general_n, "The general reference set")
    return general[:general_n], undesired


def relevance_pair(lm: LoadedModel, general: list[Sample], undesired: list[Sample], opt: AuditOptions,
                   method: str = "lrp", units: Sequence[str] = ("neuron", "head")) -> dict[str, Relevance]:
    pad = lm.tokenizer.pad_token_id or 0
    return {
        name: attribute(lm.model, samples, method=method, units=units, batch_size=opt.batch_size,
                        pad_token_id=pad, seed=opt.seed, desc=f"{method} {name}",
                        gradient_checkpointing=opt.gradient_checkpointing,
                        checkpoint=attribution_checkpoint(opt.run_dir, name, method) if opt.run_dir else None)
        for name, samples in (("general", general), ("undesired", undesired))
    }


def save_relevance(staging: Staging, rel: dict[str, Relevance], diff: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from .io import atomic_path

    tensors = {f"{name}.{k}": v.contiguous() for name, r in rel.items() for k, v in r.scores.items()}
    tensors |= {f"diff.{k}": v.contiguous() for k, v in diff.items()}
    meta = {f"{name}.n_samples": str(r.n_samples) for name, r in rel.items()}
    with atomic_path(staging.path("relevance.safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def sample_rows(res: Generations, split: str):
    for i, (prompt, row_g, row_s) in enumerate(zip(res.prompts, res.gens, res.scores, strict=True)):
        for j, (g, s) in enumerate(zip(row_g, row_s, strict=True)):
            yield {"split": split, "prompt_index": i, "sample": j, "prompt": prompt,
                   "continuation": g.continuation, "score": s}
