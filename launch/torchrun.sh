#!/usr/bin/env bash
# Multi-node DDP with torchrun's c10d rendezvous. Run the same command on every node:
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 bash launch/torchrun.sh \
#     --config configs/trainer/ddp.yaml --config configs/vjepa/base.yaml
#   DRY_RUN=1 bash launch/torchrun.sh ...   prints the command instead of running it
# RDZV_ENDPOINT is host:port of any one node, reachable from all; RDZV_ID must be unique per job.
set -euo pipefail
NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-127.0.0.1:29500}
RDZV_ID=${RDZV_ID:-wm-fit}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
TORCHRUN=${TORCHRUN:-torchrun}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# the world size goes last so that no --config can contradict what this launcher starts
cmd=("$TORCHRUN" --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE"
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID"
  -m pipeline.cli fit "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS ${cmd[*]}"
  exit 0
fi
exec "${cmd[@]}"
