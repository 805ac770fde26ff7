#!/usr/bin/env bash
# End-to-end GPU benchmark of issue 25: the real default audit and `correct --method all` on CUDA, the in-job
# time of each (the manifest's duration_s), a timeline of the job's stages (every INFO log line and finished
# progress bar, stamped with the seconds since the job started) and the audit's numbers against the CPU run's (rate 52/312 = 0.1667, mean
# 0.2409, perplexity 26.67576, README and benchmarks/results/tasks_compress.json). Writes gpu_e2e.json.
#
# On a GPU machine packed by ../shared/gpu-bundle/pack.sh, after `bash .gpu-a/a.sh` on the same machine:
#   bash benchmarks/gpu_e2e.sh                       # runner: bash .gpu-b/b.sh; results to $OUT (or benchmarks/results)
# Anywhere else, e.g. a quick check of this script with a tiny model and suite on CPU:
#   RUNNER=".venv/bin/python -m safety_prune" MODEL=dir PROBE=suite.yaml DEVICE=cpu bash benchmarks/gpu_e2e.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RUNNER=${RUNNER:-bash .gpu-b/b.sh}
MODEL=${MODEL:-default}
PROBE=${PROBE:-toxicity}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp/gpu_e2e}
JOBS=${JOBS:-audit correct}  # EXTRA: more options for every job, e.g. EXTRA="--batch-size 32"
rm -rf "$WORK" && mkdir -p "$WORK" "$DEST"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1

stamp() {  # prefix each line with the seconds since the job started
  "$PY" -u -c 'import sys, time
t0 = time.time()
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t0:9.2f} {line}")'
}

for job in $JOBS; do
  args=(-v "$job" --model "$MODEL" --probe "$PROBE" --device "$DEVICE" --out "$WORK/$job" ${EXTRA:-})
  [ "$job" = correct ] && args+=(--method all)
  start=$(date +%s.%N)
  $RUNNER "${args[@]}" 2>&1 | stamp | tee "$WORK/$job.log"
  echo "$job rc=${PIPESTATUS[0]} wall=$("$PY" -c "import time; print(round(time.time() - $start, 2))")" \
    | tee -a "$WORK/summary.txt"
done

"$PY" - "$WORK" "$DEST/gpu_e2e.json" "$MODEL" "$DEVICE" <<'PY'
"""gpu_e2e.json: per job the exit status, wall and in-job time, the stage timeline and the headline numbers."""
import json
import os
import re
import sys
from pathlib import Path

work, dest, model, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
CPU = {"behaviour_rate": 52 / 312, "behaviour_mean": 0.2409, "perplexity": 26.67576320740257}
summary = dict(re.findall(r"^(\w+) (rc=\S+ wall=\S+)$", (work / "summary.txt").read_text(), re.M))
report = {"model": model, "device": device, "extra_options": os.environ.get("EXTRA", ""), "cpu_reference": CPU,
          "jobs": {}}
try:
    import torch

    report["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
except ImportError:
    report["device_name"] = None
for job, status in summary.items():
    rc, wall = re.match(r"rc=(\S+) wall=(\S+)", status).groups()
    row = {"rc": int(rc), "wall_s": float(wall)}
    log = (work / f"{job}.log").read_bytes().decode(errors="replace").split("\n")  # keeps \r: bars end in it
    row["stages"] = []  # INFO lines, and each finished progress bar (its last state: desc, count, elapsed)
    for line in log:
        t, _, text = line.strip().partition(" ")
        text = text.split("\r")[-1].strip()
        if re.fullmatch(r"[\d.]+", t) and (text.startswith("INFO ") or "100%|" in text):
            row["stages"].append({"t_s": float(t), "log": re.sub(r"\|[^|]*\|", "", text)[:160]})
    results = work / job / "results.json"
    if results.exists():
        res = json.loads(results.read_text())
        row["job_s"] = res.get("manifest", {}).get("duration_s")
        base = res.get("baseline", {})
        row["baseline"] = {k: base.get(k) for k in CPU}
        if "corrected" in res:
            row["corrected"] = {k: res["corrected"].get(k) for k in CPU}
            row["method"], row["pruned"] = res.get("method"), res.get("pruned", {}).get("count")
        if model == "default" and all(isinstance(base.get(k), (int, float)) for k in CPU):
            row["matches_cpu"] = {
                "behaviour_rate": abs(base["behaviour_rate"] - CPU["behaviour_rate"]) < 1e-9,
                "behaviour_mean": round(base["behaviour_mean"], 4) == CPU["behaviour_mean"],
                "perplexity_rel_diff": base["perplexity"] / CPU["perplexity"] - 1,
                "perplexity_within_0.01pct": abs(base["perplexity"] / CPU["perplexity"] - 1) <= 1e-4,
            }
    report["jobs"][job] = row
dest.write_text(json.dumps(report, indent=2) + "\n")
for job, row in report["jobs"].items():
    print(f"{job}: rc {row['rc']}, in job {row.get('job_s')} s, wall {row['wall_s']} s, "
          f"baseline {row.get('baseline')}, matches CPU {row.get('matches_cpu')}")
print(f"wrote {dest}")
PY
