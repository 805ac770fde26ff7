"""What MKL's strict reproducible mode (``MKL_CBWR=AUTO,STRICT``, opt-in) costs and buys.

On some CPUs (AVX-512) MKL splits a matrix product's reduction by the thread count: there the tiny test models'
LRP relevance differed in its last bits between 1 and 2 threads, and the determinism test failed without it.
For each mode, in a fresh process (MKL reads the mode once): LRP attribution of the default model (or its
random-weight stand-in), 8 x 128 tokens, neuron, head and weight units, as in attribution_cost.py; whether 1 and
2 threads give bit-identical scores; the 2-thread time, median of 3 after a warm-up; and the time of greedy
generation (48 prompts of 16 tokens, 25 new tokens), the correction's largest stage. Both modes run one after the
other in one invocation, so the ratio is side by side.

    PYTHONPATH=. python benchmarks/mkl_reproducible.py     # writes benchmarks/results/mkl_reproducible.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MODES = ("AUTO", "AUTO,STRICT")
REPEATS = 3
RESULTS = Path(__file__).parent / "results" / "mkl_reproducible.json"


def _times(fn: Callable[[], object]) -> list[float]:
    """Wall times of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def worker() -> dict:
    """In this process (its MKL_CBWR fixed by the parent): 1- vs 2-thread scores, then 2-thread times."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from attribution_cost import _load, _operation

    model, name = _load()
    op = _operation("lrp", model)  # returns the Relevance
    scores = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        scores[threads] = op().scores
    identical = all(torch.equal(scores[1][k], scores[2][k]) for k in scores[1])
    worst = max(float(((scores[1][k] - scores[2][k]).abs() / scores[2][k].abs().max()).max()) for k in scores[1])
    times = _times(op)
    prompts = torch.randint(3, model.config.vocab_size, (48, 16), generator=torch.Generator().manual_seed(1))
    gen_times = _times(lambda: model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=25,
                                              min_new_tokens=25, do_sample=False, pad_token_id=0))
    return {"mode": os.environ["MKL_CBWR"], "model": name, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "identical_1_vs_2_threads": identical, "max_relative_difference": worst, "times_s": times,
            "time_s": statistics.median(times), "generate_times_s": gen_times,
            "generate_time_s": statistics.median(gen_times)}


def main() -> None:
    results = {}
    for mode in MODES:
        env = os.environ | {"MKL_CBWR": mode}
        proc = subprocess.run([sys.executable, __file__, "--worker"], capture_output=True, text=True, env=env,
                              check=False)
        if proc.returncode != 0:
            sys.exit(f"worker MKL_CBWR={mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    auto, strict = (results[m] for m in MODES)
    ratio = strict["time_s"] / auto["time_s"]
    gen_ratio = strict["generate_time_s"] / auto["generate_time_s"]
    print(f"model: {auto['model']}; CPU capability {auto['cpu_capability']}")
    for mode, r in results.items():
        print(f"MKL_CBWR={mode:<12} 1 vs 2 threads identical: {r['identical_1_vs_2_threads']!s:<5} "
              f"(max relative difference {r['max_relative_difference']:.1e}); LRP {r['time_s']:.2f} s, greedy "
              f"generation {r['generate_time_s']:.2f} s at 2 threads")
    print(f"strict / auto time: LRP {ratio:.3f}x, generation {gen_ratio:.3f}x")
    RESULTS.write_text(json.dumps({"results": results, "strict/auto time": {"lrp": ratio, "generate": gen_ratio}},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        print(json.dumps(worker()))
    else:
        main()
