"""Shared by the evaluation tests: moving-pattern clips and a small TorchScript feature detector."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def moving_clips(n: int = 6, frames: int = 12, size: int = 32, seed: int = 0) -> Tensor:
    """uint8 [n, frames, 3, size, size]: smooth random textures drifting by one pixel per frame."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bicubic").clamp(0, 1)
    video = torch.stack([torch.roll(base, shifts=t, dims=-1) for t in range(frames)], dim=1)
    return (video * 255).round().to(torch.uint8)


class TinyDetector(nn.Module):
    """The StyleGAN-V detector's call convention ([B, 3, T, H, W] in [-1, 1] -> [B, 400]), tiny and fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16 * 2, 400)

    def forward(self, x: Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> Tensor:
        pooled = F.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1)  # [B, 48]
        motion = F.adaptive_avg_pool3d(x[:, :, 1:] - x[:, :, :-1], (1, 4, 4)).flatten(1) * 10
        return self.proj(torch.cat([pooled, motion], dim=1))


def save_tiny_detector(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(TinyDetector()).save(str(path))
    return path


def sync_worker(rank: int, world: int, port: int, detector: str, out: str) -> None:
    """One gloo rank: evaluate its half of the clips; rank 0 saves the synced metrics."""
    import json
    import os

    import torch.distributed as dist

    from pipeline.eval.features import build_extractors
    from pipeline.eval.rollout import EvalClips, run_horizons
    from pipeline.models.baselines import CopyLastFrame

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        video = moving_clips(n=6, frames=5)[rank::world]  # ranks hold different clips
        ex = build_extractors(i3d_weights=detector, lpips=False)
        result, _ = run_horizons(CopyLastFrame(context_frames=2, latent_pool=8), EvalClips(video, None), [1, 3], 2,
                                 ex, batch_size=2)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()
