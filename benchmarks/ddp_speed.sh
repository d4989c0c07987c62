#!/usr/bin/env bash
# Training throughput, 1 process (2 threads) vs 2 DDP processes (1 thread each, gloo), CPU.
# Usage: bash benchmarks/ddp_speed.sh [STEPS]   (prints patches/s of each, from metrics.csv)
set -euo pipefail
STEPS=${1:-12}
DATA=${DATA:-../shared/datasets/Set14}
OUT=$(mktemp -d)
common=(train --train-dirs "$DATA" --val-dir none --batch-size 64 --steps "$STEPS" --log-every "$STEPS"
        --checkpoint-every 100000 --device cpu --seed 0)
vdsr "${common[@]}" --run-dir "$OUT/single" --threads 2 >/dev/null 2>&1
python -m torch.distributed.run --standalone --nproc_per_node 2 -m vdsr "${common[@]}" \
    --run-dir "$OUT/ddp" --threads 1 >/dev/null 2>&1
for run in single ddp; do
    echo "$run: $(tail -1 "$OUT/$run/metrics.csv" | cut -d, -f4) patches/s"
done
rm -rf "$OUT"
