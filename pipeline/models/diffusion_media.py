"""Sample videos of a video model at validation: context | truth | prediction, to disk and the logger."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor


def comparison_frames(context: Tensor, truth: Tensor, pred: Tensor) -> np.ndarray:
    """context [B, Tc, C, H, W], truth/pred [B, Tf, C, H, W] in [0, 1] -> uint8 [Tc + Tf, B*H, 3*W + 4, C].

    Each output frame shows, per clip (stacked vertically): the last context frame | the true frame |
    the predicted frame; during the context both right panels show the context frame itself.
    """
    ctx_last = context[:, -1:].expand(-1, truth.shape[1], -1, -1, -1)
    head = torch.cat([context, context, context], dim=-1)  # (B, Tc, C, H, 3W)
    tail = torch.cat([ctx_last, truth, pred.to(truth.dtype)], dim=-1)
    video = torch.cat([head, tail], dim=1)
    video = torch.nn.functional.pad(video, (0, 4))  # a dark margin on the right keeps the panels readable
    b, t, c, h, w = video.shape
    video = video.permute(1, 0, 3, 4, 2).reshape(t, b * h, w, c)  # stack clips vertically
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def strip_image(context: Tensor, truth: Tensor, pred: Tensor) -> np.ndarray:
    """One PNG-able image: per clip a row of context + truth and a row of context + prediction. uint8 [H', W', C]."""
    top = torch.cat([context, truth], dim=1)
    bottom = torch.cat([context, pred.to(truth.dtype)], dim=1)
    rows = torch.stack([top, bottom], dim=1).flatten(0, 1)  # (2B, T, C, H, W)
    n, t, c, h, w = rows.shape
    img = rows.permute(0, 3, 1, 4, 2).reshape(n * h, t * w, c)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's log directory (the logger's, else the trainer's root dir)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_sample_media(directory: Path, name: str, frames: np.ndarray, strip: np.ndarray, fps: int = 4) -> list[Path]:
    """Write NAME.gif (frames [T, H, W, C] uint8) and NAME.png (strip) into directory; returns the paths."""
    import imageio.v2 as imageio

    directory.mkdir(parents=True, exist_ok=True)
    rgb = frames if frames.shape[-1] == 3 else np.repeat(frames[..., :1], 3, axis=-1)
    gif, png = directory / f"{name}.gif", directory / f"{name}.png"
    imageio.mimsave(gif, list(rgb), duration=1000 / fps, loop=0)
    imageio.imwrite(png, strip if strip.shape[-1] == 3 else strip[..., 0])
    return [gif, png]


def log_sample_videos(trainer: pl.Trainer, context: Tensor, truth: Tensor, pred: Tensor, step: int) -> list[Path]:
    """Save the comparison as a GIF and a PNG strip under RUN/samples/ and give them to loggers that take media.

    A failing media logger only warns: sample videos must never stop a training run.
    """
    frames, strip = comparison_frames(context, truth, pred), strip_image(context, truth, pred)
    paths = save_sample_media(run_dir(trainer) / "samples", f"step_{step:07d}", frames, strip)
    for logger in trainer.loggers:
        try:
            if hasattr(logger, "log_video"):  # wandb
                logger.log_video("val/samples", videos=[str(paths[0])], step=step)
            elif hasattr(logger, "log_image"):
                logger.log_image("val/samples", images=[strip], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
                logger.experiment.add_image("val/samples", strip, step, dataformats="HWC")
        except Exception as err:  # noqa: BLE001 - media logging is best effort
            warnings.warn(f"could not log sample videos to {type(logger).__name__}: {err}", stacklevel=2)
    return paths
