"""Exponential moving averages of parameters (target encoders, EMA weights). Torch only.

Under DeepSpeed ZeRO-3 the rank-local shard of a parameter lives in `param.ds_tensor` and `param.data` is
an empty placeholder, except for small parameters below the persistence threshold (and parameters that are
gathered at the moment): DeepSpeed keeps their full values in `param.data`, and forward passes and
GatheredParameters read that copy, not the shard. An EMA of partitioned parameters therefore updates each
rank's shard in place (target and online modules are partitioned the same way) and, where a full copy
exists, that copy as well. ZeRO-3 is recognised by these attributes alone; this module never imports DeepSpeed.

Precision: an EMA step moves a weight by (1 - momentum) x (online - target), which at momentum 0.998 is below
half a bf16 ulp of most weights: an EMA kept in bf16 (DeepSpeed bf16 casts the whole module, EMA copy included)
stops moving. `ema_update_module_` therefore accumulates low-precision targets in an fp32 copy (`master`, a
plain dict the caller keeps and checkpoints) and writes the rounded result back into the target.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def local_shards(params: Iterable[nn.Parameter | Tensor]) -> list[Tensor]:
    """The tensors that hold each parameter's values on this rank (ZeRO-3 shard or the full tensor)."""
    return [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in params]


def full_copy(p: nn.Parameter | Tensor) -> Tensor | None:
    """The full-size `data` a ZeRO-3 parameter holds next to its shard (persistent or gathered), else None.

    None for a parameter without a shard (its `data` is already what `local_shards` returns) and for a
    partitioned one whose `data` is released.
    """
    shard = getattr(p, "ds_tensor", None)
    if shard is None or p.data.numel() != getattr(p, "ds_numel", -1) or p.data.numel() == 0:
        return None
    if p.data.untyped_storage().data_ptr() == shard.untyped_storage().data_ptr():
        return None  # the shard is a view of the full tensor: updating the shard already updated it
    return p.data


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
        torch._foreach_lerp_(t, [b.to(a.device, a.dtype) for a, b in zip(t, o, strict=True)], 1.0 - momentum)


def _full_copy_pairs(
    target: list[nn.Parameter], online: list[nn.Parameter]
) -> tuple[list[int], list[Tensor], list[Tensor]]:
    """(indices, target, online) full copies of the ZeRO-3 target parameters that have one."""
    index, t_full, o_full = [], [], []
    for i, (t, o) in enumerate(zip(target, online, strict=True)):
        tf = full_copy(t)
        if tf is None:
            continue
        of = full_copy(o) if hasattr(o, "ds_tensor") else o.data
        if of is None or of.numel() != tf.numel():
            # the online values exist only as a shard here: the target's full copy would fall behind its shard
            raise ValueError(
                f"target parameter {i} holds its full ZeRO-3 values but the online one does not: gather both "
                "modules' parameters or neither before the EMA update"
            )
        index.append(i)
        t_full.append(tf)
        o_full.append(of)
    return index, t_full, o_full


@torch.no_grad()
def ema_accumulate_(
    target: list[Tensor], online: list[Tensor], momentum: float, master: dict[str, Tensor], keys: list[str]
) -> None:
    """EMA of `online` into `target`; targets not in float32 are accumulated in `master[key]` (fp32).

    master: the caller's fp32 accumulators by key, created here from the target's values when missing (or of
        another shape); float32 targets need none and are updated in place.
    """
    if len({len(target), len(online), len(keys)}) != 1:
        raise ValueError(f"{len(target)} targets, {len(online)} online tensors and {len(keys)} keys")
    exact = [i for i, t in enumerate(target) if t.dtype == torch.float32]
    ema_update_([target[i] for i in exact], [online[i] for i in exact], momentum)
    low = [i for i, t in enumerate(target) if t.dtype != torch.float32]
    if not low:
        return
    acc = []
    for i in low:
        m = master.get(keys[i])
        if m is None or m.shape != target[i].shape:
            m = target[i].detach().float().clone()
        master[keys[i]] = m = m.to(target[i].device, torch.float32)
        acc.append(m)
    ema_update_(acc, [online[i].float() for i in low], momentum)
    torch._foreach_copy_([target[i] for i in low], acc)


@torch.no_grad()
def ema_update_module_(target: nn.Module, online: nn.Module, momentum: float,
                       master: dict[str, Tensor] | None = None) -> None:  # fmt: skip
    """EMA of every parameter of `online` into `target` (same architecture), ZeRO-3 aware.

    Shards are updated first; then the full copies ZeRO-3 keeps of persistent (small) or gathered
    parameters, with the same arithmetic on the same values, so copy and shard stay equal. With `master`
    (a dict the caller keeps), low-precision targets are accumulated in fp32 (see the module docstring);
    without it they are updated in their own dtype.
    """
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameters, online has {len(o_params)}")
    index, t_full, o_full = _full_copy_pairs(t_params, o_params)  # checked before anything is updated
    targets, onlines = local_shards(t_params) + t_full, local_shards(o_params) + o_full
    if master is None:
        ema_update_(targets, onlines, momentum)
        return
    keys = [f"shard.{i}" for i in range(len(t_params))] + [f"full.{i}" for i in index]
    ema_accumulate_(targets, onlines, momentum, master, keys)
