"""What a run costs and where its time goes: per-rank throughput, data-wait time, and device-hours across restarts.

Every `every_n_steps` optimizer steps each rank reports its samples per second and the fraction of wall time it
spent waiting for its next batch (the DataLoader falling behind shows up here first, and on one rank at a time);
rank 0 logs them as `perf/rank{R}/samples_per_s` and `perf/rank{R}/data_wait`. `perf/device_hours` is the
run's cumulative world size x wall time over every launch: it travels in the checkpoint, so a requeued job
continues the count.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its video (or first tensor)."""
    if isinstance(batch, dict):
        value = batch.get("video", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    else:
        value = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() > 0 else 1


class RunStats(pl.Callback):
    """Log per-rank samples/s and data-wait fraction, and the run's device-hours (kept in the checkpoint)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        """
        Args:
            every_n_steps: optimizer steps between two reports (each report is one small all-gather).
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.device_hours = 0.0  # before this launch
        self._launch_start: float | None = None
        self._last_end: float | None = None
        self._window = [0.0, 0.0, 0.0]  # samples, seconds waiting for data, seconds
        self._step_seen = -1
        self._world = 1

    def run_hours(self) -> float:
        """Device-hours of the run so far: earlier launches plus world size x this launch's wall time."""
        started = self._launch_start if self._launch_start is not None else time.monotonic()
        return self.device_hours + self._world * (time.monotonic() - started) / 3600.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._world = trainer.world_size

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._launch_start = self._last_end = time.monotonic()
        self._window = [0.0, 0.0, 0.0]
        self._step_seen = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        now = time.monotonic()
        if self._last_end is not None:
            self._window[1] += now - self._last_end  # fetching this batch (and the hooks between steps)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        now = time.monotonic()
        if self._last_end is not None:
            self._window[2] += now - self._last_end
        self._last_end = now
        self._window[0] += batch_size(batch)
        if trainer.global_step == self._step_seen or trainer.global_step % self.every_n_steps:
            return
        self._step_seen = trainer.global_step
        samples, wait, seconds = self._window
        self._window = [0.0, 0.0, 0.0]
        mine = torch.tensor([samples / max(seconds, 1e-9), wait / max(seconds, 1e-9)], device=pl_module.device)
        every = trainer.strategy.all_gather(mine).reshape(-1, 2).cpu()
        if trainer.is_global_zero:
            metrics = {"perf/device_hours": self.run_hours()}
            for rank, (rate, waiting) in enumerate(every.tolist()):
                metrics[f"perf/rank{rank}/samples_per_s"] = rate
                metrics[f"perf/rank{rank}/data_wait"] = waiting
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"device_hours": self.run_hours()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.device_hours = float(state_dict.get("device_hours", 0.0))
