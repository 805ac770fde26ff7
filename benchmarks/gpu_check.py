"""GPU check: correctness on the device, bf16 against fp32 relevance, and cost at 2048 tokens.

1. ``checks``: on the device, per family (tiny models built from configs, float64 where the device has it):
   CP-LRP conservation (input relevance / explained logits = 1), transparency (logits inside the LRP
   composite equal the plain ones; the model is clean and bit-identical afterwards), a padded batch equals
   single samples, sdpa gives eager's relevance, and gradient checkpointing changes nothing.
2. ``precision``: a TinyLlama-sized Llama (hidden 2048, 22 layers, 32 heads, 4 kv heads, intermediate
   5632, vocab 32000; random weights) attributed in float32 and in bfloat16 (same weights): Spearman of the
   neuron and head scores and the overlap of the top-100 neurons by |R|.
   The same for weight relevance, plus the agreement of the half-precision ``grad_W`` matmul (bf16 factors,
   float32 output) with the float32 matmul of the upcast factors.
3. ``timing``: one 2048-token sequence through that model in bf16: LRP attribution with neuron and head units
   (``lrp_neuron_head``) and with weight units too (``lrp``), the plain forward+backward floor (``.grad`` for
   every block weight), Wanda (all units), and LRP with gradient checkpointing. Median of 3 after a warm-up;
   tokens/s, peak memory (``torch.cuda.max_memory_allocated`` over the allocation before the call) and ratios
   to the plain floor. ``--before FILE`` (an earlier ``safety_prune/attribution.py``) adds its LRP and Wanda
   rows (``*_before``), measured in the same process.
4. ``profile``: ``torch.profiler`` over one LRP call (all units) and one Wanda call, and the same for
   ``--before``: wall time, device kernel time, device-to-host copies (count, bytes, time), host syncs
   (``aten::_local_scalar_dense``) and the top operators by self time. Also written to ``gpu_profile.json``
   beside ``--out``.
5. ``scale``: a Llama-3-8B-shape model (random weights, bf16, built on the device) at ``--tokens``: plain,
   LRP neuron+head, and LRP with weight units when they fit; time and peak memory. Refused with a clear
   error before anything runs or is written when the memory (``--memory`` GiB, default the device's free
   memory) cannot hold it. ``--smoke`` runs a shrunken shape.

``--smoke --device cpu`` runs all of it with a tiny config and short sequences (CI, under a minute).
Run: ``bash benchmarks/gpu_check.sh`` (writes ``benchmarks/results/gpu_check.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny import CORPUS, FAMILIES, tiny_model, tiny_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from safety_prune import attribution  # noqa: E402
from safety_prune.attribution import UNITS, Sample, attribute  # noqa: E402
from safety_prune.errors import ConfigError, SafetyPruneError  # noqa: E402
from safety_prune.families import blocks  # noqa: E402
from safety_prune.lrp import lrp_composite  # noqa: E402

log = logging.getLogger("gpu_check")
TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512, max_position_embeddings=256)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
SMOKE_8B = dict(LLAMA3_8B, hidden_size=128, num_hidden_layers=2, intermediate_size=448, vocab_size=1024)
NEURON_HEAD = ("neuron", "head")


# As in tests/test_attribution.py: padded gemma3 batches give non-finite weight relevance (sliding window).
_KNOWN_GAPS = {("gemma3", "batching")}


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = (x.flatten().double().argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _samples(n: int = 3) -> list[Sample]:
    tok = tiny_tokenizer()
    return [Sample(tuple(tok(t)["input_ids"]), 1) for t in CORPUS[:n]]


# -- 1. correctness on the device ------------------------------------------------------------------


def _check(name: str, fn: Callable[[], tuple[bool, float]]) -> dict:
    try:
        passed, value = fn()
        row = {"name": name, "passed": bool(passed), "value": value}
    except Exception as exc:  # a failing check is a result to report, not a crash
        row = {"name": name, "passed": False, "error": f"{type(exc).__name__}: {exc}"}
    log.info("%-40s %s", name, "ok" if row["passed"] else f"FAILED {row}")
    return row


def _clean(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in m.__dict__
               for m in model.modules())


def correctness(device: torch.device) -> list[dict]:
    wide = torch.float64 if device.type != "mps" else torch.float32
    rows = []
    for family in FAMILIES:
        def conservation(family=family):
            model = tiny_model(family, dtype=wide, zero_bias=True).to(device)
            r = attribute(model, _samples(), variant="cp", batch_size=1, sink_positions=0)
            return abs(r.info["conservation_ratio"] - 1) < 1e-6, r.info["conservation_ratio"]

        def transparency(family=family):
            model = tiny_model(family, seed=3).to(device)
            ids = torch.tensor([list(_samples(1)[0].input_ids)], device=device)
            plain = model(input_ids=ids, use_cache=False).logits.detach()
            with lrp_composite(model):
                inside = model(input_ids=ids, use_cache=False).logits.detach()
            attribute(model, _samples(2), units=UNITS)
            after = model(input_ids=ids, use_cache=False).logits.detach()
            err = rel_err(inside, plain)
            return err < 1e-5 and _clean(model) and torch.equal(after, plain), err

        def batching(family=family):
            model = tiny_model(family, dtype=wide).to(device)
            s = _samples(4)
            batched = attribute(model, s, units=UNITS, batch_size=4, sink_positions=1)
            singles = [attribute(model, [x], units=UNITS, batch_size=1, sink_positions=1) for x in s]
            err = max(rel_err(v, sum(r.scores[k] for r in singles) / len(s)) for k, v in batched.scores.items())
            return err < 1e-5, err

        def sdpa(family=family):
            eager = tiny_model(family, dtype=wide).to(device)
            try:
                fast = tiny_model(family, dtype=wide, attn="sdpa").to(device)
            except (ValueError, ImportError):  # the family has no sdpa kernel in this transformers
                return True, "unsupported"
            a, b = (attribute(m, _samples(), units=("neuron", "head"), batch_size=1) for m in (eager, fast))
            err = max(rel_err(b.scores[k], a.scores[k]) for k in a.scores)
            return err < 1e-6, err

        def recompute(family=family):
            model = tiny_model(family).to(device)
            a = attribute(model, _samples(4), units=UNITS, batch_size=2)
            b = attribute(model, _samples(4), units=UNITS, batch_size=2, gradient_checkpointing=True)
            err = max(rel_err(b.scores[k], a.scores[k]) for k in a.scores)
            return err < 1e-6, err

        for name, fn in (("conservation", conservation), ("transparency", transparency), ("batching", batching),
                         ("sdpa", sdpa), ("gradient_checkpointing", recompute)):
            if (family, name) not in _KNOWN_GAPS:
                rows.append(_check(f"{family}.{name}", fn))
    return rows


# -- 2. bf16 against fp32 -------------------------------------------------------------------------


def big_model(device: torch.device, smoke: bool, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(**(SMOKE if smoke else TINYLLAMA), tie_word_embeddings=False)
    with device:
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(dtype).eval()


def random_samples(model: torch.nn.Module, n: int, tokens: int, seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (n, tokens), generator=gen)
    return [Sample(tuple(row.tolist()), 1) for row in ids]


def precision(device: torch.device, smoke: bool) -> dict:
    model = big_model(device, smoke, torch.float32)
    data = random_samples(model, 4, 32 if smoke else 256)
    ref = attribute(model, data, units=UNITS, batch_size=2)
    low = attribute(model.to(torch.bfloat16), data, units=UNITS, batch_size=2)
    k = min(100, ref.scores["neuron"].numel() // 4)
    top_ref = set(ref.scores["neuron"].abs().flatten().topk(k).indices.tolist())
    top_low = set(low.scores["neuron"].abs().flatten().topk(k).indices.tolist())
    out = {"samples": len(data), "tokens": len(data[0].input_ids), "top_k": k,
           "spearman_neuron": spearman(low.scores["neuron"], ref.scores["neuron"]),
           "spearman_head": spearman(low.scores["head"], ref.scores["head"]),
           "top_k_overlap_neuron": len(top_ref & top_low) / k,
           "spearman_weight_sampled": _weight_spearman(low.scores, ref.scores),
           "half_matmul": _half_matmul_agreement(device, smoke),
           "conservation_ratio": {"float32": ref.info["conservation_ratio"],
                                  "bfloat16": low.info["conservation_ratio"]}}
    log.info("precision: %s", out)
    return out


def _weight_spearman(low: dict[str, Tensor], ref: dict[str, Tensor], per_key: int = 4096) -> float:
    """Spearman over the same seeded sample of entries of every weight score (all of them is billions)."""
    gen = torch.Generator().manual_seed(0)
    a, b = [], []
    for key in sorted(k for k in ref if k.startswith("weight.")):
        idx = torch.randint(0, ref[key].numel(), (min(per_key, ref[key].numel()),), generator=gen)
        a.append(low[key].flatten()[idx.to(low[key].device)].float().cpu())
        b.append(ref[key].flatten()[idx.to(ref[key].device)].float().cpu())
    return spearman(torch.cat(a), torch.cat(b))


def _half_matmul_agreement(device: torch.device, smoke: bool) -> dict:
    """``grad_W`` as attribution computes it from bf16 factors (``_mm``: bf16 matmul, float32 output on CUDA)
    against the float32 matmul of the upcast factors, at a TinyLlama down_proj's shape and 2048 tokens."""
    gen = torch.Generator().manual_seed(0)
    tokens, out, inp = (64, 64, 128) if smoke else (2048, 2048, 5632)
    g = torch.randn(tokens, out, generator=gen).to(device, torch.bfloat16)
    x = torch.randn(tokens, inp, generator=gen).to(device, torch.bfloat16)
    ref = g.float().T @ x.float()
    fast = attribution._mm(g.T, x) if attribution._half_matmul(g) else attribution._mm(g.float().T, x.float())
    return {"path": "bf16 out_dtype=float32" if attribution._half_matmul(g) else "float32 (not CUDA)",
            "max_rel_err": rel_err(fast, ref), "spearman": spearman(fast.flatten()[::97], ref.flatten()[::97])}


