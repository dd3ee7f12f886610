from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from pipeline.models.diffusion_media import comparison_frames, log_sample_videos, strip_image


def _clips() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    context = torch.full((2, 2, 3, 4, 4), 0.2)
    truth = torch.full((2, 3, 3, 4, 4), 0.6)
    pred = torch.full((2, 3, 3, 4, 4), 1.0)
    return context, truth, pred


def test_comparison_panels_hold_context_truth_and_prediction() -> None:
    frames = comparison_frames(*_clips())
    assert frames.shape == (5, 2 * 4, 3 * 4 + 4, 3) and frames.dtype == np.uint8
    ctx, truth, pred = round(0.2 * 255), round(0.6 * 255), 255
    assert np.all(frames[:2, :, :12] == ctx)  # during the context every panel shows it
    assert np.all(frames[2:, :, 0:4] == ctx) and np.all(frames[2:, :, 4:8] == truth)
    assert np.all(frames[2:, :, 8:12] == pred) and np.all(frames[:, :, 12:] == 0)
    strip = strip_image(*_clips())
    assert strip.shape == (2 * 2 * 4, 5 * 4, 3)
    assert np.all(strip[0:4, 8:] == truth) and np.all(strip[4:8, 8:] == pred) and np.all(strip[:, :8] == ctx)


@pytest.mark.slow
def test_sample_videos_reach_disk_and_an_offline_wandb_run(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="wm-test")
    trainer = pl.Trainer(logger=logger, accelerator="cpu", default_root_dir=str(tmp_path))
    context, truth, _ = _clips()
    pred = torch.rand(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(0))  # GIF merges identical frames
    context[:, 1] = 0.4
    gif, png = log_sample_videos(trainer, context, truth, pred, step=7)
    logger.experiment.finish()
    assert gif.name == "step_0000007.gif" and len(imageio.mimread(gif)) == 5
    assert imageio.imread(png).shape == (16, 20, 3)
    logged = list(tmp_path.glob("wandb/offline-run-*/files/media/videos/val/samples_*.gif"))
    assert len(logged) == 1 and len(imageio.mimread(logged[0])) == 5
