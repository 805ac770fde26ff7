#!/usr/bin/env bash
# The GPU check of issue 6 (Scale), sized for under 8 minutes on one H200: correctness checks on the
# device (conservation, transparency, batching, sdpa, gradient checkpointing), bf16 against fp32
# relevance on a TinyLlama-sized model, and attribution cost at 2048 tokens against a plain
# forward+backward and Wanda. Writes benchmarks/results/gpu_check.json; see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                    # CUDA
#   bash benchmarks/gpu_check.sh --device cpu --smoke  # tiny config, any machine
#   GPU_CHECK_TIMEOUT=300 bash benchmarks/gpu_check.sh --before old_attribution.py  # shorter limit; before/after rows
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=".:tests${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
