#!/usr/bin/env bash
# Issue 15's GPU check as one command for a lent GPU machine (H100/H200; torch, transformers,
# peft, accelerate, rich and click are in its image; nothing is fetched, no hub):
#   1. deploy/gpu/engine_check.py: the Qwen2.5-VL-3B shape (random weights, bf16) built once;
#      the engine beside the HF reference at batch 128 (2 x batch posts, 256 new tokens,
#      280 x 280 images), the fp32 greedy check (TF32 off, 8 posts x 32 tokens) and the bf16
#      teacher-forced check with label agreement, then the same benchmark at batch 256;
#   2. deploy/gpu/train_check.py: the student stage's training step at the 3B shape (LoRA on both
#      towers, gradient checkpointing, bf16, KD loss) at micro-batch 4 and 8.
# Each part runs under its own time limit (330 s + 120 s: the whole script ends inside 8 minutes);
# JSON and logs go to $OUT. Here first: `.venv/bin/python deploy/gpu/prepare_data.py --n 64 --out
# .gpu_data` (real pictures; else random-colour images are used) and `bash deploy/gpu/fetch_wheels.sh`
# (pydantic, which training/ imports and the GPU image lacks).
# Device tool: run(command="bash deploy/gpu/engine.sh", carry=[".gpu_data", ".whl"], timeout_s=560).
# Results go into docs/benchmarks.md ("Engine on GPU") with the card, date and versions.
set -u
OUT=${OUT:-/tmp/engine_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
# pydantic for the training check: wheels made here by deploy/gpu/fetch_wheels.sh, carried as .whl
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the card and versions head the log (the device tool brings back at most 8 files; this run writes 7)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/engine_check.log"
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$OUT/engine_check.log"
IMAGES=${IMAGES:-.gpu_data/t15/images}
# ENGINE_ARGS / TRAIN_ARGS replace the defaults (a CPU dry run: ENGINE_ARGS="--shape tiny --batches 4
# --new-tokens 6 --check-posts 2 --check-tokens 4" TRAIN_ARGS="--tiny --micro-batches 1 --steps 1")
timeout 330 $PY deploy/gpu/engine_check.py --out "$OUT" --images "$IMAGES" \
    ${ENGINE_ARGS:---batches 128 256 --new-tokens 256} 2>&1 | tee -a "$OUT/engine_check.log"
echo "engine_check exit ${PIPESTATUS[0]}"
timeout 120 $PY deploy/gpu/train_check.py ${TRAIN_ARGS:---micro-batches 4 8 --steps 3} \
    --json-out "$OUT/train_check.json" 2>&1 | tee "$OUT/train_check.log"
echo "train_check exit ${PIPESTATUS[0]}"
ls -l "$OUT"