# -- 3. cost at 2048 tokens -----------------------------------------------------------------------


def _plain(model: torch.nn.Module, sample: Sample, device: torch.device) -> None:
    """The cost floor: forward + backward of the same target with ``.grad`` for every block weight."""
    weights = [m.weight for b in blocks(model) for m in b.modules() if isinstance(m, torch.nn.Linear)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    try:
        ids = torch.tensor([sample.input_ids], device=device)
        logits = model(input_ids=ids, use_cache=False).logits
        logits[:, :-1].gather(-1, ids[:, 1:, None]).float().sum().backward()
    finally:
        for w in weights:
            w.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)


def _measure(runs: dict[str, Callable[[], object]], device: torch.device, repeats: int, tokens: int
             ) -> list[dict]:
    """Each run once for its peak memory (and warm-up), then the median of ``repeats`` timed runs."""
    cuda = device.type == "cuda"
    rows = []
    for name, fn in runs.items():
        peak = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        fn()  # warm-up, and the peak memory of one call
        if cuda:
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        rows.append({"name": name, "seconds": t, "tokens_per_s": tokens / t, "peak_gib_over_model": peak})
        log.info("%-32s %.3f s  peak %s GiB", name, t, "-" if peak is None else f"{peak:.2f}")
    floor = next(r for r in rows if r["name"] == "plain")
    for r in rows:
        r["time_vs_plain"] = r["seconds"] / floor["seconds"]
        if cuda and floor["peak_gib_over_model"]:
            r["memory_vs_plain"] = r["peak_gib_over_model"] / floor["peak_gib_over_model"]
    print(f"{'run':32s} {'s':>8s} {'tok/s':>10s} {'peak GiB':>9s} {'x plain':>8s} {'mem x':>6s}")
    for r in rows:
        peak = "-" if r["peak_gib_over_model"] is None else f"{r['peak_gib_over_model']:.2f}"
        mem = f"{r['memory_vs_plain']:.2f}" if "memory_vs_plain" in r else "-"
        print(f"{r['name']:32s} {r['seconds']:8.3f} {r['tokens_per_s']:10.0f} {peak:>9s} "
              f"{r['time_vs_plain']:8.2f} {mem:>6s}")
    return rows


