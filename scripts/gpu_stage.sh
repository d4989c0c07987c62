#!/usr/bin/env bash
# One prepared GPU session for the shipped model, sized to a fixed wall-clock budget:
#   1. the GPU benchmark (benchmarks/gpu.py, about a minute);
#   2. a fine-tune of the shipped weights by `vdsr train`, its step count computed from the
#      training rate just measured so that it ends inside the budget (SIGTERM at the budget's end
#      stops it cleanly with a checkpoint, should the estimate be off);
#   3. the run's weights, curve and logs copied to $OUT (8 files).
# Usage, from the repository root:
#   OUT=gpu-out DATA=../shared/datasets TOTAL=540 bash scripts/gpu_stage.sh
# DATA must hold T91, BSD200 and Set5 (PNG or lossless WebP). Extra wheels, if any, in .whl/.
set -uo pipefail
OUT=${OUT:-gpu-out}
DATA=${DATA:-../shared/datasets}
TOTAL=${TOTAL:-540}          # seconds for the whole script
BATCH=${BATCH:-128}
LR=${LR:-2e-4}
SEED=${SEED:-5}
RUN=${RUN:-/tmp/vdsr-gpu-run}
start=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/log.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, vdsr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

echo "== benchmark ($(($(date +%s) - start)) s)" | tee -a "$LOG"
timeout 150 python3 benchmarks/gpu.py --data "$DATA/Set5" --out "$OUT/gpu.json" 2>&1 | tee -a "$LOG"

elapsed=$(($(date +%s) - start))
budget=$((TOTAL - elapsed - 25))    # 25 s for the copy and slack
steps=$(python3 - "$OUT/gpu.json" "$BATCH" "$budget" <<'PY'
import json, sys
path, batch, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    rate = json.load(open(path))["train_patches_per_s"][f"vdsr_train_b{batch}"]
except Exception:
    rate = 8000.0  # no benchmark: a cautious guess for an H100-class card
# 40 s for loading the data and the first cuDNN autotuning; 85% of the measured rate for
# validation, logging and checkpoints.
print(max(1000, int(0.85 * rate * max(0.0, budget - 40) / batch) // 100 * 100))
PY
)
every=$((steps / 10))
echo "== training: $steps steps of $BATCH, budget ${budget} s (elapsed $elapsed s)" | tee -a "$LOG"
timeout -s TERM -k 20 "$budget" python3 -m vdsr train --run-dir "$RUN" --overwrite \
  --train-dirs "$DATA/T91" "$DATA/BSD200" --val-dir "$DATA/Set5" \
  --init-weights src/vdsr/weights/vdsr_x234.safetensors \
  --batch-size "$BATCH" --learning-rate "$LR" --warmup-steps 500 --schedule cosine \
  --steps "$steps" --val-every "$every" --checkpoint-every "$every" --log-every 200 \
  --seed "$SEED" --device "${DEVICE:-cuda}" 2>&1 | tee -a "$LOG"
echo "== train exit ${PIPESTATUS[0]} ($(($(date +%s) - start)) s)" | tee -a "$LOG"
for f in last.safetensors best.safetensors metrics.csv curve.png config.json checkpoint.pt; do
  cp "$RUN/$f" "$OUT/" 2>>"$LOG" || true
done
echo "== done ($(($(date +%s) - start)) s)" | tee -a "$LOG"
