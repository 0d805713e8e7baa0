#!/usr/bin/env bash
# The loop benchmark on the demo's GPU recipe (FCOS ResNet-18 at 256 px, 3000 iterations),
# as one device run: the loop with default mining, then with mining at 1x and 1.6x (is the
# larger size still worth its mining time when training already sees the images' own
# 256 px?). Results go to $OUT (default benchmarks/results): loop_gpu.{md,json} and
# loop_gpu_scales.{md,json}.
#   OUT=/some/dir WORK=/tmp/comining_gpu PY=.venv/bin/python benchmarks/gpu_loop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp/comining_gpu}
"$PY" benchmarks/loop.py --recipe gpu --work "$WORK" --methods comining --finish \
    --name loop_gpu --out "$OUT"
"$PY" benchmarks/loop.py --recipe gpu --work "$WORK" --methods comining --finish \
    --review-scales 1 1.6 --name loop_gpu_scales --one-shot-from loop_gpu --out "$OUT"
