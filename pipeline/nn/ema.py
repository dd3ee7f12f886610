"""Exponential moving averages of parameters (target encoders, EMA weights). Torch only.

Under DeepSpeed ZeRO-3 a parameter's `data` is an empty placeholder and the rank-local shard lives
in `param.ds_tensor`; `local_shards` returns those shards so that an EMA of partitioned parameters
updates each rank's shard in place (target and online modules are partitioned the same way).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def local_shards(params: Iterable[nn.Parameter | Tensor]) -> list[Tensor]:
    """The tensors that hold each parameter's values on this rank (ZeRO-3 shard or the full tensor)."""
    return [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in params]


@torch.no_grad()
def ema_update_(target: Iterable[Tensor], online: Iterable[Tensor], momentum: float) -> None:
    """In place: target <- momentum * target + (1 - momentum) * online.

    momentum 1.0 leaves the target unchanged, 0.0 copies the online values.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t, o = list(target), list(online)
    if len(t) != len(o):
        raise ValueError(f"target has {len(t)} tensors, online has {len(o)}")
    for a, b in zip(t, o, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: target {tuple(a.shape)} vs online {tuple(b.shape)}")
    if t:
        torch._foreach_lerp_(t, [b.to(a.dtype) for a, b in zip(t, o, strict=True)], 1.0 - momentum)


@torch.no_grad()
def ema_update_module_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """EMA of every parameter of `online` into `target` (same architecture), ZeRO-3 aware."""
    ema_update_(local_shards(target.parameters()), local_shards(online.parameters()), momentum)
