#!/usr/bin/env bash
# GPU check of the distributed stack on one CUDA machine: V-JEPA under ZeRO-2 and ZeRO-3 for a few dozen steps
# (bf16), the ZeRO-3 EMA against a reference EMA of the gathered weights, export + reload of each checkpoint,
# throughput / MFU / peak memory per stage. Results: launch/gpu_check.json (commit it).
#   bash launch/gpu_check.sh                      tiny V-JEPA on the sample corpus, 40 steps per stage
#   STEPS=60 bash launch/gpu_check.sh --config configs/vjepa/vit_l16.yaml   more `wm fit` arguments go last
#   DRY_RUN=1 bash launch/gpu_check.sh            prints the commands
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-40}
build=("$PY" -m pipeline.cli shards sample --out data/sample)
check=("$PY" -m pipeline.distributed.gpu_check --steps "$STEPS" --out launch/gpu_check.json -- "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "${build[*]}"
  echo "${check[*]}"
  exit 0
fi
[ -f data/sample/videos/manifest.json ] || "${build[@]}"
exec "${check[@]}"
