"""Cost of LRP attribution against a plain forward+backward and against Wanda.

Model: the embedded default (SmolLM2-135M-Instruct, float32, CPU). If it cannot be
loaded, a Llama with SmolLM2-135M's geometry and random weights is used instead
and the output says so. Input: one batch of 8 x 128 random token ids.

Measured, each in a fresh subprocess so that one measurement cannot inherit
another's allocations:

- ``lrp``: ``attribute(method="lrp", units=("neuron", "head", "weight"))``;
- ``plain``: forward + backward of the same target (sum of the logits of the
  tokens present) with ``.grad`` for the same weights LRP scores (every block
  weight matrix; embeddings and norms frozen), i.e. the cost floor of the design;
- ``wanda``: ``attribute(method="wanda", units=("neuron", "head", "weight"))``.

Time: the median of 3 runs after one warm-up run, as wall time and as process CPU time
(all threads). On a shared machine wall time is inflated by other processes; CPU time is
much less so, and the ratios are given for both (the load average is printed alongside).

Memory: peak resident set size *during* one call, over the resident set just
before it. The subprocess loads the model, records VmRSS, resets the kernel's
high-water mark (``/proc/self/clear_refs`` = 5), runs the call once (before any
warm-up, so no allocator cache hides allocations) and reads VmHWM. This counts
everything the call touches (activations, gradients, accumulators, allocator
slack) and nothing of the model load. ``tracemalloc`` cannot see torch's
allocations and ``ru_maxrss`` cannot be reset, so neither is used.

Run: ``PYTHONPATH=. python benchmarks/attribution_cost.py`` (about 2-3 min on 2 cores).
Writes ``benchmarks/results/attribution_cost.json``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

BATCH, TOKENS, REPEATS = 8, 128, 3
UNITS = ("neuron", "head", "weight")
KINDS = ("lrp", "plain", "wanda")
RESULTS = Path(__file__).parent / "results" / "attribution_cost.json"


def _load() -> tuple[torch.nn.Module, str]:
    """The embedded default model, or a random-weight stand-in with its geometry."""
    try:
        from safety_prune.models import load_model

        lm = load_model("default", attn_implementation="sdpa")
        return lm.model, lm.name
    except Exception as exc:  # any failure to get the asset: fall back, and say so
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                          tie_word_embeddings=True, attn_implementation="sdpa")
        name = f"RANDOM-WEIGHT Llama with SmolLM2-135M config (default model unavailable: {exc})"
        return LlamaForCausalLM(cfg).eval(), name


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def _peak_delta_mib(fn: Callable[[], None]) -> float:
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def _operation(kind: str, model: torch.nn.Module) -> Callable[[], None]:
    from safety_prune.attribution import Sample, attribute
    from safety_prune.families import architecture, blocks

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (BATCH, TOKENS), generator=gen)
    samples = [Sample(tuple(row.tolist()), 1) for row in ids]
    if kind in ("lrp", "wanda"):
        return lambda: attribute(model, samples, method=kind, units=UNITS, batch_size=BATCH)

    arch = architecture(model)
    scored = [blk.get_submodule(n).weight for blk in blocks(model) for n in arch.linear_names]
    for p in model.parameters():
        p.requires_grad_(False)
    for w in scored:
        w.requires_grad_(True)

    def plain() -> None:
        for w in scored:
            w.grad = None
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        logits[:, :-1].gather(-1, ids[:, 1:, None]).sum().backward()

    return plain


def worker(kind: str) -> dict:
    """Measure one operation in this (fresh) process."""
    model, name = _load()
    op = _operation(kind, model)
    memory = _peak_delta_mib(op)
    op()  # warm-up
    times, cpu = [], []
    for _ in range(REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        op()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"kind": kind, "model": name, "times_s": times, "time_s": statistics.median(times),
            "cpu_s": statistics.median(cpu),
            "peak_mib": memory, "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    results = {}
    for kind in KINDS:
        proc = subprocess.run([sys.executable, __file__, "--worker", kind], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            sys.exit(f"worker '{kind}' failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    lrp, plain, wanda = (results[k] for k in KINDS)
    ratios = {
        "lrp/plain time": lrp["time_s"] / plain["time_s"],
        "lrp/plain cpu time": lrp["cpu_s"] / plain["cpu_s"],
        "lrp/plain memory": lrp["peak_mib"] / plain["peak_mib"],
        "lrp/wanda time": lrp["time_s"] / wanda["time_s"],
        "lrp/wanda cpu time": lrp["cpu_s"] / wanda["cpu_s"],
        "lrp/wanda memory": lrp["peak_mib"] / wanda["peak_mib"],
    }
    targets = {"lrp/plain time": 1.25, "lrp/plain cpu time": 1.25, "lrp/plain memory": 1.3,
               "lrp/wanda time": 3.5, "lrp/wanda cpu time": 3.5}
    print(f"model: {lrp['model']}")
    print(f"batch: {BATCH} x {TOKENS} tokens, {lrp['threads']} threads, median of {REPEATS} after warm-up")
    loads = ", ".join(f"{k} {results[k]['load_avg_1min']:.1f}" for k in KINDS)
    print(f"1-min load average after each worker (above the thread count, other processes distort the times): "
          f"{loads}")
    print(f"{'operation':<10} {'wall (s)':>9} {'cpu (s)':>8} {'peak (MiB)':>11}")
    for kind in KINDS:
        r = results[kind]
        print(f"{kind:<10} {r['time_s']:>9.2f} {r['cpu_s']:>8.2f} {r['peak_mib']:>11.0f}")
    for key, value in ratios.items():
        target = targets.get(key)
        met = target is not None and value <= target
        verdict = "" if target is None else f"  (target <= {target}: {'met' if met else 'MISSED'})"
        print(f"{key:<20} {value:6.2f}x{verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"batch": [BATCH, TOKENS], "results": results, "ratios": ratios,
                                   "targets": targets}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2])))
    else:
        main()
