"""Action-conditioned V-JEPA (V-JEPA 2-AC style): a frame-causal predictor over per-frame encoder latents.

Each frame is encoded alone (repeated to fill one tubelet) into S patch latents; the predictor sees, per
frame, one action token and those latents, and predicts the next frame's latents. The loss is a
teacher-forced next-frame L1 term plus an `auto_steps` autoregressive rollout term, both against the
layer-normed latents of the frozen (or EMA) encoder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.models.protocol import Rollout, to_unit
from pipeline.models.vjepa import ScheduledModule
from pipeline.nn.losses import collapse_monitors, normed_targets
from pipeline.nn.predictor import FrameCausalPredictor, TokenDecoder
from pipeline.nn.vit import VideoViT


def load_encoder_weights(encoder: torch.nn.Module, path: str) -> None:
    """Load a V-JEPA checkpoint's target encoder (keys `target_encoder.*`) into `encoder`; weights only."""
    from pipeline.models.loading import load_submodule_weights
    from pipeline.models.vjepa import VJEPAModule

    if not Path(path).is_file():
        raise FileNotFoundError(f"encoder checkpoint {path} not found: train one with `wm fit` on configs/vjepa/")
    load_submodule_weights(encoder, path, "target_encoder.", VJEPAModule)


class VJEPAACModule(ScheduledModule):
    """Action-conditioned latent world model trained on clips with actions (e.g. the Atari shards)."""

    def __init__(
        self,
        action_dim: int = 4,
        frames: int = 8,
        context_frames: int = 2,
        patch_size: int = 16,
        tubelet_size: int = 2,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        encoder_mode: Literal["frozen", "ema"] = "frozen",
        encoder_ckpt: str | None = None,
        pred_dim: int = 384,
        pred_depth: int = 12,
        pred_heads: int = 12,
        auto_steps: int = 2,
        lr: float = 4.25e-4,
        start_lr: float = 7.5e-5,
        final_lr: float = 0.0,
        warmup_steps: int = 40,
        total_steps: int | None = None,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.04,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_start: float = 0.998,
        ema_final: float = 1.0,
        ema_constant: bool = False,
        monitor_every: int = 10,
        pixel_decoder: bool = False,
    ) -> None:
        """
        Args:
            action_dim: size of one action vector (the one-hot width for discrete actions).
            frames: clip length the model trains on (also the rollout window).
            context_frames: default number of context frames for evaluation.
            patch_size: token side in pixels.
            tubelet_size: frames per encoder token (each frame is repeated to fill one tubelet).
            dim: encoder width.
            depth: encoder blocks.
            heads: encoder attention heads.
            encoder_mode: "frozen" (fixed encoder, e.g. from encoder_ckpt) or "ema" (trained, EMA targets).
            encoder_ckpt: VJEPAModule checkpoint whose target encoder initialises the encoder, or None.
            pred_dim: predictor width.
            pred_depth: predictor blocks.
            pred_heads: predictor attention heads.
            auto_steps: autoregressive steps of the rollout loss term (0 disables it).
            lr: peak learning rate.
            start_lr: learning rate at step 0.
            final_lr: learning rate at the last step.
            warmup_steps: linear warmup steps.
            total_steps: schedule length; None uses the trainer's estimated stepping batches.
            weight_decay: weight decay at step 0 (matrices only).
            final_weight_decay: weight decay at the last step.
            betas: AdamW betas.
            ema_start: target-encoder momentum at step 0 ("ema" mode).
            ema_final: target-encoder momentum at the last step.
            ema_constant: keep the momentum at ema_start.
            monitor_every: log collapse monitors every this many steps.
            pixel_decoder: train a light pixel decoder on detached latents so rollouts also return frames.
        """
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= auto_steps < frames or not 0 < context_frames < frames:
            raise ValueError(f"need 0 <= auto_steps < frames and 0 < context_frames < frames ({frames})")
        self.context_frames = context_frames
        self.encoder = VideoViT(dim, depth, heads, patch_size, tubelet_size)
        if encoder_ckpt is not None:
            load_encoder_weights(self.encoder, encoder_ckpt)
        self.target_encoder = None
        if encoder_mode == "frozen":
            self.encoder.requires_grad_(False)
        else:
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = FrameCausalPredictor(dim, action_dim, pred_dim, pred_depth, pred_heads)
        self.decoder = TokenDecoder(dim, patch_size, tubelet_size) if pixel_decoder else None
        self.setup_schedules()

    def encode_frames(self, video: Tensor, target: bool) -> Tensor:
        """uint8 [B, T, C, H, W] -> layer-normed latents [B, T, S, D], each frame encoded alone."""
        b, t = video.shape[:2]
        x = self.preprocess(video.to(self.device))  # (B, C, T, H, W)
        x = x.transpose(1, 2).reshape(b * t, x.shape[1], 1, *x.shape[-2:])
        x = x.expand(-1, -1, self.hparams.tubelet_size, -1, -1)  # one frame fills a tubelet
        frozen = self.hparams.encoder_mode == "frozen"
        net = self.target_encoder if target and not frozen else self.encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not (target or frozen)):
            z = normed_targets(net(x))
        return z.reshape(b, t, z.shape[1], z.shape[2])

    def grid_hw(self, video: Tensor) -> tuple[int, int]:
        p = self.hparams.patch_size
        return video.shape[-2] // p, video.shape[-1] // p

    def actions_of(self, batch: dict[str, Any]) -> Tensor:
        actions = batch.get("actions")
        if actions is None:
            raise ValueError("VJEPAACModule needs `actions` in the batch: train it on shards with KEY.actions.npy")
        if actions.shape[-1] != self.hparams.action_dim:
            raise ValueError(
                f"actions have width {actions.shape[-1]}, model.init_args.action_dim is {self.hparams.action_dim}"
            )
        return actions.float()

    def ac_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(teacher-forced loss, autoregressive loss, target latents [B, T, S, D], context latents) of a batch."""
        video, actions = batch["video"], self.actions_of(batch)
        hw = self.grid_hw(video)
        z_in = self.encode_frames(video, target=False)
        z_tgt = self.encode_frames(video, target=True) if self.target_encoder is not None else z_in.detach()
        tf = (self.predictor(z_in, actions, hw)[:, :-1] - z_tgt[:, 1:]).abs().mean()
        seq = z_in[:, :1]
        for step in range(self.hparams.auto_steps):
            out = self.predictor(seq, actions[:, : step + 1], hw)
            seq = torch.cat([seq, out[:, -1:]], dim=1)
        ar = (seq[:, 1:] - z_tgt[:, 1 : seq.shape[1]]).abs().mean() if seq.shape[1] > 1 else tf.new_zeros(())
        return tf, ar, z_tgt, z_in

    def decoder_loss(self, z: Tensor, video: Tensor) -> Tensor:
        """MSE of frames decoded from detached latents [B, T, S, D] against the clip uint8 [B, T, C, H, W]."""
        # in float32: under DeepSpeed bf16 the decoder output is bf16 and the pixels are not
        return F.mse_loss(self.decode(z.detach(), self.grid_hw(video)).float(), to_unit(video))

    def decode(self, z: Tensor, hw: tuple[int, int]) -> Tensor:
        """Latents [B, T, S, D] -> frames [B, T, C, H, W] (the first frame of each decoded tubelet)."""
        b, t = z.shape[:2]
        out = self.decoder(z.reshape(b * t, *z.shape[2:]), (1, *hw))[:, 0]
        return out.reshape(b, t, *out.shape[1:])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        tf, ar, z_tgt, _ = self.ac_loss(batch)
        loss = tf + ar
        self.log_dict({"train/tf_loss": tf, "train/ar_loss": ar}, on_step=True, on_epoch=False)
        if self.decoder is not None:
            dec = self.decoder_loss(z_tgt, batch["video"])
            self.log("train/decoder_loss", dec, on_step=True, on_epoch=False)
            loss = loss + dec
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if self.global_step % self.hparams.monitor_every == 0:
            monitors = collapse_monitors(z_tgt.flatten(1, 2))
            self.log_dict({f"train/{k}": v for k, v in monitors.items()}, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        tf, ar, _, _ = self.ac_loss(batch)
        metrics = {"val/loss": tf + ar, "val/tf_loss": tf, "val/ar_loss": ar}
        self.log_dict(metrics, prog_bar=True, sync_dist=True, batch_size=batch["video"].shape[0])
        return tf + ar

    # ---- WorldModel / LatentWorldModel ----

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        """uint8 [B, T, C, H, W] -> layer-normed target latents [B, T, S, D]."""
        return self.encode_frames(video, target=True)

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor | None, horizon: int, future: Tensor | None = None) -> Rollout:
        """Autoregressive latent rollout: context uint8 [B, Tc, C, H, W], actions [B, Tc + horizon, A]."""
        tc = context.shape[1]
        if actions is None or actions.shape[1] < tc + horizon - 1:
            raise ValueError(f"rollout needs actions [B, >= {tc + horizon - 1}, A] for {tc} context frames")
        actions = self.actions_of({"actions": actions.to(self.device)})
        hw = self.grid_hw(context)
        seq = self.encode_frames(context, target=False)
        window = self.hparams.frames
        for _ in range(horizon):
            start = max(0, seq.shape[1] - window)  # slide over the trained clip length
            out = self.predictor(seq[:, start:], actions[:, start : seq.shape[1]], hw)
            seq = torch.cat([seq, out[:, -1:]], dim=1)
        latents = seq[:, tc:]
        frames = self.decode(latents, hw).clamp(0.0, 1.0) if self.decoder is not None else None
        target = self.embed(future) if future is not None else None
        return Rollout(frames=frames, latents=latents, target_latents=target)