def load_before(path: str) -> ModuleType:
    """An earlier ``safety_prune/attribution.py`` as a module of the package (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("safety_prune._attribution_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timing(device: torch.device, smoke: bool, tokens: int, before: ModuleType | None) -> list[dict]:
    model = big_model(device, smoke, torch.bfloat16)
    [sample] = random_samples(model, 1, tokens, seed=1)
    runs: dict[str, Callable[[], object]] = {
        "plain": lambda: _plain(model, sample, device),
        "lrp_neuron_head": lambda: attribute(model, [sample], units=NEURON_HEAD, batch_size=1),
        "lrp": lambda: attribute(model, [sample], units=UNITS, batch_size=1),
        "wanda": lambda: attribute(model, [sample], method="wanda", units=UNITS, batch_size=1),
        "wanda_neuron_head": lambda: attribute(model, [sample], method="wanda", units=NEURON_HEAD, batch_size=1),
        "lrp_gradient_checkpointing": lambda: attribute(model, [sample], units=UNITS, batch_size=1,
                                                        gradient_checkpointing=True),
    }
    if before is not None:
        runs["lrp_before"] = lambda: before.attribute(model, [sample], units=UNITS, batch_size=1)
        runs["lrp_neuron_head_before"] = lambda: before.attribute(model, [sample], units=NEURON_HEAD, batch_size=1)
        runs["wanda_before"] = lambda: before.attribute(model, [sample], method="wanda", units=UNITS, batch_size=1)
    return _measure(runs, device, 1 if smoke else 3, tokens)


# -- 4. where the time goes -----------------------------------------------------------------------


def _breakdown(fn: Callable[[], object], device: torch.device) -> dict:
    """One profiled call: wall time, device kernel time, device-to-host copies, host syncs, top operators."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()  # warm-up outside the profile
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.events()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    dtoh = [e for e in kernels if re.search(r"Memcpy DtoH|Device -> Pageable|Device -> Pinned", e.name)]
    averages = prof.key_averages()
    count = {a.key: a.count for a in averages}
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    top = sorted(averages, key=lambda a: -getattr(a, key, 0))[:12]
    return {
        "wall_s": wall,
        "device_kernel_s": sum(e.device_time for e in kernels) / 1e6 if cuda else None,
        "dtoh_copies": len(dtoh),
        "dtoh_s": sum(e.device_time for e in dtoh) / 1e6 if cuda else None,
        "dtoh_bytes": sum(int(getattr(e, "bytes", 0) or 0) for e in dtoh) if cuda else None,
        "host_syncs": count.get("aten::_local_scalar_dense", 0),
        "to_copies": count.get("aten::_to_copy", 0),
        "top_ops": [{"op": a.key, "count": a.count, "self_ms": getattr(a, key, 0) / 1e3} for a in top],
    }


