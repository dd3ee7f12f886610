"""ResumeState: a model drawing noise from the global generators reproduces its losses after a resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader

from pipeline.distributed.resume import ResumeState


class NoisyModel(BoringModel):
    """Loss with noise from torch's global generator (like diffusion noise or dropout); records losses."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[int, float] = {}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.layer(batch + torch.randn_like(batch))
        loss = out.pow(2).mean()
        self.losses[self.global_step] = float(loss)
        return loss


def _trainer(steps: int, root: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip


def _data() -> DataLoader:
    # every batch the same: Lightning restarts a plain DataLoader's epoch on resume, and only noise should differ
    return DataLoader(torch.ones(64, 32), batch_size=4)


def _resumed_losses(root: Path, callbacks: list[pl.Callback]) -> dict[int, float]:
    pl.seed_everything(0)
    first = NoisyModel()
    trainer = _trainer(3, root, list(callbacks))
    trainer.fit(first, _data())
    trainer.save_checkpoint(root / "mid.ckpt")
    torch.manual_seed(1234)  # a new process starts from other random states
    second = NoisyModel()
    _trainer(6, root, list(callbacks)).fit(second, _data(), ckpt_path=root / "mid.ckpt")
    return second.losses


def test_random_state_is_restored_on_resume(tmp_path: Path) -> None:
    pl.seed_everything(0)
    straight = NoisyModel()
    _trainer(6, tmp_path, [ResumeState()]).fit(straight, _data())
    resumed = _resumed_losses(tmp_path / "with", [ResumeState()])
    assert sorted(resumed) == [3, 4, 5]
    assert [resumed[s] for s in (3, 4, 5)] == [straight.losses[s] for s in (3, 4, 5)]
    without = _resumed_losses(tmp_path / "without", [])
    assert [without[s] for s in (3, 4, 5)] != [straight.losses[s] for s in (3, 4, 5)]  # what the callback fixes
