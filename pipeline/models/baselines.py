"""Reference world models without learned parameters: real leaderboard rows and test models.

CopyLastFrame predicts that nothing moves; LinearExtrapolation continues the last per-pixel change.
Both implement the WorldModel contract (pipeline.models.protocol) and fit in Lightning without an
optimizer, so they run through the same callbacks, checkpoints and `wm eval` as any family.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.base import WorldModelModule
from pipeline.models.protocol import Rollout, to_unit


class _Baseline(WorldModelModule):
    """Shared plumbing: pixel-space rollout, optional pooled-pixel latents, one-step validation loss."""

    def __init__(self, context_frames: int = 2, latent_pool: int = 0) -> None:
        """
        Args:
            context_frames: context frames the baseline is evaluated with by default.
            latent_pool: if > 0, also return latents = frames average-pooled by this factor (and the
                same embedding of the true future as target_latents), to exercise latent metrics.
        """
        super().__init__()
        self.save_hyperparameters()
        self.context_frames, self.latent_pool = context_frames, latent_pool

    def predict_frames(self, context: Tensor, horizon: int) -> Tensor:
        """context: float [B, Tc, C, H, W] in [0, 1] -> [B, horizon, C, H, W] in [0, 1]."""
        raise NotImplementedError

    def embed_float(self, frames: Tensor) -> Tensor:
        """[B, T, C, H, W] in [0, 1] -> [B, T, C * (H/p) * (W/p)] pooled pixels."""
        b, t = frames.shape[:2]
        pooled = F.avg_pool2d(frames.flatten(0, 1), self.latent_pool)
        return pooled.reshape(b, t, -1)

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        """uint8 [B, T, C, H, W] -> [B, T, D] latents (needs latent_pool > 0)."""
        if self.latent_pool <= 0:
            raise ValueError("embed needs latent_pool > 0")
        return self.embed_float(to_unit(video))

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor | None, horizon: int, future: Tensor | None = None) -> Rollout:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        frames = self.predict_frames(to_unit(context), horizon)
        if self.latent_pool <= 0:
            return Rollout(frames=frames)
        target = self.embed(future[:, :horizon]) if future is not None else None
        return Rollout(frames=frames, latents=self.embed_float(frames), target_latents=target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        return None  # nothing to learn; Lightning skips the optimisation step

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        video = batch["video"]
        tc = min(self.context_frames, video.shape[1] - 1)
        pred = self.rollout(video[:, :tc], None, 1).frames
        loss = F.mse_loss(pred[:, 0], to_unit(video[:, tc]))
        self.log("val/mse_1", loss, batch_size=video.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> None:
        return None


class CopyLastFrame(_Baseline):
    """Predicts the last context frame for every future step."""

    def predict_frames(self, context: Tensor, horizon: int) -> Tensor:
        return context[:, -1:].expand(-1, horizon, -1, -1, -1).contiguous()


class LinearExtrapolation(_Baseline):
    """Continues the last per-pixel change: x[Tc-1+k] = x[Tc-1] + k (x[Tc-1] - x[Tc-2]), clipped to [0, 1]."""

    def predict_frames(self, context: Tensor, horizon: int) -> Tensor:
        last = context[:, -1:]
        if context.shape[1] < 2:
            return last.expand(-1, horizon, -1, -1, -1).contiguous()
        step = last - context[:, -2:-1]
        k = torch.arange(1, horizon + 1, device=context.device, dtype=context.dtype).view(1, -1, 1, 1, 1)
        return (last + k * step).clamp(0, 1)
