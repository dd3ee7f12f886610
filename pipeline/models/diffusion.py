"""Video diffusion world model: a DiT denoiser over clips with per-frame noise levels.

Training (in the spirit of diffusion forcing): each clip is split into context frames, kept
near-clean with a small random noise augmentation, and future frames, noised with levels drawn
from the objective's training distribution; every frame's level is given to the network and the
loss counts only the future frames. Sampling keeps the context at a fixed small level and
integrates the future frames from pure noise (Euler or Heun), and `rollout` repeats that in chunks
to go past the training window. Classifier-free guidance on actions; an EMA copy of the network
does all sampling and evaluation.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor

from pipeline.models.ema_module import EMAWorldModelModule
from pipeline.models.protocol import Rollout, to_unit
from pipeline.nn.autoencoder import FrameAutoencoder, load_frozen_autoencoder
from pipeline.nn.dit import VideoDiT
from pipeline.nn.edm import EDM, RectifiedFlow, Sampler, cfg_combine, sample


class VideoDiffusionModule(EMAWorldModelModule):
    """Action-conditioned video diffusion transformer (EDM or rectified flow), pixel or latent space."""

    def __init__(
        self,
        frames: int = 8,
        context_frames: int = 4,
        resolution: int = 64,
        channels: int = 3,
        action_dim: int = 0,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        attention: Literal["factorised", "full"] = "factorised",
        causal: bool = True,
        objective: Literal["edm", "rectified_flow"] = "edm",
        sigma_data: float = 0.5,
        p_mean: float = -0.4,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 5.0,
        rho: float = 7.0,
        flow_shift: float = 1.0,
        random_context: bool = True,
        independent_noise: bool = True,
        context_noise_train: float = 0.1,
        context_noise_sample: float = 0.02,
        action_drop_prob: float = 0.1,
        guidance_scale: float = 1.0,
        sampler: Sampler = "euler",
        sampling_steps: int = 3,
        sample_seed: int = 0,
        ema_decay: float = 0.999,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        autoencoder: str | None = None,
        sample_videos: int = 2,
    ) -> None:
        """
        Args:
            frames: training window in frames (clips from the data module have this many); also the chunk
                window of `rollout`.
            context_frames: context frames at sampling and evaluation (the rest of the window is predicted).
            resolution: square frame side in pixels.
            channels: colour channels of a frame.
            action_dim: size of an action row (one-hot discrete or continuous); 0 = no action conditioning.
            patch_size: side of the square per-frame patch (in latent pixels when an autoencoder is used).
            width: transformer width.
            depth: number of transformer blocks (factorised attention alternates spatial and temporal ones).
            heads: attention heads.
            mlp_ratio: MLP hidden width as a multiple of `width`.
            attention: "factorised" (spatial then temporal blocks) or "full" (all tokens of the clip).
            causal: a frame attends only to itself and earlier frames.
            objective: "edm" (default) or "rectified_flow".
            sigma_data: EDM data standard deviation (frames are scaled to [-1, 1]).
            p_mean: EDM training log-sigma mean (rectified flow: logit-normal location).
            p_std: EDM training log-sigma std (rectified flow: logit-normal scale).
            sigma_min: EDM smallest sampling sigma.
            sigma_max: EDM largest sampling sigma (the starting noise).
            rho: EDM schedule curvature.
            flow_shift: rectified-flow sampling shift towards high noise (1 = uniform steps).
            random_context: draw the number of context frames per clip in [1, frames - 1] during training, so that
                one model serves any context length; False always uses `context_frames`.
            independent_noise: each future frame gets its own training level (diffusion forcing); False shares one.
            context_noise_train: context frames get a level drawn uniformly up to this in training (augmentation).
            context_noise_sample: the fixed level of context frames at sampling.
            action_drop_prob: probability of dropping a clip's actions in training (classifier-free guidance).
            guidance_scale: classifier-free guidance scale on actions at sampling (1 = conditional only).
            sampler: "euler" or "heun".
            sampling_steps: number of sampler steps (few-step sampling works: 3 by default).
            sample_seed: seed of the generator used by `rollout` when none is given (deterministic sampling).
            ema_decay: decay of the EMA weights used for sampling and evaluation.
            lr: peak AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear learning-rate warmup steps.
            autoencoder: directory of a saved FrameAutoencoder to train in its latent space (frozen); None = pixels.
            sample_videos: clips written as context | truth | prediction videos at each validation (0 = none).
        """
        super().__init__()
        self.save_hyperparameters()
        if not 1 <= context_frames < frames:
            raise ValueError(f"context_frames must be in [1, frames - 1] = [1, {frames - 1}], got {context_frames}")
        self.context_frames = context_frames
        self.autoencoder: FrameAutoencoder | None = load_frozen_autoencoder(autoencoder) if autoencoder else None
        in_ch = self.autoencoder.latent_channels if self.autoencoder else channels
        side = resolution // self.autoencoder.factor if self.autoencoder else resolution
        if side % patch_size:
            raise ValueError(f"model frame side {side} is not divisible by patch_size {patch_size}")
        self.net = VideoDiT(in_ch, None, patch_size, width, depth, heads, mlp_ratio, action_dim, attention, causal)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        if objective == "edm":
            self.objective: EDM | RectifiedFlow = EDM(sigma_data, p_mean, p_std, sigma_min, sigma_max, rho)
        elif objective == "rectified_flow":
            self.objective = RectifiedFlow(p_mean, p_std, flow_shift)
        else:
            raise ValueError(f"objective must be 'edm' or 'rectified_flow', got {objective!r}")

    # ---- encoding -------------------------------------------------------------------------------
    def encode(self, video: Tensor) -> Tensor:
        """uint8 [B, T, C, H, W] -> model space [B, T, C', H', W'] (pixels in [-1, 1] or latents)."""
        x = to_unit(video).mul_(2).sub_(1)
        if self.autoencoder is None:
            return x
        b, t = x.shape[:2]
        with torch.no_grad():
            z = self.autoencoder.encode(x.flatten(0, 1))
        return z.reshape(b, t, *z.shape[1:])

    def decode(self, x: Tensor) -> Tensor:
        """model space [B, T, ...] -> frames [B, T, C, H, W] in [0, 1]."""
        if self.autoencoder is not None:
            b, t = x.shape[:2]
            x = self.autoencoder.decode(x.flatten(0, 1)).reshape(b, t, *self.autoencoder_out_shape())
        return ((x.float() + 1) / 2).clamp_(0, 1)

    def autoencoder_out_shape(self) -> tuple[int, int, int]:
        r = self.hparams.resolution
        return (self.hparams.channels, r, r)

    def frame_actions(self, actions: Tensor | None) -> Tensor | None:
        """[B, T, A] (row t = action taken after frame t) -> [B, T, A] (row t = action that led to frame t)."""
        if actions is None or self.hparams.action_dim == 0:
            return None
        if actions.shape[-1] != self.hparams.action_dim:
            raise ValueError(f"batch actions have {actions.shape[-1]} dims, model action_dim={self.hparams.action_dim}")
        return torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1).float()

    # ---- training -------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """The objective's loss on the future frames of a batch; context frames are near-clean inputs."""
        x0 = self.encode(batch["video"])
        b, t = x0.shape[:2]
        if t < 2:
            raise ValueError(f"clips need at least 2 frames (context + future), got {t}")
        dev = x0.device
        if self.hparams.random_context:
            ctx = torch.randint(1, t, (b,), generator=generator, device=dev)
        else:
            ctx = torch.full((b,), min(self.context_frames, t - 1), device=dev)
        is_ctx = torch.arange(t, device=dev)[None] < ctx[:, None]  # (B, T)
        shape = (b, t) if self.hparams.independent_noise else (b, 1)
        future_level = self.objective.train_levels(shape, generator, dev).expand(b, t)
        lo, hi = self.objective.min_level, self.hparams.context_noise_train
        ctx_level = lo + (hi - lo) * torch.rand((b, t), generator=generator, device=dev)
        level = torch.where(is_ctx, ctx_level, future_level)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        actions = self.frame_actions(batch.get("actions"))
        if self.hparams.action_dim and actions is None:
            raise KeyError("the model is action-conditioned (action_dim > 0) but the batch has no 'actions'")
        drop = None
        if actions is not None and self.training and self.hparams.action_drop_prob > 0:
            drop = torch.rand((b,), generator=generator, device=dev) < self.hparams.action_drop_prob

        def net(x_in: Tensor, c_noise: Tensor) -> Tensor:
            return self.net(x_in, c_noise, actions, drop)

        return self.objective.loss(net, x0, level, noise, ~is_ctx)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    def update_ema(self, step: int) -> None:
        # short warmup of the decay so the EMA is not dominated by the random initialisation
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        self.ema_step("ema_net", self.ema_net, self.net, decay)

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        # fixed noise per batch index makes validation losses comparable across epochs
        gen = torch.Generator(device=batch["video"].device).manual_seed(self.hparams.sample_seed + batch_idx)
        loss = self.diffusion_loss(batch, generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["video"].shape[0])
        if batch_idx == 0 and self.hparams.sample_videos > 0:
            self.write_sample_videos(batch)
        return loss

    def write_sample_videos(self, batch: dict) -> None:
        """Context | truth | prediction of the first clips, written by rank 0.

        Every rank samples (under ZeRO-3 each forward gathers parameters from all ranks, so a forward
        on rank 0 alone would hang); only rank 0 writes and logs.
        """
        from pipeline.models.diffusion_media import log_sample_videos

        n, c = self.hparams.sample_videos, self.context_frames
        video = batch["video"][:n]
        actions = batch.get("actions")
        actions = actions[:n] if actions is not None else None
        pred = self.rollout(video[:, :c], actions, video.shape[1] - c).frames
        if self.trainer.is_global_zero:
            log_sample_videos(self.trainer, to_unit(video[:, :c]), to_unit(video[:, c:]), pred, self.global_step)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            (no_decay if p.ndim < 2 or name.endswith("null_action") else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0}]
        opt = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=(0.9, 0.99))
        warmup = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- sampling -------------------------------------------------------------------------------
    def guided_denoiser(self, net: VideoDiT, context: Tensor, actions: Tensor | None, guidance: float):
        """denoise(x_future [B, F, ...], level [B, F]) -> x_0 estimate of the future given the noised context.

        context: [B, Tc, ...] already noised at `context_noise_sample`; actions: [B, Tc + F, A] per frame or None.
        With guidance != 1 and actions, both branches run and are combined (cfg_combine).
        """
        tc = context.shape[1]
        ctx_level = torch.full(context.shape[:2], self.hparams.context_noise_sample, device=context.device)
        use_cfg = actions is not None and guidance != 1.0

        def denoise(x: Tensor, level: Tensor) -> Tensor:
            full = torch.cat([context, x], dim=1)
            lv = torch.cat([ctx_level, level], dim=1)
            cond = self.objective.denoise(lambda a, c: net(a, c, actions), full, lv)[:, tc:]
            if not use_cfg:
                return cond
            uncond = self.objective.denoise(lambda a, c: net(a, c, None), full, lv)[:, tc:]
            return cfg_combine(cond, uncond, guidance)

        return denoise

    @torch.no_grad()
    def sample_future(
        self, context: Tensor, actions: Tensor | None, n: int, generator: torch.Generator, net: VideoDiT | None = None
    ) -> Tensor:
        """context: model space [B, Tc, ...]; actions: [B, Tc + n, A] per frame or None -> [B, n, ...] model space."""
        net = net if net is not None else self.ema_net
        ctx_level = torch.full(context.shape[:2], self.hparams.context_noise_sample, device=context.device)
        ctx_noise = torch.randn(context.shape, generator=generator, device=context.device, dtype=context.dtype)
        noisy_ctx = self.objective.add_noise(context, ctx_level, ctx_noise)
        noise = torch.randn(
            (context.shape[0], n, *context.shape[2:]), generator=generator, device=context.device, dtype=context.dtype
        )
        denoise = self.guided_denoiser(net, noisy_ctx, actions, self.hparams.guidance_scale)
        levels = self.objective.sampling_levels(self.hparams.sampling_steps).to(context.device)
        return sample(denoise, noise, levels, self.hparams.sampler)

    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        future: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """context uint8 [B, Tc, C, H, W], actions [B, Tc + horizon, A] | None -> frames [B, horizon, C, H, W], [0, 1].

        Autoregressive in chunks of (frames - context_frames): each chunk sees the last context_frames
        frames (or fewer at the start) and is sampled with the EMA network. `future` is not used.
        """
        b, tc = context.shape[:2]
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if actions is not None and self.hparams.action_dim:
            if actions.shape[:2] != (b, tc + horizon):
                want = f"[B, Tc + horizon, A] = [{b}, {tc + horizon}, A]"
                raise ValueError(f"actions must be {want}, got {tuple(actions.shape)}")
        if generator is None:
            generator = torch.Generator(device=context.device).manual_seed(self.hparams.sample_seed)
        history = self.encode(context)
        chunk = self.hparams.frames - self.context_frames
        done = 0
        while done < horizon:
            n = min(chunk, horizon - done)
            ctx = history[:, -self.context_frames :]
            start = history.shape[1] - ctx.shape[1]  # absolute index of the first context frame
            window = None
            if actions is not None and self.hparams.action_dim:
                window = self.frame_actions(actions[:, start : start + ctx.shape[1] + n])
            new = self.sample_future(ctx, window, n, generator)
            history = torch.cat([history, new], dim=1)
            done += n
        return Rollout(frames=self.decode(history[:, tc:]))
