"""Lightning strategies used by configs/trainer/: DDP and DeepSpeed ZeRO with checks that fail early and clearly.

- Both check the launcher's world against `devices x num_nodes` when the Trainer is built (pipeline.distributed.env),
  so a misconfigured job stops before any process trains alone.
- `ZeroStrategy` refuses a machine without CUDA while the config is being instantiated, with one line that says
  what to use instead, rather than a traceback from inside `trainer.fit`.
- `ZeroStrategy` commits every checkpoint in one atomic step (pipeline.distributed.checkpoint), and makes
  DeepSpeed skip optimizer steps with non-finite gradients under bf16 (`check_grad_overflow`).
- Under SLURM, Lightning's own requeue handler is off: pipeline.distributed.preemption owns the signals.
- Both take `timeout` (seconds a collective may wait before the run fails) and `options`, passed on to the
  Lightning strategy as keyword arguments (`config` for a DeepSpeed config dict or JSON file).

Errors are `ConfigError`, a SystemExit: jsonargparse and Lightning let it through, and the process ends with the
message alone.
"""

from __future__ import annotations

import inspect
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeed
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from pipeline.distributed.checkpoint import save_zero_checkpoint
from pipeline.distributed.env import (
    LaunchError,
    check_rank,
    check_world,
    in_srun_step,
    node_rank_from_env,
    torchelastic_launched,
)


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


def default_environment() -> ClusterEnvironment | None:
    """The cluster environment for the launcher that started this process (None: Lightning's own choice).

    - the DeepSpeed launcher: its node rank is CROSS_RANK, which Lightning does not read;
    - torchrun, also inside an srun step: Lightning's TorchElastic environment (None);
    - an srun task: SLURM ranks, without Lightning's requeue handler (preemption is handled by our callback);
    - an allocation's shell or batch script (salloc, sbatch without srun): it holds SLURM_NTASKS of processes
      that do not exist; Lightning would wait for them, so this process starts them itself.
    """
    if DeepSpeedLauncherEnvironment.detect():
        return DeepSpeedLauncherEnvironment()
    if torchelastic_launched():
        return None
    if in_srun_step() and SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    if "SLURM_NTASKS" in os.environ:
        return LightningEnvironment()
    return None


def _parameters(*callables: Any) -> set[str]:
    return {name for c in callables for name in inspect.signature(c).parameters} - {"self", "args", "kwargs"}


def _options(allowed: set[str], options: dict[str, Any] | None, owned: set[str], what: str) -> dict[str, Any]:
    """`options` as keyword arguments of the wrapped strategy; unknown keys or keys set elsewhere fail."""
    options = dict(options or {})
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"strategy.init_args.options: {what} has no arguments {unknown}")
    clash = sorted(set(options) & owned)
    if clash:
        raise ConfigError(f"strategy.init_args.options sets {clash}: set them as strategy.init_args keys instead")
    return options


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
        timeout: float = 1800.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            find_unused_parameters: let DDP tolerate parameters without gradients (slower; only if needed).
            static_graph: tell DDP the graph is the same every step (enables some optimisations).
            gradient_as_bucket_view: gradients as views into the all-reduce buckets (saves memory).
            process_group_backend: "nccl", "gloo" or None for Lightning's choice (nccl on GPU, gloo on CPU).
            timeout: seconds a collective may wait for the other ranks before the run fails (NCCL watchdog).
            options: further keyword arguments of lightning.pytorch.strategies.DDPStrategy (and of
                DistributedDataParallel, which it passes on), e.g. {"bucket_cap_mb": 100}.
        """
        owned = {"find_unused_parameters", "static_graph", "gradient_as_bucket_view", "process_group_backend",
                 "timeout", "cluster_environment"}  # fmt: skip
        allowed = _parameters(_LightningDDP.__init__, DistributedDataParallel.__init__)
        extra = _options(allowed, options, owned, "DDPStrategy / DistributedDataParallel")
        super().__init__(
            cluster_environment=default_environment(),
            process_group_backend=process_group_backend,
            timeout=timedelta(seconds=timeout),
            find_unused_parameters=find_unused_parameters,
            static_graph=static_graph,
            gradient_as_bucket_view=gradient_as_bucket_view,
            **extra,
        )


class ZeroStrategy(_WorldCheck, _LightningDeepSpeed):
    """DeepSpeed ZeRO stage 2 or 3 (optionally CPU offload); needs CUDA; every checkpoint committed atomically."""

    def __init__(
        self,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        pin_memory: bool = True,
        logging_batch_size_per_gpu: int = 1,
        timeout: float = 1800.0,
        config: dict[str, Any] | str | None = None,
        options: dict[str, Any] | None = None,
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
            timeout: seconds a collective may wait for the other ranks before the run fails (NCCL watchdog).
            config: a whole DeepSpeed config (dict or JSON file) instead of the keys above, as Lightning takes it;
                under bf16 `bf16.check_grad_overflow` is still set unless the config sets it.
            options: further keyword arguments of lightning.pytorch.strategies.DeepSpeedStrategy.
        """
        require_cuda(f"DeepSpeed ZeRO stage {stage}")
        if stage not in (2, 3):
            raise ConfigError(f"strategy.init_args.stage must be 2 or 3, got {stage}")
        if offload_parameters and stage != 3:
            raise ConfigError("strategy.init_args.offload_parameters needs stage 3")
        owned = {"stage", "offload_optimizer", "offload_parameters", "allgather_bucket_size", "reduce_bucket_size",
                 "pin_memory", "logging_batch_size_per_gpu", "timeout", "config", "cluster_environment"}  # fmt: skip
        super().__init__(
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            allgather_bucket_size=allgather_bucket_size,
            reduce_bucket_size=reduce_bucket_size,
            pin_memory=pin_memory,
            logging_batch_size_per_gpu=logging_batch_size_per_gpu,
            timeout=timedelta(seconds=timeout),
            config=config,
            cluster_environment=default_environment(),
            **_options(_parameters(_LightningDeepSpeed.__init__), options, owned, "DeepSpeedStrategy"),
        )

    @override
    def _format_config(self) -> None:
        # Lightning adds {"bf16": {"enabled": True}} for bf16 precision here; DeepSpeed releases differ in
        # whether bf16 steps with non-finite gradients are skipped unless asked, so ask explicitly
        super()._format_config()
        enable_overflow_check(self.config)

    @override
    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        """Every rank writes its shards into a new tag of the checkpoint directory; rank 0 commits it."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        directory = Path(self.broadcast(str(filepath)))
        tag = self.broadcast(f"step-{int(checkpoint.get('global_step', 0)):09d}-{secrets.token_hex(3)}")
        client = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        save_zero_checkpoint(self.deepspeed_engine, directory, client, tag, self.barrier, self.is_global_zero,
                             exclude_frozen_parameters=self.exclude_frozen_parameters)  # fmt: skip


def enable_overflow_check(config: dict[str, Any]) -> dict[str, Any]:
    """Set `bf16.check_grad_overflow` (skip steps with non-finite gradients) where bf16 is on and it is unset."""
    bf16 = config.get("bf16")
    if isinstance(bf16, dict) and bf16.get("enabled"):
        bf16.setdefault("check_grad_overflow", True)
    return config
