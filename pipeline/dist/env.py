"""Rank, world size and worker identity: the one place that reads them.

Works in the main process (torch.distributed initialised or not) and in DataLoader workers,
under torchrun, SLURM, the DeepSpeed launcher, or a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def dist_env() -> DistEnv:
    """This process's place in the job: torch.distributed if initialised, else the launcher's variables."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = _env_int("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK") or 0
        world = _env_int("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE") or 1
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK") or 0
    node = _env_int("NODE_RANK", "GROUP_RANK", "SLURM_NODEID") or 0
    if not 0 <= rank < world:
        raise RuntimeError(f"rank {rank} is outside world size {world}: check the launcher's environment")
    return DistEnv(rank=rank, world_size=world, local_rank=local, node_rank=node)


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
