#!/usr/bin/env bash
# One machine: `wm fit` starts one process per device itself (DDP over GPUs, or gloo on CPUs).
#   DEVICES=4 bash launch/local.sh --config configs/trainer/ddp.yaml --config configs/vjepa/vit_l16.yaml
#   DRY_RUN=1 bash launch/local.sh ...   prints the command instead of running it
# Resume after a crash or kill: the same command with --ckpt_path last (the run's newest checkpoint, data position
# included). Also inside an allocation (`salloc --ntasks-per-node=8`, then this script).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
WM=${WM:-wm}
DEVICES=${DEVICES:-1}
# the world size goes last so that no --config can contradict what this launcher starts
launch "$WM" fit "$@" --trainer.num_nodes 1 --trainer.devices "$DEVICES"
