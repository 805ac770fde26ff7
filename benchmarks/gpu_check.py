"""GPU check: correctness on the device, bf16 against fp32 relevance, and cost at 2048 tokens.

1. ``checks``: on the device, per family (tiny models built from configs, float64 where the device has it):
   CP-LRP conservation (input relevance / explained logits = 1), transparency (logits inside the LRP
   composite equal the plain ones; the model is clean and bit-identical afterwards), a padded batch equals
   single samples, sdpa gives eager's relevance, and gradient checkpointing changes nothing.
2. ``precision``: a TinyLlama-sized Llama (hidden 2048, 22 layers, 32 heads, 4 kv heads, intermediate
   5632, vocab 32000; random weights) attributed in float32 and in bfloat16 (same weights): Spearman of the
   neuron and head scores and the overlap of the top-100 neurons by |R|.
3. ``timing``: one 2048-token sequence through that model in bf16: LRP attribution (neuron, head and
   weight units), the plain forward+backward floor (``.grad`` for every block weight), Wanda, and LRP with
   gradient checkpointing. Median of 3 after a warm-up; tokens/s, peak memory
   (``torch.cuda.max_memory_allocated`` over the allocation before the call) and ratios to the plain floor.

``--smoke --device cpu`` runs all of it with a tiny config and short sequences (CI, under a minute).
Run: ``bash benchmarks/gpu_check.sh`` (writes ``benchmarks/results/gpu_check.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny import CORPUS, FAMILIES, tiny_model, tiny_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from safety_prune.attribution import UNITS, Sample, attribute  # noqa: E402
from safety_prune.families import blocks  # noqa: E402
from safety_prune.lrp import lrp_composite  # noqa: E402

log = logging.getLogger("gpu_check")
TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512, max_position_embeddings=256)


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
    ref = attribute(model, data, batch_size=2)
    low = attribute(model.to(torch.bfloat16), data, batch_size=2)
    k = min(100, ref.scores["neuron"].numel() // 4)
    top_ref = set(ref.scores["neuron"].abs().flatten().topk(k).indices.tolist())
    top_low = set(low.scores["neuron"].abs().flatten().topk(k).indices.tolist())
    out = {"samples": len(data), "tokens": len(data[0].input_ids), "top_k": k,
           "spearman_neuron": spearman(low.scores["neuron"], ref.scores["neuron"]),
           "spearman_head": spearman(low.scores["head"], ref.scores["head"]),
           "top_k_overlap_neuron": len(top_ref & top_low) / k,
           "conservation_ratio": {"float32": ref.info["conservation_ratio"],
                                  "bfloat16": low.info["conservation_ratio"]}}
    log.info("precision: %s", out)
    return out


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


def timing(device: torch.device, smoke: bool, tokens: int) -> list[dict]:
    model = big_model(device, smoke, torch.bfloat16)
    [sample] = random_samples(model, 1, tokens, seed=1)
    runs: dict[str, Callable[[], object]] = {
        "lrp": lambda: attribute(model, [sample], units=UNITS, batch_size=1),
        "plain": lambda: _plain(model, sample, device),
        "wanda": lambda: attribute(model, [sample], method="wanda", units=UNITS, batch_size=1),
        "lrp_gradient_checkpointing": lambda: attribute(model, [sample], units=UNITS, batch_size=1,
                                                        gradient_checkpointing=True),
    }
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
        for _ in range(1 if smoke else 3):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        rows.append({"name": name, "seconds": t, "tokens_per_s": tokens / t, "peak_gib_over_model": peak})
    floor = next(r for r in rows if r["name"] == "plain")
    for r in rows:
        r["time_vs_plain"] = r["seconds"] / floor["seconds"]
        if cuda:
            r["memory_vs_plain"] = r["peak_gib_over_model"] / floor["peak_gib_over_model"]
    print(f"{'run':28s} {'s':>8s} {'tok/s':>10s} {'peak GiB':>9s} {'x plain':>8s}")
    for r in rows:
        peak = "-" if r["peak_gib_over_model"] is None else f"{r['peak_gib_over_model']:.2f}"
        print(f"{r['name']:28s} {r['seconds']:8.3f} {r['tokens_per_s']:10.0f} {peak:>9s} {r['time_vs_plain']:8.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny config and short sequences (CPU CI)")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available; use --device cpu --smoke", file=sys.stderr)
        return 2
    started = time.time()
    report = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "smoke": args.smoke, "torch": torch.__version__,
              "checks": correctness(device), "precision": precision(device, args.smoke),
              "timing": timing(device, args.smoke, 64 if args.smoke else args.tokens)}
    report["duration_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    print(f"{len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed; "
          f"bf16 vs fp32 Spearman (neuron) {report['precision']['spearman_neuron']:.4f}; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
