#!/usr/bin/env bash
# The paper's sparse splits of COCO 2017 train: easy, hard, extreme, miss50 (+ hidden files).
# Usage: datasets/make_sparse_coco.sh COCO_DIR OUT_DIR [SEED]
set -euo pipefail
coco=${1:?usage: $0 COCO_DIR OUT_DIR [SEED]}
out=${2:?usage: $0 COCO_DIR OUT_DIR [SEED]}
seed=${3:-0}
full="$coco/annotations/instances_train2017.json"
[ -f "$full" ] || { echo "$full: not found (unpack annotations_trainval2017.zip into $coco)" >&2; exit 2; }
mkdir -p "$out"
for protocol in easy hard extreme miss50; do
  comining sparsify --ann "$full" --protocol "$protocol" --seed "$seed" \
    --out "$out/instances_train2017_${protocol}.json" \
    --hidden "$out/instances_train2017_${protocol}_hidden.json"
done
comining check --ann "$out/instances_train2017_hard.json" --images "$coco/train2017"
