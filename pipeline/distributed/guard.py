"""Skip optimizer steps whose loss or gradients are not finite; stop after too many in a row."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class NonFiniteGuard(pl.Callback):
    """Counts and skips optimizer steps with a non-finite loss or gradient; raises after `max_consecutive`.

    A skipped step sets every gradient to None, so torch optimizers leave those parameters, their
    moments and their weight decay untouched. The decision is reduced across ranks (max), so every
    rank skips the same steps and the replicas stay identical.

    Under DeepSpeed the engine owns the (partitioned) gradients and skips a step with non-finite ones
    itself (ZeroStrategy sets `bf16.check_grad_overflow`; the check is reduced over all ranks); the guard
    then counts the engine's skipped steps (`skipped_steps`) and applies the same consecutive limit.
    """

    def __init__(self, max_consecutive: int = 10, check_gradients: bool = True) -> None:
        """
        Args:
            max_consecutive: stop the run after this many non-finite optimizer steps in a row.
            check_gradients: also treat non-finite gradients (with a finite loss) as a bad step.
        """
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.check_gradients = check_gradients
        self.skipped = 0
        self.consecutive = 0
        self._bad_loss = False
        self._engine_skips: int | None = None  # DeepSpeed's skipped_steps when last looked at

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        engine = deepspeed_engine(trainer)
        self._engine_skips = None if engine is None else int(engine.skipped_steps)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        # sticky across gradient-accumulation micro-batches until the optimizer step
        self._bad_loss = self._bad_loss or not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if deepspeed_engine(trainer) is not None:  # counted after the engine's step, in on_train_batch_end
            self._bad_loss = False
            return
        bad = self._bad_loss or (self.check_gradients and not _grads_finite(pl_module))
        self._bad_loss = False
        flag = torch.tensor(float(bad), device=pl_module.device)
        bad = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if not bad:
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self._count(trainer, pl_module, 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        engine = deepspeed_engine(trainer)
        if engine is None or self._engine_skips is None:
            return
        skips = int(engine.skipped_steps)
        new, self._engine_skips = skips - self._engine_skips, skips
        if new > 0:
            self._count(trainer, pl_module, new)
        elif engine.was_step_applied():
            self.consecutive = 0

    def _count(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> None:
        self.skipped += steps
        self.consecutive += steps
        pl_module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient (global step "
                f"{trainer.global_step}, {self.skipped} skipped in total): lower the learning rate, enable gradient "
                "clipping, check the data, or resume from an earlier checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict["skipped"])
        self.consecutive = int(state_dict["consecutive"])


def deepspeed_engine(trainer: pl.Trainer) -> Any | None:
    """The DeepSpeed engine of a DeepSpeed strategy (it owns the gradients and the optimizer step), else None."""
    return getattr(trainer.strategy, "deepspeed_engine", None)


def _grads_finite(module: torch.nn.Module) -> bool:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return math.isfinite(float(norm))
