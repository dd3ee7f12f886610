"""What every world-model LightningModule of this project shares."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


class WorldModelModule(pl.LightningModule):
    """Base class of the model families.

    Subclasses call `self.save_hyperparameters()` in `__init__`, set `context_frames`, and implement
    `rollout` (pipeline.models.protocol.WorldModel). The checkpoint records the class path, so that
    `wm eval` and `wm export` can rebuild any family from the checkpoint alone.
    """

    context_frames: int = 1

    def configure_model(self) -> None:
        """Shard the model when the strategy is FSDP2 (pipeline.distributed.fsdp); nothing otherwise."""
        from pipeline.distributed.fsdp import FSDP2Strategy

        trainer = self._trainer
        if trainer is not None and isinstance(trainer.strategy, FSDP2Strategy) and not getattr(self, "_sharded", False):
            trainer.strategy.shard(self)
            self._sharded = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wm_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"
