"""Modules with EMA copies that follow the optimizer: one EMA update right after each real optimizer step.

The EMA is accumulated in fp32 whatever the module's precision (`ema_master`, saved in the checkpoint as
`wm_ema_fp32`; per rank under ZeRO-3, where each rank keeps its shards), and it skips every step the
optimizer skipped: NonFiniteGuard's, and DeepSpeed's own skips of steps with non-finite gradients.

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
from torch import Tensor, nn

from pipeline.distributed.guard import NonFiniteGuard, deepspeed_engine
from pipeline.models.base import WorldModelModule
from pipeline.nn.ema import ema_update_module_

MASTER_KEY = "wm_ema_fp32"


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
        """Update the EMA copies after optimizer step `step` (1 for a run's first step); subclasses implement it
        with `ema_step`."""
        raise NotImplementedError

    @property
    def ema_master(self) -> dict[str, dict[str, Tensor]]:
        """Per EMA copy, the fp32 accumulators of its low-precision weights (plain tensors, not module state:
        a precision plugin or DeepSpeed casting the module to bf16 leaves them in fp32)."""
        return self.__dict__.setdefault("_ema_master", {})

    def ema_step(self, name: str, target: nn.Module, online: nn.Module, momentum: float) -> None:
        """target <- EMA of online, accumulated in fp32 under `name` (one name per EMA copy)."""
        ema_update_module_(target, online, momentum, master=self.ema_master.setdefault(name, {}))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[MASTER_KEY] = {n: {k: v.detach().cpu() for k, v in m.items()} for n, m in self.ema_master.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.ema_master.clear()
        self.ema_master.update({n: dict(m) for n, m in (checkpoint.get(MASTER_KEY) or {}).items()})

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
        engine = deepspeed_engine(self.trainer)
        if engine is not None and not engine.was_step_applied():  # DeepSpeed skipped it (non-finite gradients)
            skipped = True
        if not skipped:
            with torch.profiler.record_function("wm.ema"):  # a phase of `wm bench profile`
                self.update_ema(self.global_step + 1)  # the trainer counts this step once the hook returns
