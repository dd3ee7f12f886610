#!/usr/bin/env bash
# Multi-node DDP with torchrun's c10d rendezvous. Run the same command on every node:
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 RDZV_ID=job42 bash launch/torchrun.sh \
#     --config configs/trainer/ddp.yaml --config configs/vjepa/vit_l16.yaml
#   DRY_RUN=1 bash launch/torchrun.sh ...   prints the command instead of running it
# Also under SLURM, one task per node: srun --ntasks-per-node=1 bash launch/torchrun.sh ... (RDZV_ID defaults to
# the job id there). RDZV_ENDPOINT is host:port of any one node, reachable from all; RDZV_ID must be the same on
# every node and unique per job. A failed worker restarts all of them up to MAX_RESTARTS times; restarted workers
# resume from the run's newest checkpoint (--ckpt_path auto, which a --ckpt_path of yours overrides).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
MAX_RESTARTS=${MAX_RESTARTS:-3}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
TORCHRUN=${TORCHRUN:-torchrun}
if [ "$NNODES" -gt 1 ]; then
  if [ -z "${RDZV_ENDPOINT:-}" ]; then
    echo "torchrun.sh: NNODES=$NNODES needs RDZV_ENDPOINT=host:port of one node, reachable from every node" >&2
    exit 2
  fi
  case "${RDZV_ENDPOINT%:*}" in
    127.*|localhost|::1|"[::1]")
      if [ "${ALLOW_LOOPBACK:-0}" != 1 ]; then
        echo "torchrun.sh: RDZV_ENDPOINT=$RDZV_ENDPOINT is reachable from this machine only; use a host name or" \
          "address of node 0 (ALLOW_LOOPBACK=1 runs all $NNODES nodes on this machine)" >&2
        exit 2
      fi ;;
  esac
  RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-}}
  if [ -z "$RDZV_ID" ]; then
    echo "torchrun.sh: NNODES=$NNODES needs RDZV_ID, the same unique value on every node of this job" >&2
    exit 2
  fi
fi
RDZV_ENDPOINT=${RDZV_ENDPOINT:-127.0.0.1:29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-wm-$$}}
# the world size goes last so that no --config can contradict what this launcher starts
launch "$TORCHRUN" --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --max-restarts "$MAX_RESTARTS" \
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
  -m pipeline.cli fit --ckpt_path auto "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE"
