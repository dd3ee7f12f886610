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
    slurm = in_srun_step()  # an allocation's shell carries SLURM_NTASKS of processes that do not exist yet
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = _env_int("RANK", *(["SLURM_PROCID"] if slurm else []), "OMPI_COMM_WORLD_RANK") or 0
        world = _env_int("WORLD_SIZE", *(["SLURM_STEP_NUM_TASKS"] if slurm else []), "OMPI_COMM_WORLD_SIZE") or 1
    local = _env_int("LOCAL_RANK", *(["SLURM_LOCALID"] if slurm else []), "OMPI_COMM_WORLD_LOCAL_RANK") or 0
    node = node_rank_from_env()
    if not 0 <= rank < world:
        raise RuntimeError(f"rank {rank} is outside world size {world}: check the launcher's environment")
    return DistEnv(rank=rank, world_size=world, local_rank=local, node_rank=node)


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class LaunchError(RuntimeError):
    """The launcher's environment does not describe the world the trainer was configured for."""


def in_srun_step() -> bool:
    """Whether this process is a task of a SLURM job step started by srun (not the salloc shell or batch script).

    srun sets SLURM_STEP_NUM_TASKS for its tasks; an allocation's shell and the batch script carry the job's
    SLURM_NTASKS without it, and there one process starts the others itself.
    """
    return _env_int("SLURM_STEP_NUM_TASKS") is not None


def torchelastic_launched() -> bool:
    """Whether torchrun (TorchElastic) started this process; it may itself run inside an srun step."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def _slurm_job_steps() -> tuple[int, int] | None:
    """(tasks, nodes) of the srun step running this process, or None outside a multi-task srun step."""
    if not in_srun_step() or torchelastic_launched():
        return None
    tasks = _env_int("SLURM_STEP_NUM_TASKS")
    if tasks is None or tasks <= 1:
        return None
    nodes = _env_int("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1
    return tasks, nodes


def node_rank_from_env() -> int:
    """This node's index: NODE_RANK (Lightning, local.sh), GROUP_RANK (torchrun), CROSS_RANK (DeepSpeed launcher)."""
    return _env_int("NODE_RANK", "GROUP_RANK", "CROSS_RANK", *(["SLURM_NODEID"] if in_srun_step() else [])) or 0


def check_world(devices: int, num_nodes: int, slurm_managed: bool) -> None:
    """Fail loudly when the launcher's world differs from the trainer's `devices x num_nodes`.

    Accepted: one srun task per process (sbatch launch/slurm.sbatch), torchrun on every node (also started by
    `srun --ntasks-per-node=1 torchrun ...`; the SLURM step then has one task per node), the DeepSpeed launcher,
    and one process that starts the others itself (local.sh, also inside `salloc --ntasks-per-node=8`).

    devices: processes per node the trainer expects (`trainer.devices`).
    num_nodes: nodes the trainer expects (`trainer.num_nodes`).
    slurm_managed: whether the trainer takes ranks from SLURM (False, e.g., for an interactive job name),
        in which case a multi-task SLURM step would start `devices` processes per task.
    The silent fallback this prevents: N processes each training alone on the full data.
    """
    expected = devices * num_nodes
    hint = "set trainer.devices / trainer.num_nodes to match the launcher, or relaunch with matching counts"
    slurm = _slurm_job_steps()
    if slurm is not None:
        tasks, nodes = slurm
        if not slurm_managed:
            raise LaunchError(
                f"SLURM started {tasks} tasks but the trainer does not take its ranks from SLURM (interactive job "
                "name?); each task would train alone. Launch with `sbatch launch/slurm.sbatch` or `srun` in a batch "
                "job, or run one task and let the trainer start its processes"
            )
        if tasks != expected or nodes != num_nodes:
            raise LaunchError(
                f"SLURM started {tasks} tasks on {nodes} nodes but the trainer expects devices={devices} x "
                f"num_nodes={num_nodes} = {expected} processes: {hint} (one task per GPU: --ntasks-per-node=devices)"
            )
        return
    world = _env_int("WORLD_SIZE")
    if world is not None and world != expected:
        raise LaunchError(
            f"WORLD_SIZE={world} from the launcher but the trainer expects devices={devices} x "
            f"num_nodes={num_nodes} = {expected} processes: {hint}"
        )
    local_world = _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE")
    if local_world is not None and local_world != devices:
        raise LaunchError(f"the launcher started {local_world} processes on this node but trainer.devices={devices}")
    if num_nodes > 1 and world is None:
        raise LaunchError(
            f"num_nodes={num_nodes} needs a launcher that starts the processes on every node "
            "(launch/slurm.sbatch, launch/torchrun.sh, launch/deepspeed.sh); none was detected"
        )


def check_rank(global_rank: int) -> None:
    """Fail when the rank the trainer derived differs from the launcher's RANK (e.g., a missing node rank)."""
    slurm = in_srun_step() and not torchelastic_launched()
    launcher_rank = _env_int("RANK", *(["SLURM_PROCID"] if slurm else []))
    launcher_world = _env_int("WORLD_SIZE", *(["SLURM_STEP_NUM_TASKS"] if slurm else []))
    if launcher_rank is not None and launcher_world not in (None, 1):
        if launcher_rank != global_rank:
            raise LaunchError(
                f"the launcher says RANK={launcher_rank} but the trainer computed rank {global_rank} "
                f"(node rank {node_rank_from_env()}): set NODE_RANK on every node"
            )
