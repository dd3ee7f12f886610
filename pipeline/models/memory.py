"""Activation checkpointing for every family: `wm fit ... --activation_checkpointing blocks`.

Each transformer block (the same units `--compile blocks` compiles) keeps only its input during the forward
and recomputes its activations in the backward: about one block's activations in memory instead of all of
them, for one more forward. The block's own `forward` is wrapped in place, so parameter names and checkpoints
do not change and compilation and FSDP2 apply on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.compile import blocks_of

CheckpointMode = Literal["off", "blocks"]


def _recomputed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation, EMA targets: nothing to recompute
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.__wrapped__ = forward  # type: ignore[attr-defined]
    return run


def checkpoint_activations(module: nn.Module, mode: CheckpointMode = "blocks") -> list[nn.Module]:
    """Recompute the activations of every block of `module` in the backward; returns the wrapped blocks."""
    if mode not in ("off", "blocks"):
        raise ValueError(f"activation checkpointing must be off or blocks, got {mode!r}")
    if mode == "off":
        return []
    blocks = blocks_of(module)
    for block in blocks:
        if not hasattr(block.forward, "__wrapped__"):
            block.forward = _recomputed(block.forward)
    return blocks
