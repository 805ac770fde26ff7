#!/usr/bin/env bash
# The GPU check of issues 6 and 25, about 70 s on one H200: correctness checks on the device (conservation,
# transparency, batching, sdpa, gradient checkpointing), bf16 against fp32 relevance on a TinyLlama-sized model,
# attribution cost at 2048 tokens (neuron+head, all units, Wanda, checkpointing) against a plain forward+backward,
# a torch.profiler breakdown, and an 8B-shape row. Writes benchmarks/results/gpu_check.json and gpu_profile.json;
# see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                    # CUDA
#   bash benchmarks/gpu_check.sh --device cpu --smoke  # tiny config, any machine
#   GPU_CHECK_TIMEOUT=300 bash benchmarks/gpu_check.sh --before old_attribution.py  # shorter limit; before/after rows
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=".:tests${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
