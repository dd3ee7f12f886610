#!/usr/bin/env bash
# DeepSpeed launcher over the hosts of a hostfile (one line per node: "HOST slots=GPUS"); run it on the first
# host, which starts the processes on every host over passwordless ssh (pdsh).
#   HOSTFILE=hostfile bash launch/deepspeed.sh --config configs/trainer/deepspeed_stage_3.yaml \
#     --config configs/vjepa/vit_l16.yaml
#   DRY_RUN=1 bash launch/deepspeed.sh ...   prints the command instead of running it
# Nodes and GPUs per node are read from the hostfile and passed to the trainer, so the two always agree. The
# launcher forwards only a few variables to the other hosts; the ones set here (and OMP_NUM_THREADS or
# WM_NUM_THREADS when you set them) go through a DeepSpeed environment file (DS_ENV_FILE).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HOSTFILE=${HOSTFILE:-hostfile}
DEEPSPEED=${DEEPSPEED:-deepspeed}
MASTER_PORT=${MASTER_PORT:-29500}
if [ ! -f "$HOSTFILE" ]; then
  echo "deepspeed.sh: hostfile '$HOSTFILE' not found (set HOSTFILE; lines look like 'node0 slots=8')" >&2
  exit 2
fi
hosts=$(grep -cEv '^[[:space:]]*(#|$)' "$HOSTFILE" || true)
slots=$(grep -Ev '^[[:space:]]*(#|$)' "$HOSTFILE" | sed -nE 's/.*slots=([0-9]+).*/\1/p' | sort -u)
if [ "$hosts" -lt 1 ] || [ "$(echo "$slots" | wc -l)" -ne 1 ] || [ -z "$slots" ]; then
  echo "deepspeed.sh: '$HOSTFILE' needs at least one 'HOST slots=N' line, with the same N on every line" >&2
  exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-$(grep -Ev '^[[:space:]]*(#|$)' "$HOSTFILE" | head -n1 | awk '{print $1}')}
if [ "${DRY_RUN:-0}" != 1 ]; then
  export DS_ENV_FILE=${DS_ENV_FILE:-$PWD/.deepspeed_env}
  launch_env | tr ' ' '\n' | grep -v '^$' > "$DS_ENV_FILE"
fi
# --no_local_rank: the trainer reads LOCAL_RANK from the environment; a --local_rank argument would be an unknown key
# the world size goes last so that no --config can contradict what this launcher starts
launch "$DEEPSPEED" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --no_local_rank --module pipeline.cli fit "$@" --trainer.num_nodes "$hosts" --trainer.devices "$slots"
