"""torch.compile for every family: `wm fit ... --compile blocks` (or `wm bench train --compile`).

Like torchtitan, each transformer block is compiled on its own (`blocks`): the blocks are identical, so one
compiled graph serves them all, compile time stays small, and the training step around them (masking, losses,
EMA, logging) stays eager and flexible. Families without blocks (the RSSM) compile their child modules instead
(`modules`). Compiled modules keep their parameters and state-dict keys (nn.Module.compile works in place), so
checkpoints of compiled and eager runs are interchangeable.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

CompileMode = Literal["off", "blocks", "modules"]


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """Every element of every `blocks` ModuleList inside `module` (transformer blocks of encoders, predictors, DiT)."""
    return [block for name, child in module.named_modules() if isinstance(child, nn.ModuleList)
            and name.rsplit(".", 1)[-1] == "blocks" for block in child]  # fmt: skip


def compile_targets(module: nn.Module, mode: CompileMode) -> list[nn.Module]:
    """The modules `mode` compiles: the blocks (or, without any, the children with parameters), or the children."""
    if mode == "off":
        return []
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    if mode == "modules":
        return children
    return blocks_of(module) or children


def compile_model(module: nn.Module, mode: CompileMode = "blocks", backend: str = "inductor",
                  fullgraph: bool = True) -> list[nn.Module]:  # fmt: skip
    """Compile the targets of `mode` in place; returns them.

    fullgraph: fail at compile time on a graph break instead of silently running parts eagerly.
    """
    if mode not in ("off", "blocks", "modules"):
        raise ValueError(f"compile mode must be off, blocks or modules, got {mode!r}")
    targets = compile_targets(module, mode)
    for target in targets:
        # dynamic=None: a dimension that changes (V-JEPA's masked token counts vary per batch) becomes dynamic after
        # its first recompile instead of recompiling for every new length
        target.compile(backend=backend, fullgraph=fullgraph, dynamic=None)
    return targets


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` (or one of its submodules) was compiled in place by compile_model."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def reset() -> None:
    """Forget compiled graphs (tests compile the same classes under different settings)."""
    torch._dynamo.reset()
