#!/usr/bin/env bash
# The whole GPU check of issue 3 as one command for a lent GPU machine (device tool `run`,
# carry [".gpu_data"], made here by `deploy/gpu/prepare_data.py --n 64 --out .gpu_data`).
# Runs check_hf.py at the Qwen2.5-VL-3B shape in bf16 at batch 8 (with the plain-generate
# baseline) and batch 32, each with --compare (labels-only with the packed vision attention
# against the per-window loop, alternated), each under its own time limit; logs and JSON go
# to $OUT. Results: docs/benchmarks.md, "Student on GPU".
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
for b in 8 32; do
  extra="--compare" limit=280
  [ "$b" = 32 ] && extra="--compare --no-baseline" limit=150
  timeout "$limit" python3 deploy/gpu/check_hf.py --data-dir "${DATA_DIR:-.gpu_data}" \
      --batch-size "$b" --image-size 280 --n-posts 64 --max-new-tokens 128 $extra \
      --json-out "$OUT/check_hf_b$b.json" 2>&1 | tee "$OUT/check_hf_b$b.log"
  echo "batch $b exit ${PIPESTATUS[0]}"
done
