"""Lightning strategies used by configs/trainer/: DDP and DeepSpeed ZeRO with checks that fail early and clearly.

- Both check the launcher's world against `devices x num_nodes` when the Trainer is built (pipeline.distributed.env),
  so a misconfigured job stops before any process trains alone.
- `ZeroStrategy` refuses a machine without CUDA while the config is being instantiated, with one line that says
  what to use instead, rather than a traceback from inside `trainer.fit`.
- `ZeroStrategy` writes its checkpoint directories atomically (write to a temporary directory, then swap).

Errors are `ConfigError`, a SystemExit: jsonargparse and Lightning let it through, and the process ends with the
message alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeed
from typing_extensions import override

from pipeline.distributed.env import LaunchError, check_rank, check_world, node_rank_from_env


class ConfigError(SystemExit):
    """A configuration that cannot run here; ends the program with its message (exit status 1), no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"wm: {message}")


def require_cuda(what: str) -> None:
    """Raise ConfigError unless a CUDA device is visible."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{what} needs CUDA GPUs and none is visible on this machine. Use `--config configs/trainer/cpu.yaml` "
            "(or configs/trainer/ddp.yaml with --trainer.accelerator cpu --trainer.precision 32-true) here."
        )


class DeepSpeedLauncherEnvironment(LightningEnvironment):
    """The DeepSpeed launcher's variables: it names the node rank CROSS_RANK, which Lightning does not read."""

    @staticmethod
    @override
    def detect() -> bool:
        return "CROSS_RANK" in os.environ and "LOCAL_RANK" in os.environ

    @override
    def node_rank(self) -> int:
        return node_rank_from_env()


def _default_environment() -> DeepSpeedLauncherEnvironment | None:
    return DeepSpeedLauncherEnvironment() if DeepSpeedLauncherEnvironment.detect() else None


class _WorldCheck:
    """Mixin: validate the launcher's world each time the ranks are (re)computed."""

    num_processes: int
    num_nodes: int
    cluster_environment: Any
    global_rank: int

    def set_world_ranks(self) -> None:
        try:
            check_world(self.num_processes, self.num_nodes, isinstance(self.cluster_environment, SLURMEnvironment))
            super().set_world_ranks()  # type: ignore[misc]
            check_rank(self.global_rank)
        except LaunchError as err:
            raise ConfigError(str(err)) from None


class DDPStrategy(_WorldCheck, _LightningDDP):
    """Lightning DDP (NCCL on GPU, gloo on CPU) that refuses a launcher world not matching devices x num_nodes."""

    def __init__(
        self,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        """
        Args:
            find_unused_parameters: let DDP tolerate parameters without gradients (slower; only if needed).
            static_graph: tell DDP the graph is the same every step (enables some optimisations).
            gradient_as_bucket_view: gradients as views into the all-reduce buckets (saves memory).
            process_group_backend: "nccl", "gloo" or None for Lightning's choice (nccl on GPU, gloo on CPU).
        """
        super().__init__(
            cluster_environment=_default_environment(),
            process_group_backend=process_group_backend,
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
        )


class ZeroStrategy(_WorldCheck, _LightningDeepSpeed):
    """DeepSpeed ZeRO stage 2 or 3 (optionally CPU offload); needs CUDA; checkpoint directories written atomically."""

    def __init__(
        self,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        pin_memory: bool = True,
        logging_batch_size_per_gpu: int = 1,
    ) -> None:
        """
        Args:
            stage: ZeRO stage: 2 shards optimizer state and gradients, 3 also shards the parameters.
            offload_optimizer: keep optimizer state in CPU memory (and step there).
            offload_parameters: keep parameters in CPU memory (stage 3 only).
            allgather_bucket_size: elements per all-gather bucket (memory versus communication overlap).
            reduce_bucket_size: elements per reduce bucket.
            pin_memory: page-lock offloaded tensors (faster host-device copies).
            logging_batch_size_per_gpu: batch size DeepSpeed reports in its own throughput logs.
        """
        require_cuda(f"DeepSpeed ZeRO stage {stage}")
        if stage not in (2, 3):
            raise ConfigError(f"strategy.init_args.stage must be 2 or 3, got {stage}")
        if offload_parameters and stage != 3:
            raise ConfigError("strategy.init_args.offload_parameters needs stage 3")
        super().__init__(
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            allgather_bucket_size=allgather_bucket_size,
            reduce_bucket_size=reduce_bucket_size,
            pin_memory=pin_memory,
            logging_batch_size_per_gpu=logging_batch_size_per_gpu,
            cluster_environment=_default_environment(),
        )

    @override
    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        # every rank writes its shards into the temporary directory; rank 0 swaps it in once all have finished
        final = Path(filepath)
        tmp = final.with_name(f".{final.name}.tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("zero_ckpt_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("zero_ckpt_written")
        if self.is_global_zero:
            replace_dir(tmp, final)
        self.barrier("zero_ckpt_swapped")


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory `src` to `dst`, replacing it; at every instant `dst` or `dst.old` is a complete checkpoint."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