def profile_calls(device: torch.device, smoke: bool, tokens: int, before: ModuleType | None) -> dict:
    model = big_model(device, smoke, torch.bfloat16)
    [sample] = random_samples(model, 1, tokens, seed=1)
    out = {"tokens": tokens, "model": "TinyLlama shape, bf16" if not smoke else "smoke shape, bf16"}
    versions = {"after": attribution} | ({"before": before} if before is not None else {})
    for version, module in versions.items():
        for name, method in (("lrp", "lrp"), ("wanda", "wanda")):
            out[f"{name}_{version}"] = _breakdown(
                lambda m=module, meth=method: m.attribute(model, [sample], method=meth, units=UNITS, batch_size=1),
                device)
            log.info("profile %s_%s: %s", name, version, {k: v for k, v in out[f"{name}_{version}"].items()
                                                          if k != "top_ops"})
    out["plain"] = _breakdown(lambda: _plain(model, sample, device), device)
    return out


# -- 5. an 8B-shape model -------------------------------------------------------------------------


def _n_params(cfg: dict) -> tuple[int, int]:
    """(all parameters, block linear weights) of a Llama config without tied embeddings."""
    h, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    block = 2 * h * h + 2 * h * kv + 3 * h * i
    return L * (block + 2 * h) + 2 * cfg["vocab_size"] * h + h, L * block


def scale_need_gib(cfg: dict, tokens: int, weight_units: bool) -> float:
    """Planned peak of the scale row: bf16 weights, then the larger of the plain floor (bf16 weight gradients)
    and LRP (float32 weight sums when ``weight_units``), plus one sequence's activations (a generous per-token
    estimate for the forward kept for the backward, and float32 logits)."""
    total, block = _n_params(cfg)
    h, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    activations = tokens * (L * (16 * h + 8 * i) * 2 + 3 * 4 * cfg["vocab_size"])
    extra = max(2 * block, 4 * block if weight_units else 0)
    return (2 * total + extra + activations) / 2**30


