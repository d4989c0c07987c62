#!/usr/bin/env bash
# One prepared training stage, sized to a wall-clock budget, and resumable:
#   1. on a fresh GPU run, the GPU benchmark's training step (benchmarks/gpu.py train), whose measured
#      training rate sizes the step count so the run ends inside the budget;
#   2. `vdsr train` into the run folder $RUN (default $OUT/run): a fine-tune of $INIT (default the
#      shipped weights), or, when $RUN already holds a run, `--resume` of it. At the budget's end
#      SIGTERM stops it cleanly with a checkpoint, and running the stage again continues it;
#   3. $OUT/stage.json: what the stage did (status, steps, seconds, validation of the best and
#      last weights), and $OUT/log.txt (appended to on each run).
# A stage whose training cannot start (a missing, corrupt or mismatched checkpoint to resume,
# weights of another architecture) stops with vdsr's one-line error and exit 1, and leaves $OUT
# and the run folder as they were.
#
# Usage, from the repository root (every setting is an environment variable):
#   OUT=gpu-out DATA=../shared/datasets TOTAL=540 bash scripts/gpu_stage.sh      # GPU stage
#   OUT=gpu-out bash scripts/gpu_stage.sh      # again: resumes gpu-out/run where it stopped
#   OUT=o FROM=gpu-out/run bash scripts/gpu_stage.sh   # continue a run folder brought from elsewhere
#   OUT=o DEVICE=cpu STEPS=200 INIT=none TRAIN_DIRS=hr VAL_DIR=val \
#     EXTRA="--depth 4 --width 8 --patch 21 --scales 2" bash scripts/gpu_stage.sh   # tiny CPU run
# DATA must hold T91, BSD200 and Set5 (PNG or lossless WebP) unless TRAIN_DIRS and VAL_DIR say
# otherwise. Extra wheels, if any, in .whl/ (installed on CUDA devices only).
set -uo pipefail
OUT=${OUT:-gpu-out}
RUN=${RUN:-$OUT/run}
FROM=${FROM:-}               # a run folder to continue (copied to $RUN when that is empty)
DATA=${DATA:-../shared/datasets}
TRAIN_DIRS=${TRAIN_DIRS:-$DATA/T91 $DATA/BSD200}   # space-separated
VAL_DIR=${VAL_DIR:-$DATA/Set5}
TOTAL=${TOTAL:-540}          # seconds for the whole stage
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-}             # fixed step count; unset: sized from the benchmark (fresh GPU run)
BATCH=${BATCH:-128}
LR=${LR:-2e-4}
WARMUP=${WARMUP:-500}
SEED=${SEED:-5}
INIT=${INIT:-src/vdsr/weights/vdsr_x234.safetensors}   # "none": from scratch
EXTRA=${EXTRA:-}             # more `vdsr train` flags for a fresh run (e.g. a small model)
PYTHON=${PYTHON:-python3}
VDSR=${VDSR:-$PYTHON -m vdsr}
start=$(date +%s)
say() { echo "== $* ($(($(date +%s) - start)) s)"; }
fail() { echo "$*" >&2; rm -rf "$TMP"; exit 1; }

# Everything but the run folder is staged here and moved to $OUT only once training has run.
TMP=$(mktemp -d)
LOG="$TMP/log.txt"
cuda=0; [[ $DEVICE == cuda* ]] && cuda=1
if ((cuda)) && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Check a run to continue before anything is written: the same check `vdsr train --resume`
# makes (config.json, a readable checkpoint of the same architecture), which writes nothing.
resume_from=""
if [[ -e $RUN/config.json ]]; then
  resume_from=$RUN
elif [[ -n $FROM ]]; then
  resume_from=$FROM
fi
if [[ -n $resume_from ]]; then
  "$PYTHON" - "$resume_from" <<'PY' || { rm -rf "$TMP"; exit 1; }   # its one line says why
import sys
from vdsr.errors import VDSRError
from vdsr.train.runfolder import RunFolder
try:
    RunFolder(sys.argv[1]).resume()
except VDSRError as exc:
    sys.exit(f"vdsr: error: {exc}")
PY
fi

if [[ -z $resume_from && -z $STEPS ]] && ! ((cuda)); then
  echo "stage: set STEPS (the step count is sized from the GPU benchmark only on CUDA)" >&2
  rm -rf "$TMP"; exit 1
fi

