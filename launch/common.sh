# Environment every launcher sets before it calls `wm fit` (sourced by the launch scripts, not run alone).
#
# Hangs and failures: the NCCL watchdog tears a hung collective down after TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC (the
# strategies' `timeout` bounds each collective) instead of letting the job sit until its time limit, and the
# flight recorder keeps each rank's last TORCH_NCCL_TRACE_BUFFER_SIZE collectives and dumps them on a timeout to
# ${TORCH_FR_DUMP_TEMP_FILE}<rank> (read them with `python -m torch.distributed.flight_recorder.fr_trace`) to show
# which rank stopped where. Every value can be overridden from the caller's environment.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=${TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC:-600}
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
export TORCH_FR_DUMP_TEMP_FILE=${TORCH_FR_DUMP_TEMP_FILE:-${RUN_DIR:-runs}/nccl_trace/rank_}
# Intra-op threads: `wm fit` shares the node's cores between its ranks and their data workers unless
# OMP_NUM_THREADS (or WM_NUM_THREADS) is set here.

# the variables above, as a prefix of the printed command (DRY_RUN=1)
launch_env() {
  local out="" name
  for name in OMP_NUM_THREADS WM_NUM_THREADS TORCH_NCCL_ASYNC_ERROR_HANDLING TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC \
    TORCH_NCCL_TRACE_BUFFER_SIZE TORCH_NCCL_DUMP_ON_TIMEOUT TORCH_FR_DUMP_TEMP_FILE; do
    [ -n "${!name:-}" ] && out+="$name=${!name} "
  done
  printf '%s' "$out"
}

# run the command, or print it with the environment it gets when DRY_RUN=1
launch() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "$(launch_env)$*"
    exit 0
  fi
  mkdir -p "$(dirname "$TORCH_FR_DUMP_TEMP_FILE")"
  exec "$@"
}
