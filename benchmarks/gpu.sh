#!/usr/bin/env bash
# The GPU benchmark of issue 16 as one prepared script (benchmarks/gpu.py has the steps):
#   OUT=gpu-out bash benchmarks/gpu.sh [--official FILE.safetensors] [--data SET5_DIR]
#   OUT=/tmp/smoke DEVICE=cpu TOTAL=1500 FACTOR=3 bash benchmarks/gpu.sh --smoke --threads 2
#                                           # tiny sizes, one repeat: to try it on a CPU
# Each step runs as its own process under `timeout -k 10 BUDGET` (its budget, or what is left of
# TOTAL if less; a step with under 15 s left is skipped), writes every number into $OUT/gpu.json as
# soon as it has it, and logs straight to $OUT/log.txt (a file, not a pipe, so a killed step loses
# nothing). $OUT/gpu.json's "_status" says how each step ended (rc 124/137: its timeout).
# Then: python benchmarks/gpu_report.py $OUT/gpu.json  -> the Markdown for BENCHMARKS.md.
#
# On a lent device machine only the repository travels: copy Set5 and the converted official
# weights into an ignored folder and carry it, e.g. once here:
#   echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data
#   cp -r ../shared/datasets/Set5 .gpu-data/
#   vdsr convert ../shared/reference/vdsr_official_matconvnet.mat -o .gpu-data/official.safetensors
# and run with carry [".gpu-data"]:
#   OUT=$OUT bash benchmarks/gpu.sh --data .gpu-data/Set5 --official .gpu-data/official.safetensors
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
TOTAL=${TOTAL:-480}          # seconds for all steps together
FACTOR=${FACTOR:-1}          # multiplies every step's budget (a CPU smoke run: 3)
PYTHON=${PYTHON:-python3}
python3 -c "import vdsr" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# A compile cache that outlives each step's process: a rerun (or a later step) reuses kernels.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/vdsr-inductor-cache}
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
mkdir -p "$OUT"
JSON="$OUT/gpu.json"
LOG="$OUT/log.txt"
start=$(date +%s)

# step budget(s): the most each may take on an H100-class card (expected: well under half).
STEPS="info:30 infer:90 infer_compile:150 e2e:90 accuracy:90 accuracy_compile:90 train:90 train_compile:240"
for entry in $STEPS; do
  name=${entry%%:*}; budget=$((${entry##*:} * FACTOR))
  left=$((TOTAL - ($(date +%s) - start)))
  ((left < budget)) && budget=$left
  if ((budget < 15)); then
    echo "== $name skipped: ${left}s left of TOTAL=$TOTAL" >>"$LOG"
    "$PYTHON" benchmarks/gpu.py mark --json "$JSON" --name "$name" --rc -1 --seconds 0 >>"$LOG" 2>&1
    continue
  fi
  echo "== $name (budget ${budget}s, $(($(date +%s) - start))s so far)" >>"$LOG"
  t0=$(date +%s)
  timeout -k 10 "$budget" "$PYTHON" benchmarks/gpu.py "$name" --json "$JSON" --device "$DEVICE" "$@" \
    >>"$LOG" 2>&1
  rc=$?
  seconds=$(($(date +%s) - t0))
  "$PYTHON" benchmarks/gpu.py mark --json "$JSON" --name "$name" --rc "$rc" --seconds "$seconds" >>"$LOG" 2>&1
  echo "== $name: rc $rc" >>"$LOG"
done
echo "== done in $(($(date +%s) - start))s: $JSON" | tee -a "$LOG"