{
  if ((cuda)); then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PYTHON" -c "import torch, vdsr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

steps=$STEPS
if [[ -z $resume_from && -z $steps ]]; then
  say "benchmark" | tee -a "$LOG"
  timeout -k 10 150 "$PYTHON" benchmarks/gpu.py train --json "$TMP/gpu.json" >>"$LOG" 2>&1
  budget=$((TOTAL - $(date +%s) + start - 25))
  steps=$("$PYTHON" - "$TMP/gpu.json" "$BATCH" "$budget" <<'PY'
import json, sys
path, batch, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    rate = json.load(open(path))["steps"]["train"][f"eager_b{batch}_patches_per_s"]
except Exception:
    rate = 8000.0  # no benchmark: a cautious guess for an H100-class card
# 40 s for loading the data and the first cuDNN autotuning; 85% of the measured rate for
# validation, logging and checkpoints.
print(max(1000, int(0.85 * rate * max(0.0, budget - 40) / batch) // 100 * 100))
PY
)
fi

budget=$((TOTAL - $(date +%s) + start - 25))    # 25 s for the summary and slack
((budget > 0)) || fail "stage: no time left for training (TOTAL=$TOTAL s)"   # timeout 0 = none
if [[ -n $resume_from ]]; then
  if [[ $resume_from != "$RUN" ]]; then
    mkdir -p "$RUN" && cp -r "$FROM/." "$RUN/" || fail "stage: could not copy $FROM to $RUN"
  fi
  args=(--resume "$RUN" --device "$DEVICE")
  [[ -n $STEPS ]] && args+=(--steps "$STEPS")
  say "training: resuming $RUN, budget ${budget} s" | tee -a "$LOG"
else
  every=$(( steps / 10 > 0 ? steps / 10 : 1 ))
  read -r -a train_dirs <<<"$TRAIN_DIRS"
  read -r -a extra <<<"$EXTRA"
  args=(--run-dir "$RUN" --train-dirs "${train_dirs[@]}" --val-dir "$VAL_DIR"
        --batch-size "$BATCH" --learning-rate "$LR" --warmup-steps "$WARMUP" --schedule cosine
        --steps "$steps" --val-every "$every" --checkpoint-every "$every"
        --log-every $(( every < 200 ? every : 200 )) --seed "$SEED" --device "$DEVICE" "${extra[@]}")
  [[ $INIT != none ]] && args+=(--init-weights "$INIT")
  say "training: $steps steps of $BATCH, budget ${budget} s" | tee -a "$LOG"
fi
# --preserve-status: vdsr's own code (130: stopped with a checkpoint), not timeout's 124.
timeout --preserve-status -s TERM -k 20 "$budget" $VDSR train "${args[@]}" 2>&1 | tee -a "$LOG"
code=${PIPESTATUS[0]}
say "train exit $code" | tee -a "$LOG"
if [[ $code != 0 && $code != 130 ]]; then
  fail "stage: training failed (exit $code)"   # at start (bad input) vdsr itself wrote nothing
fi

"$PYTHON" - "$RUN" "$code" "$(($(date +%s) - start))" "${resume_from:+resumed}" >"$TMP/stage.json" <<'PY'
import csv, json, sys
from vdsr.train.runfolder import RunFolder
from vdsr.weights import read_metadata

run, code, seconds, resumed = RunFolder(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
state, config = run.load_checkpoint(), run.read_config()
rows = list(csv.DictReader(open(run.metrics_path))) if run.metrics_path.exists() else []
summary = {
    "status": "finished" if code == 0 else "stopped",  # stopped: run the stage again to go on
    "resumed": bool(resumed),
    "step": int(state["step"]),
    "steps": config.steps,
    "seconds": seconds,
    "run": str(run.path),
    "last_row": {k: float(v) for k, v in rows[-1].items() if v} if rows else {},
}
for name in ("best", "last"):
    path = run.path / f"{name}.safetensors"
    if path.exists():
        summary[name] = {"weights": str(path), **read_metadata(path).metrics}
print(json.dumps(summary, indent=2))
PY
[[ $? == 0 ]] || fail "stage: could not summarise $RUN"
mkdir -p "$OUT"
cat "$LOG" >>"$OUT/log.txt"
mv "$TMP/stage.json" "$OUT/stage.json"
[[ -e $TMP/gpu.json ]] && mv "$TMP/gpu.json" "$OUT/gpu.json"
rm -rf "$TMP"
cat "$OUT/stage.json"
say "done"