def available_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30


def check_scale_fits(cfg: dict, tokens: int, device: torch.device, memory_gib: float) -> bool:
    """Whether weight units fit too; a ConfigError (nothing run, nothing written) when not even neuron and
    head units do."""
    need = scale_need_gib(cfg, tokens, weight_units=False)
    if need > memory_gib:
        raise ConfigError(
            f"The 8B-shape scale row needs about {need:.0f} GiB at {tokens} tokens but {device} has "
            f"{memory_gib:.0f} GiB available. Run it on a GPU with more free memory, lower --tokens, "
            "or leave it out with --no-scale.")
    return scale_need_gib(cfg, tokens, weight_units=True) <= memory_gib


def scale(device: torch.device, smoke: bool, tokens: int, weight_units: bool) -> dict:
    cfg = SMOKE_8B if smoke else LLAMA3_8B
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg, tie_word_embeddings=False),
                                                 attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    [sample] = random_samples(model, 1, tokens, seed=2)
    runs: dict[str, Callable[[], object]] = {
        "plain": lambda: _plain(model, sample, device),
        "lrp_neuron_head": lambda: attribute(model, [sample], units=NEURON_HEAD, batch_size=1),
    }
    if weight_units:
        runs["lrp"] = lambda: attribute(model, [sample], units=UNITS, batch_size=1)
    params = sum(p.numel() for p in model.parameters())
    rows = _measure(runs, device, 1 if smoke else 2, tokens)
    return {"config": "Llama-3-8B shape" if not smoke else "smoke shape (Llama-3-8B ratios)", "params": params,
            "dtype": "bfloat16", "tokens": tokens, "weight_units": weight_units,
            "planned_gib": scale_need_gib(cfg, tokens, weight_units), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny config and short sequences (CPU CI)")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--before", default=None, help="an earlier attribution.py to time and profile beside this one")
    p.add_argument("--no-scale", dest="scale", action="store_false", help="leave out the 8B-shape row")
    p.add_argument("--only", default=None, help="comma-separated sections to run, e.g. timing,profile")
    p.add_argument("--memory", type=float, default=None,
                   help="GiB the scale row may plan with (default: the device's free memory)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
            raise ConfigError(f"--device {args.device!r} is not supported. Use cpu, cuda or cuda:N.")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but CUDA is not available; use --device cpu --smoke.")
        tokens = 64 if args.smoke else args.tokens
        weight_units = args.scale and check_scale_fits(
            SMOKE_8B if args.smoke else LLAMA3_8B, tokens, device,
            available_gib(device) if args.memory is None else args.memory)
        before = load_before(args.before) if args.before else None
        only = set(args.only.split(",")) if args.only else None
        if only and not only <= {"checks", "precision", "timing", "profile", "scale"}:
            raise ConfigError(f"--only {args.only!r}: choose from checks, precision, timing, profile, scale.")
    except SafetyPruneError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    report = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "smoke": args.smoke, "torch": torch.__version__,
              "complete": False}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile_out = out.with_name("gpu_profile.json" if out.name == "gpu_check.json" else f"{out.stem}_profile.json")
    sections: dict[str, Callable[[], object]] = {
        "checks": lambda: correctness(device), "precision": lambda: precision(device, args.smoke),
        "timing": lambda: timing(device, args.smoke, tokens, before),
        "profile": lambda: profile_calls(device, args.smoke, tokens, before)}
    if args.scale:
        sections["scale"] = lambda: scale(device, args.smoke, tokens, weight_units)
    sections = {k: v for k, v in sections.items() if only is None or k in only}
    for name, run in sections.items():  # written after each section: a run cut short keeps what it measured
        report[name] = run()
        report["duration_s"] = round(time.time() - started, 1)
        report["complete"] = name == list(sections)[-1]
        out.write_text(json.dumps(report, indent=2) + "\n")
        if name == "profile":
            profile_out.write_text(json.dumps({k: report[k] for k in ("device", "device_name", "torch", "profile")},
                                              indent=2) + "\n")
    failed = [c["name"] for c in report.get("checks", []) if not c["passed"]]
    if "checks" in report and "precision" in report:
        print(f"{len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed; "
              f"bf16 vs fp32 Spearman (neuron) {report['precision']['spearman_neuron']:.4f}")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
