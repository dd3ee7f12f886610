"""V-JEPA: predict the target encoder's embeddings of masked spatio-temporal tubes from the visible ones.

The LightningModule owns the training logic (masks, loss, EMA, schedules, monitors); the networks are the
torch-only blocks of pipeline.nn. Masks come in the batch when pipeline.nn.masks.MaskCollator is the data
module's batch_transform; otherwise the module draws them on its device from a seeded generator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.ema_module import EMAWorldModelModule
from pipeline.models.protocol import Rollout, to_unit
from pipeline.nn.losses import collapse_monitors, jepa_l1, normed_targets
from pipeline.nn.masks import MaskCollator, apply_masks, mix_seed
from pipeline.nn.predictor import MaskedPredictor, TokenDecoder
from pipeline.nn.schedules import cosine_increase, ema_momentum, warmup_cosine
from pipeline.nn.vit import VideoViT

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only, none on biases and 1-D parameters (norms, scales)."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "wd_scheduled": True},
        {"params": no_decay, "weight_decay": 0.0, "wd_scheduled": False},
    ]


class ScheduledModule(EMAWorldModelModule):
    """Shared by the V-JEPA modules: normalisation, AdamW with scheduled lr / wd, EMA after each optimizer step."""

    def setup_schedules(self) -> None:
        self.register_buffer("pix_mean", torch.tensor(MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("pix_std", torch.tensor(STD).view(1, 3, 1, 1, 1), persistent=False)

    def preprocess(self, video: Tensor) -> Tensor:
        """uint8 [B, T, C, H, W] -> normalised float [B, C, T, H, W] on the module's device."""
        x = to_unit(video).permute(0, 2, 1, 3, 4)
        if x.shape[1] == 3:
            x = (x - self.pix_mean) / self.pix_std
        return x

    def total_steps(self) -> int:
        if self.hparams.total_steps is not None:
            return int(self.hparams.total_steps)
        est = self.trainer.estimated_stepping_batches
        if not math.isfinite(est):
            raise ValueError("set model.init_args.total_steps or trainer.max_steps: the schedules need a length")
        return int(est)

    def trainable(self) -> Iterable[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("target_encoder."))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = param_groups(self.trainable(), hp.weight_decay)
        return torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=1e-8)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        hp, step, total = self.hparams, self.global_step, self.total_steps()
        lr = warmup_cosine(step, total, hp.warmup_steps, hp.lr, hp.start_lr, hp.final_lr)
        wd = cosine_increase(step, total, hp.weight_decay, hp.final_weight_decay)
        optimizers = self.optimizers()
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in opt.param_groups:
                group["lr"] = lr
                if group.get("wd_scheduled", False):
                    group["weight_decay"] = wd
        self.log_dict({"train/lr": lr, "train/wd": wd}, on_step=True, on_epoch=False)

    def update_ema(self, step: int) -> None:
        target = getattr(self, "target_encoder", None)
        if target is None:
            return
        hp = self.hparams
        m = ema_momentum(step, self.total_steps(), hp.ema_start, hp.ema_final, hp.ema_constant)
        self.ema_step("target_encoder", target, self.encoder, m)
        self.log("train/ema_momentum", m, on_step=True, on_epoch=False)


