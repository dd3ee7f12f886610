#!/usr/bin/env bash
# One machine: `wm fit` starts one process per device itself (DDP over GPUs, or gloo on CPUs).
#   DEVICES=4 bash launch/local.sh --config configs/trainer/ddp.yaml --config configs/vjepa/base.yaml
#   DRY_RUN=1 bash launch/local.sh ...   prints the command instead of running it
# Resume after a crash or kill: add --ckpt_path last (the run's last.ckpt, data position included).
set -euo pipefail
WM=${WM:-wm}
DEVICES=${DEVICES:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# the world size goes last so that no --config can contradict what this launcher starts
cmd=("$WM" fit "$@" --trainer.num_nodes 1 --trainer.devices "$DEVICES")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS ${cmd[*]}"
  exit 0
fi
exec "${cmd[@]}"
