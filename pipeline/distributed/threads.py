"""Intra-op threads per training process, chosen from the cores this node gives the job.

torch starts one intra-op thread per core in every process. A trainer process next to its DataLoader
workers (each decoding on its own core), or several ranks on one node, then run more busy threads than
there are cores, and every matmul waits on preempted threads: on 2 cores the tiny V-JEPA trained at 0.44
steps/s with 2 threads next to one other busy process, and at 18 steps/s with one thread. The rule: the node's
cores are shared evenly by its training processes, and each process leaves one core per data worker and one
for everything else (its own Python, the loaders' main-thread work, the rest of the machine).
"""

from __future__ import annotations

import os

import torch

ENV = "WM_NUM_THREADS"


def available_cores() -> int:
    """Cores this process may run on (the CPU affinity mask, which SLURM and containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_budget(cores: int, local_processes: int, workers: int) -> int:
    """Intra-op threads for one of `local_processes` training processes that each run `workers` data workers."""
    return max(1, cores // max(1, local_processes) - max(0, workers) - 1)


def apply_thread_budget(local_processes: int, workers: int) -> int | None:
    """Set torch's intra-op threads by `thread_budget`, unless the user chose them.

    WM_NUM_THREADS (a number) wins; OMP_NUM_THREADS set by the user or a launcher (torchrun sets it to 1)
    is left as torch read it. Returns the number set, or None when the user's choice was kept.
    """
    if os.environ.get(ENV):
        threads = int(os.environ[ENV])
    elif os.environ.get("OMP_NUM_THREADS"):
        return None
    else:
        threads = thread_budget(available_cores(), local_processes, workers)
    torch.set_num_threads(threads)
    return threads