class VJEPAModule(ScheduledModule):
    """V-JEPA video pretraining (multi-block masks) or latent future prediction (`mask_mode: future`)."""

    def __init__(
        self,
        frames: int = 16,
        context_frames: int = 8,
        patch_size: int = 16,
        tubelet_size: int = 2,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        use_rope: bool = False,
        pred_dim: int = 384,
        pred_depth: int = 12,
        pred_heads: int = 12,
        spatial_scales: tuple[float, ...] = (0.15, 0.7),
        num_blocks: tuple[int, ...] = (8, 2),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        mask_mode: Literal["multiblock", "future"] = "multiblock",
        mask_seed: int = 0,
        lr: float = 6.25e-4,
        start_lr: float = 2e-4,
        final_lr: float = 1e-6,
        warmup_steps: int = 40,
        total_steps: int | None = None,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_start: float = 0.998,
        ema_final: float = 1.0,
        ema_constant: bool = False,
        monitor_every: int = 10,
        pixel_decoder: bool = False,
    ) -> None:
        """
        Args:
            frames: clip length in frames the model trains on (also the rollout window).
            context_frames: frames given as context in rollouts and in "future" masking (a multiple of tubelet_size).
            patch_size: token side in pixels.
            tubelet_size: frames per token.
            dim: encoder width.
            depth: encoder blocks.
            heads: encoder attention heads.
            use_rope: 3-D rotary positions instead of additive 3-D sin-cos ones (encoder and predictor).
            pred_dim: predictor width.
            pred_depth: predictor blocks.
            pred_heads: predictor attention heads.
            spatial_scales: block area per mask generator, as a fraction of the frame.
            num_blocks: blocks per mask generator.
            aspect_ratio: range of block aspect ratios.
            mask_mode: "multiblock" (V-JEPA pretraining) or "future" (hide every tubelet after context_frames).
            mask_seed: seed of the masks drawn on the device when the batch has none.
            lr: peak learning rate (after warmup).
            start_lr: learning rate at step 0.
            final_lr: learning rate at the last step.
            warmup_steps: linear warmup steps.
            total_steps: schedule length; None uses the trainer's estimated stepping batches.
            weight_decay: weight decay at step 0 (matrices only).
            final_weight_decay: weight decay at the last step (cosine increase).
            betas: AdamW betas.
            ema_start: target-encoder momentum at step 0.
            ema_final: target-encoder momentum at the last step (linear schedule).
            ema_constant: keep the momentum at ema_start (V-JEPA 2).
            monitor_every: log collapse monitors every this many steps.
            pixel_decoder: train a light pixel decoder on detached target latents so rollouts also return frames.
        """
        super().__init__()
        self.save_hyperparameters()
        if frames % tubelet_size or context_frames % tubelet_size or not 0 < context_frames < frames:
            raise ValueError(
                f"frames {frames} and context_frames {context_frames} must be multiples of tubelet_size "
                f"{tubelet_size} with 0 < context_frames < frames"
            )
        self.context_frames = context_frames
        self.masker = MaskCollator(
            tubelet_size,
            patch_size,
            spatial_scales,
            num_blocks,
            1.0,
            aspect_ratio,
            mask_mode,
            context_frames,
            mask_seed,
        )
        self.encoder = VideoViT(dim, depth, heads, patch_size, tubelet_size, use_rope=use_rope)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = MaskedPredictor(
            dim, pred_dim, pred_depth, pred_heads, self.masker.num_generators, 4.0, use_rope
        )
        self.decoder = TokenDecoder(dim, patch_size, tubelet_size) if pixel_decoder else None
        self.setup_schedules()

    def batch_masks(self, batch: dict[str, Any], salt: int) -> tuple[list[Tensor], list[Tensor]]:
        """The batch's masks, or masks drawn on the device, seeded by (mask_seed, rank, salt)."""
        if "masks_ctx" in batch and "masks_tgt" in batch:
            ctx, tgt = list(batch["masks_ctx"]), list(batch["masks_tgt"])
            if len(ctx) != self.masker.num_generators or len(tgt) != len(ctx):
                raise ValueError(
                    f"the batch has {len(ctx)} context / {len(tgt)} target masks, the model has "
                    f"{self.masker.num_generators} mask generators: align the MaskCollator with the model's masks"
                )
            if salt in (0, -1):  # once per fit / validation: a collator with another patch size gives bad indices
                t, _, h, w = batch["video"].shape[1:]
                n = (t // self.hparams.tubelet_size) * (h // self.hparams.patch_size) * (w // self.hparams.patch_size)
                if max(int(m.max()) for m in ctx + tgt) >= n:
                    raise ValueError(f"mask indices exceed the {n} tokens of the clip: check the collator's patch size")
            return ctx, tgt
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.hparams.mask_seed, self.global_rank, salt))
        return self.masker.masks(tuple(batch["video"].shape), gen)

    def jepa_loss(self, batch: dict[str, Any], salt: int) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, normed target tokens [B, N, D], normalised clip [B, C, T, H, W]) of a batch."""
        x = self.preprocess(batch["video"])
        grid = self.encoder.patch_embed.grid(x.shape)
        ctx_masks, tgt_masks = self.batch_masks(batch, salt)
        with torch.no_grad():
            h = self.target_encoder(x)
        targets = normed_targets(h)
        preds = []
        for g, (cm, tm) in enumerate(zip(ctx_masks, tgt_masks, strict=True)):
            z = self.encoder(x, cm)
            preds.append(self.predictor(z, grid, cm, tm, g))
        loss = jepa_l1(preds, [apply_masks(targets, m) for m in tgt_masks])
        return loss, targets, h

    def decoder_loss(self, targets: Tensor, video: Tensor) -> Tensor:
        """MSE of the decoder's pixels from detached latents [B, N, D] against the clip uint8 [B, T, C, H, W]."""
        grid = self.encoder.patch_embed.grid(video.permute(0, 2, 1, 3, 4).shape)
        # in float32: under DeepSpeed bf16 the decoder output is bf16 and the pixels are not
        return F.mse_loss(self.decoder(targets.detach(), grid).float(), to_unit(video))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, targets, h = self.jepa_loss(batch, salt=self.global_step)
        self.log("train/jepa_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if self.decoder is not None:
            dec = self.decoder_loss(targets, batch["video"])
            self.log("train/decoder_loss", dec, on_step=True, on_epoch=False)
            loss = loss + dec
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        if self.global_step % self.hparams.monitor_every == 0:
            self.log_dict({f"train/{k}": v for k, v in collapse_monitors(h).items()}, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # fixed masks per validation batch, so validation losses of different steps compare
        loss, _, h = self.jepa_loss(batch, salt=-1 - batch_idx)
        b = batch["video"].shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=b)
        self.log_dict({f"val/{k}": v for k, v in collapse_monitors(h).items()}, sync_dist=True, batch_size=b)
        return loss

    # ---- WorldModel / LatentWorldModel ----

    def _pad_time(self, video: Tensor) -> Tensor:
        """Repeat the last frame so that T is a multiple of the tubelet: [B, T, ...] -> [B, T', ...]."""
        extra = -video.shape[1] % self.hparams.tubelet_size
        return torch.cat([video, video[:, -1:].expand(-1, extra, *video.shape[2:])], dim=1) if extra else video

    def _per_frame(self, tokens: Tensor, grid: tuple[int, int, int], frames: int) -> Tensor:
        """Tubelet tokens [B, T'*S, D] -> per-frame latents [B, frames, S, D] (each tubelet covers tt frames)."""
        t, h, w = grid
        x = tokens.reshape(tokens.shape[0], t, h * w, tokens.shape[-1])
        return x.repeat_interleave(self.hparams.tubelet_size, dim=1)[:, :frames]

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        """uint8 [B, T, C, H, W] -> layer-normed target-encoder latents [B, T, S, D] (S tokens per frame)."""
        x = self.preprocess(self._pad_time(video.to(self.device)))
        grid = self.encoder.patch_embed.grid(x.shape)
        return self._per_frame(normed_targets(self.target_encoder(x)), grid, video.shape[1])

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor | None, horizon: int, future: Tensor | None = None) -> Rollout:
        """Predict `horizon` frames of latents after `context` uint8 [B, Tc, C, H, W] (Tc a multiple of the tubelet).

        Slots beyond the trained clip length are predicted window by window; a window's context is then the
        previous predictions (an approximation: they stand in for context-encoder outputs).
        """
        tt = self.hparams.tubelet_size
        if context.shape[1] % tt or context.shape[1] >= self.hparams.frames:
            raise ValueError(
                f"context of {context.shape[1]} frames must be a multiple of {tt} below {self.hparams.frames}"
            )
        x = self.preprocess(context.to(self.device))
        c, h, w = self.encoder.patch_embed.grid(x.shape)
        s, max_slots, need = h * w, self.hparams.frames // tt, math.ceil(horizon / tt)
        ctx = self.encoder(x)  # (B, c*S, D)
        b, preds = ctx.shape[0], []
        while sum(p.shape[1] for p in preds) < need * s:
            k = min(max_slots - c, need - sum(p.shape[1] for p in preds) // s)
            idx = torch.arange((c + k) * s, device=self.device).expand(b, -1)
            out = self.predictor(ctx, (c + k, h, w), idx[:, : c * s], idx[:, c * s :], 0)
            preds.append(out)
            ctx = torch.cat([ctx, out], dim=1)[:, -c * s :]
        pred = torch.cat(preds, dim=1)  # (B, need*S, D)
        latents = self._per_frame(pred, (need, h, w), horizon)
        frames = None
        if self.decoder is not None:
            frames = self.decoder(pred, (need, h, w))[:, :horizon].clamp(0.0, 1.0)
        target = None
        if future is not None:
            target = self.embed(torch.cat([context, future.to(context.device)], dim=1))[:, context.shape[1] :]
        return Rollout(frames=frames, latents=latents, target_latents=target)
