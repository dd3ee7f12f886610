"""The WorldModel contract: what evaluation, leaderboards, analysis and planning rely on.

Every model family implements `rollout`; nothing downstream touches a family's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Rollout:
    """What a model predicts for `horizon` frames after its context.

    frames:         [B, horizon, C, H, W] float in [0, 1], or None for a model without a pixel decoder.
    latents:        [B, horizon, ...] predicted embeddings (time on dim 1), or None.
    target_latents: [B, horizon, ...] the model's embedding of the true future, same shape as
                    `latents`, or None when the model cannot embed the truth (or it was not given).
    rewards:        [B, horizon] predicted rewards, for models with a reward head (RSSM), else None.
    """

    frames: Tensor | None = None
    latents: Tensor | None = None
    target_latents: Tensor | None = None
    rewards: Tensor | None = None

    def __post_init__(self) -> None:
        if self.frames is None and self.latents is None:
            raise ValueError("a Rollout needs frames or latents (or both)")
        if self.latents is not None and self.target_latents is not None:
            if self.latents.shape != self.target_latents.shape:
                raise ValueError(
                    f"latents {tuple(self.latents.shape)} and target_latents "
                    f"{tuple(self.target_latents.shape)} must have the same shape"
                )

    @property
    def horizon(self) -> int:
        ref = self.frames if self.frames is not None else self.latents
        return int(ref.shape[1])


@runtime_checkable
class WorldModel(Protocol):
    """A model that continues a clip.

    context_frames: how many context frames the model was trained with (evaluation default).
    rollout(context, actions, horizon, future=None):
        context: uint8 [B, Tc, C, H, W]
        actions: float [B, Tc + horizon, A] or None (row t is the action taken after frame t)
        horizon: number of frames to predict after the context
        future:  optional uint8 [B, horizon, C, H, W], the true continuation; a model that can embed
                 it fills `target_latents` (it must never use it to predict).
    """

    context_frames: int

    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        future: Tensor | None = None,
    ) -> Rollout: ...


def to_unit(video: Tensor) -> Tensor:
    """uint8 [..., C, H, W] in [0, 255] -> float32 in [0, 1] (on the tensor's device)."""
    if video.dtype != torch.uint8:
        raise TypeError(f"expected uint8 video, got {video.dtype}")
    return video.float().div_(255.0)


@runtime_checkable
class LatentWorldModel(WorldModel, Protocol):
    """A WorldModel that can also embed observed frames, e.g. a goal image for planning.

    embed(video): uint8 [B, T, C, H, W] -> [B, T, ...] latents comparable with Rollout.latents.
    """

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor: ...
