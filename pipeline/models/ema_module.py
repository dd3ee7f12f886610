"""Modules with EMA copies that follow the optimizer: one EMA update right after each real optimizer step.

Lightning runs the callbacks' on_train_batch_end (ModelCheckpoint's among them) before the module's, so an
EMA updated there is saved one update behind and a resumed run drifts from the uninterrupted one. Updating
inside `optimizer_step` puts the update before any checkpoint of that step: a checkpoint taken after step N
holds the EMA after N updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from pipeline.distributed.guard import NonFiniteGuard
from pipeline.models.base import WorldModelModule


def guard_skips(trainer: pl.Trainer) -> int:
    """Optimizer steps the trainer's NonFiniteGuard callbacks have skipped so far (0 without one)."""
    return sum(cb.skipped for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))


class EMAWorldModelModule(WorldModelModule):
    """A WorldModelModule whose `update_ema(step)` runs once per real optimizer step, before checkpoints.

    Not on gradient-accumulation micro-batches (DeepSpeed sends every micro-batch through `optimizer_step`)
    and not on a step NonFiniteGuard skipped: its gradients were dropped, so the online weights did not move.
    """

    _skips_seen: int | None = None

    def update_ema(self, step: int) -> None:
        """Update the EMA copies after optimizer step `step` (1 for a run's first step); subclasses implement it."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        self._skips_seen = None  # a guard restored from a checkpoint carries its count over

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer | pl.core.optimizer.LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        if self._skips_seen is None:
            self._skips_seen = guard_skips(self.trainer)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.trainer.fit_loop._should_accumulate():  # the loop's own test of whether this call steps
            return
        skips = guard_skips(self.trainer)
        skipped, self._skips_seen = skips > self._skips_seen, skips
        if not skipped:
            self.update_ema(self.global_step + 1)  # the trainer counts this step once the hook returns
