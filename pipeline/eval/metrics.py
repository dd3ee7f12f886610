"""Per-horizon metric states (torchmetrics, so every state is synced across ranks on compute).

At horizon h: PSNR / SSIM / LPIPS of predicted frame h vs true frame h; FVD of context + prediction[:h]
vs context + truth[:h]; latent L1 and cosine error of predicted vs target latents at step h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from pipeline.eval.features import Extractors
from pipeline.eval.fvd import FrechetDistance
from pipeline.eval.i3d import MIN_FRAMES
from pipeline.models.protocol import Rollout

FVD_PAD_RULE = (f"I3D input = context + first h frames (real: truth, generated: prediction); a clip shorter than "
                f"{MIN_FRAMES} frames is padded to {MIN_FRAMES} by repeating its last frame")


def pad_to_min_frames(video: Tensor, minimum: int = MIN_FRAMES) -> Tensor:
    """[B, T, C, H, W] -> [B, max(T, minimum), C, H, W], repeating the last frame."""
    missing = minimum - video.shape[1]
    if missing <= 0:
        return video
    return torch.cat([video, video[:, -1:].expand(-1, missing, -1, -1, -1)], dim=1)


class HorizonMetrics(nn.Module):
    """Metric states of one horizon. update(...) per batch; compute() -> {name: float} (synced)."""

    def __init__(self, extractors: Extractors) -> None:
        super().__init__()
        self.ex = extractors
        self.count = SumMetric()
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # per-image PSNR, averaged
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.lpips = MeanMetric()
        self.fvd = FrechetDistance(dim=400)
        self.latent_l1, self.latent_cos_err = MeanMetric(), MeanMetric()
        self.seen = {"frames": False, "latents": False}

    @torch.no_grad()
    def update(self, out: Rollout, context: Tensor, truth: Tensor) -> None:
        """out: rollout of horizon h; context: float [B, Tc, C, H, W] in [0, 1]; truth: float [B, h, C, H, W]."""
        self.count.update(torch.tensor(float(context.shape[0]), device=context.device))
        if out.frames is not None:
            self.seen["frames"] = True
            pred, true = out.frames[:, -1].float().clamp(0, 1), truth[:, -1]
            self.psnr.update(pred, true)
            self.ssim.update(pred, true)
            if self.ex.lpips is not None:
                self.lpips.update(self.ex.lpips(pred, true))
            if self.ex.i3d is not None:
                real = pad_to_min_frames(torch.cat([context, truth], 1))
                fake = pad_to_min_frames(torch.cat([context, out.frames.float().clamp(0, 1)], 1))
                self.fvd.update(self.ex.i3d(real).to(context.device), real=True)
                self.fvd.update(self.ex.i3d(fake).to(context.device), real=False)
        if out.latents is not None and out.target_latents is not None:
            self.seen["latents"] = True
            pred, target = out.latents[:, -1].flatten(1).float(), out.target_latents[:, -1].flatten(1).float()
            self.latent_l1.update((pred - target).abs().mean(1))
            self.latent_cos_err.update(1.0 - F.cosine_similarity(pred, target, dim=1))

    def compute(self, absent: dict[str, str]) -> dict[str, float]:
        """Synced values; metrics that cannot be computed go into `absent` with the reason."""
        values: dict[str, float] = {"count": float(self.count.compute())}
        if self.seen["frames"]:
            values["psnr"] = float(self.psnr.compute())
            values["ssim"] = float(self.ssim.compute())
            if self.ex.lpips is not None:
                values[self.ex.names["lpips"]] = float(self.lpips.compute())
            else:
                absent["lpips"] = self.ex.info["lpips"].get("reason", "LPIPS weights absent")
            if self.ex.i3d is not None:
                try:  # compute() syncs first, so every rank sees the same total count
                    values[self.ex.names["fvd"]] = float(self.fvd.compute())
                except ValueError as err:
                    absent["fvd"] = f"not computable: {err}"
            else:
                absent["fvd"] = self.ex.info["i3d"].get("reason", "I3D weights absent")
        else:
            for name in ("psnr", "ssim", "lpips", "fvd"):
                absent[name] = "the model predicts no frames (no pixel decoder)"
        if self.seen["latents"]:
            values["latent_l1"] = float(self.latent_l1.compute())
            values["latent_cos_err"] = float(self.latent_cos_err.compute())
        else:
            absent["latent_l1"] = absent["latent_cos_err"] = "the model returns no latents with target_latents"
        return values

