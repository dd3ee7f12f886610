"""FSDP2 (torch's fully_shard) through Lightning's ModelParallelStrategy, for every family without model changes.

Parameters, gradients and optimizer state are sharded over all ranks (data parallel only). With the default
mixed-precision policy the sharded parameters and the optimizer stay in fp32 (the master weights), each unit
is all-gathered in bf16 for its forward and backward, and gradients are reduced in fp32. Units: every block
of a `blocks` ModuleList (transformer blocks), then every direct child module of the LightningModule
(encoders, predictors, EMA copies, heads). A child's public methods besides `forward` (e.g. `embed`) gather
its parameters too. Checkpoints are torch distributed checkpoints, committed like ZeRO ones (a tag per save,
then `latest`), and load at another world size.
"""

from __future__ import annotations

import inspect
import secrets
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from typing_extensions import override

from pipeline.distributed.checkpoint import commit_tag, committed_tag
from pipeline.distributed.strategy import ConfigError, _options, _parameters, _WorldCheck

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The modules fully_shard wraps, innermost first: blocks, then the LightningModule's children with params."""
    if any(True for _ in module.parameters(recurse=False)):
        names = [n for n, _ in module.named_parameters(recurse=False)]
        raise ConfigError(f"FSDP2 shards submodules; parameters {names} sit on {type(module).__name__} itself")
    blocks = [block for name, child in module.named_modules() if isinstance(child, nn.ModuleList)
              and name.rsplit(".", 1)[-1] == "blocks" for block in child]  # fmt: skip
    children = [child for child in module.children() if any(True for _ in child.parameters())]
    return blocks + children


def forward_methods(child: nn.Module) -> list[str]:
    """Public methods a family calls on a child besides forward (defined by the child's class, not nn.Module)."""
    names = []
    for cls in type(child).__mro__:
        if cls in (nn.Module, object):
            break
        names += [n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("_") and n != "forward"]
    return sorted(set(names))


class FSDP2Strategy(_WorldCheck, ModelParallelStrategy):
    """Fully sharded data parallel over every rank (FSDP2), fp32 master weights, distributed checkpoints."""

    def __init__(
        self,
        param_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16",
        reduce_dtype: Literal["float32", "bfloat16"] = "float32",
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        timeout: float = 1800.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            param_dtype: dtype the sharded fp32 parameters are gathered in for compute.
            reduce_dtype: dtype of the gradient reduce-scatter.
            reshard_after_forward: free each unit's gathered parameters after its forward (less memory, one more
                all-gather in the backward).
            process_group_backend: "nccl", "gloo" or None for Lightning's choice.
            timeout: seconds a collective may wait for the other ranks before the run fails (NCCL watchdog).
            options: further keyword arguments of lightning.pytorch.strategies.ModelParallelStrategy.
        """
        from datetime import timedelta

        owned = {"data_parallel_size", "tensor_parallel_size", "process_group_backend", "timeout"}
        extra = _options(_parameters(ModelParallelStrategy.__init__), options, owned, "ModelParallelStrategy")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, process_group_backend=process_group_backend,
                         timeout=timedelta(seconds=timeout), **extra)  # fmt: skip
        self.param_dtype, self.reduce_dtype = DTYPES[param_dtype], DTYPES[reduce_dtype]
        self.reshard_after_forward = reshard_after_forward

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # data parallel over every rank
        super().setup_environment()

    def shard(self, module: nn.Module) -> None:
        """Apply fully_shard to the units of a WorldModelModule (called from its `configure_model`)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = self.device_mesh["data_parallel"]
        policy = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
        children = set(module.children())
        for unit in shard_units(module):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
            if unit in children:
                for name in forward_methods(unit):
                    register_fsdp_forward_method(unit, name)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Every rank writes its shards into a new tag of the checkpoint directory; rank 0 commits it."""
        directory = Path(self.broadcast(str(filepath)))
        tag = self.broadcast(f"step-{int(checkpoint.get('global_step', 0)):09d}-{secrets.token_hex(3)}")
        super().save_checkpoint(checkpoint, directory / tag, storage_options)
        self.barrier("fsdp_checkpoint_written")
        if self.is_global_zero:
            commit_tag(directory, tag)
        self.barrier("fsdp_checkpoint_committed")

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        tag = committed_tag(path) if path.is_dir() else None
        return super().load_checkpoint(path / tag if tag else path, weights_only)
