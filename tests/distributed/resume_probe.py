"""Callback for the multi-process tests' `wm fit` runs: records, per rank, what every step saw and the final weights.

Writes DIR/rank{R}.jsonl lines {"phase", "step", "epoch", "keys", "loss"} (and "start" lines with the random
state, weights and masks at each step's start) and DIR/rank{R}.weights.pt (a flat float64 copy of the parameters);
loaded by the tests through PYTHONPATH (not a test module itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class Probe(pl.Callback):
    """Record batch keys and losses per step and rank."""

    def __init__(self, out: str, stop_at: int | None = None) -> None:
        """
        Args:
            out: directory for the per-rank records.
            stop_at: stop the fit cleanly after this many optimizer steps (an interrupted run that saved).
        """
        self.out, self.stop_at = Path(out), stop_at

    def _write(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        import hashlib

        rng = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:12]
        weights = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        self._write(trainer, {"phase": "start", "step": trainer.global_step, "rng": rng, "weights": weights,
                              "masks": float(sum(m.double().sum() for m in batch.get("masks_ctx", [])))})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        step = trainer.global_step - 1  # already incremented for this batch's optimizer step
        record = {"phase": "train", "step": step, "epoch": trainer.current_epoch, "keys": list(batch["key"])}
        self._write(trainer, {**record, "loss": float(loss)})
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self._write(trainer, {"phase": "val", "step": trainer.global_step, "keys": list(batch["key"])})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        flat = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        torch.save(flat, self.out / f"rank{trainer.global_rank}.weights.pt")
