#!/bin/bash
# The rag_outcome sweep on one GPU machine: rag_sweep.py over ROWS (default experiments/sweep_rows.txt), 10 rows
# at a time, the running ones killed at DEADLINE seconds. Into RESULTS: results.jsonl (one line per row),
# logs.tgz (one log per row), runs.tgz (the run dirs without weights: configs, metrics.jsonl, on-policy samples,
# eval generations), env.txt and dmon.txt (GPU utilisation every 5 s). The data must be collected already
# (rag_outcome.py --collect-only; experiments/README.md, "The sweep on a GPU"). Run from the repository root:
#     bash experiments/gpu_sweep.sh DEADLINE RESULTS [ROWS]
set -u
deadline=$1 results=$2 rows=${3:-experiments/sweep_rows.txt}
mkdir -p "$results"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
python3 -c "from prefopt.models import bundled_path; print(bundled_path('smollm2-135m'))" 2>&1 | grep -v "it/s\]" \
  || exit 4  # the bundled GGUF, dequantized once, before 10 rows want it at the same time
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
 python3 -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|trl|peft|accelerate|datasets) ") > "$results/env.txt"
nvidia-smi dmon -s um -d 5 > "$results/dmon.txt" 2>&1 &
python3 experiments/rag_sweep.py "$rows" --workers 10 --deadline "$deadline" --results "$results/results.jsonl" \
  --logs "$results/logs"
tar czf "$results/logs.tgz" -C "$results" logs && rm -r "$results/logs"
tar czf "$results/runs.tgz" --exclude='*.safetensors' --exclude='tokenizer*' --exclude='checkpoint-*' runs/sweep
python3 - "$results/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    acc = {k: (r[k].get("unseen_accuracy"), r[k].get("seen_accuracy"), r[k].get("answer_accuracy"))
           for k in ("base", "sft", "dpo") if k in r}
    print(r.get("error") or acc, r.get("wall_s"), r["row"])
PY
