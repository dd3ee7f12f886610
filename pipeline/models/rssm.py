"""RSSM world model (DreamerV3 style): conv encoder/decoder, GRU + categorical latents, reward/continue heads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.models.base import WorldModelModule
from pipeline.models.protocol import Rollout, to_unit
from pipeline.nn import dreamer_math as dm
from pipeline.nn.rssm import ConvDecoder, ConvEncoder, RSSMCore, RSSMState, last_state, mlp


@dataclass
class Imagination:
    """An imagined trajectory of H steps: features [B, H, F], rewards [B, H], continues [B, H] (probabilities)."""

    features: Tensor
    rewards: Tensor
    continues: Tensor
    actions: Tensor


class RSSMModule(WorldModelModule):
    """Recurrent state-space world model trained on frames, actions, rewards and terminals.

    Batch: video uint8 [B, T, C, H, W]; actions float [B, T, A] (one-hot for discrete games);
    rewards float [B, T] and terminals float [B, T] (row t: after the action taken after frame t).
    """

    def __init__(
        self,
        action_dim: int = 4,
        resolution: int = 64,
        channels: int = 3,
        depth: int = 32,
        deter: int = 512,
        stoch: int = 32,
        classes: int = 32,
        hidden: int = 512,
        head_layers: int = 2,
        unimix: float = 0.01,
        reward_bins: int = 255,
        kl_dyn: float = 0.5,
        kl_rep: float = 0.1,
        free_bits: float = 1.0,
        recon_scale: float = 1.0,
        reward_scale: float = 1.0,
        continue_scale: float = 1.0,
        context_frames: int = 4,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        grad_clip: float = 1000.0,
        imag_horizon: int = 15,
        gamma: float = 0.997,
        lam: float = 0.95,
    ) -> None:
        """Build the model.

        Args:
            action_dim: size A of the action vectors (n of a discrete game's one-hot actions; 0 for none).
            resolution: side of the square input frames (64 for Atari; 4 * 2^k).
            channels: channels per frame (3 for RGB).
            depth: channels of the first encoder stage (doubled per stage).
            deter: size of the deterministic GRU state h.
            stoch: number of categorical latent variables in z.
            classes: classes per categorical latent variable.
            hidden: width of the MLPs around the GRU and of the heads.
            head_layers: hidden layers of the reward and continue heads.
            unimix: uniform mixture weight in every categorical (DreamerV3: 0.01).
            reward_bins: two-hot bins of the reward head over symlog space (DreamerV3: 255).
            kl_dyn: weight of KL(sg(posterior) || prior) (dynamics loss).
            kl_rep: weight of KL(posterior || sg(prior)) (representation loss).
            free_bits: nats below which each KL term is clipped (no gradient).
            recon_scale: weight of the image reconstruction loss (summed over pixels).
            reward_scale: weight of the two-hot reward loss.
            continue_scale: weight of the continue-flag loss.
            context_frames: context frames used by evaluation and planning by default.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            grad_clip: global gradient-norm clip applied in the optimizer step (0 disables).
            imag_horizon: imagination horizon for lambda-returns (DreamerV3: 15).
            gamma: discount of lambda-returns (DreamerV3: 0.997).
            lam: lambda of lambda-returns (DreamerV3: 0.95).
        """
        super().__init__()
        self.save_hyperparameters()
        self.context_frames = context_frames
        self.action_dim = action_dim
        self.encoder = ConvEncoder(channels, depth, resolution)
        self.core = RSSMCore(self.encoder.out_dim, action_dim, deter, stoch, classes, hidden, unimix)
        feat = self.core.feat_dim
        self.decoder = ConvDecoder(feat, channels, depth, resolution)
        self.reward_head = mlp(feat, hidden, reward_bins, head_layers, zero_out=True)
        self.continue_head = mlp(feat, hidden, 1, head_layers)
        self.register_buffer("bins", dm.twohot_bins(reward_bins), persistent=False)

    # ---- pieces -------------------------------------------------------------------------------
    def _actions(self, actions: Tensor | None, B: int, T: int, ref: Tensor) -> Tensor:
        """actions [B, >=T, A] or None (only for action_dim 0) -> float [B, T, A]."""
        if actions is None:
            if self.action_dim:
                raise ValueError(f"this RSSM is action-conditioned (action_dim={self.action_dim}); pass actions")
            return ref.new_zeros(B, T, 0)
        if actions.shape[-1] != self.action_dim or actions.shape[1] < T:
            raise ValueError(f"actions {tuple(actions.shape)} do not match [B, >={T}, {self.action_dim}]")
        return actions[:, :T].to(ref)

    def encode(self, video: Tensor) -> Tensor:
        """video uint8 [B, T, C, H, W] -> embeddings [B, T, E]."""
        B, T = video.shape[:2]
        return self.encoder(to_unit(video).flatten(0, 1)).view(B, T, -1)

    def decode(self, feats: Tensor) -> Tensor:
        """features [B, T, F] -> frame means [B, T, C, H, W]."""
        B, T = feats.shape[:2]
        return self.decoder(feats.flatten(0, 1)).view(B, T, *self.decoder_shape)

    @property
    def decoder_shape(self) -> tuple[int, int, int]:
        r = self.hparams.resolution
        return (self.hparams.channels, r, r)

    def predict_reward(self, feats: Tensor) -> Tensor:
        """features [..., F] -> expected reward [...] (symexp of the two-hot mean)."""
        return dm.twohot_decode(self.reward_head(feats), self.bins)

    def observe(self, video: Tensor, actions: Tensor | None, sample: bool = True) -> tuple[RSSMState, RSSMState]:
        """Posterior and prior states [B, T, ...] of a clip (row t of actions taken after frame t)."""
        embeds = self.encode(video)
        B, T = embeds.shape[:2]
        return self.core.observe(embeds, self._actions(actions, B, T, embeds), sample=sample)

    # ---- loss ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """DreamerV3 world-model loss of a batch -> dict of scalar terms ('loss' is the total)."""
        video = batch["video"]
        B, T = video.shape[:2]
        post, prior = self.observe(video, batch.get("actions"))
        feats = post.features()  # (B, T, F)
        recon = self.decode(feats)
        target = to_unit(video)
        recon_loss = (recon - target).pow(2).flatten(2).sum(-1).mean()
        kl_loss, dyn, rep = dm.kl_balance(post.logits, prior.logits, self.hparams.kl_dyn, self.hparams.kl_rep,
                                          self.hparams.free_bits)
        out = {"recon": recon_loss, "kl": kl_loss.mean(), "kl_dyn": dyn.mean(), "kl_rep": rep.mean()}
        total = self.hparams.recon_scale * recon_loss + out["kl"]
        if T > 1:
            # state t is reached by the step after frame t-1: it predicts that step's reward and end flag
            zeros = torch.zeros(B, T, device=video.device)
            rewards = batch.get("rewards", zeros)[:, :-1].float()
            conts = 1.0 - batch.get("terminals", zeros)[:, :-1].float()
            out["reward"] = dm.twohot_loss(self.reward_head(feats[:, 1:]), rewards, self.bins).mean()
            out["continue"] = dm.bce_continue_loss(self.continue_head(feats[:, 1:]).squeeze(-1), conts).mean()
            total = total + self.hparams.reward_scale * out["reward"] + self.hparams.continue_scale * out["continue"]
        out["loss"] = total
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.loss(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False,
                      batch_size=batch["video"].shape[0])
        self.log("train_loss", out["loss"].detach(), prog_bar=True, batch_size=batch["video"].shape[0])
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.loss(batch)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=batch["video"].shape[0], sync_dist=True)
        self.log("val_loss", out["loss"], prog_bar=True, batch_size=batch["video"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                 eps=1e-8)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.hparams.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.grad_clip)

    # ---- imagination and the WorldModel contract ------------------------------------------------
    def imagine(
        self,
        start: RSSMState,
        horizon: int,
        actions: Tensor | None = None,
        policy: Callable[[Tensor], Tensor] | None = None,
        sample: bool = True,
    ) -> Imagination:
        """Roll the prior from start states [B, ...] for `horizon` steps under actions [B, H, A] or a policy.

        policy: features [B, F] -> action [B, A]; used when `actions` is None.
        """
        if (actions is None) == (policy is None):
            raise ValueError("pass exactly one of actions or policy")
        state, feats, acts = start, [], []
        for t in range(horizon):
            a = actions[:, t] if actions is not None else policy(state.features())
            state = self.core.img_step(state, a.to(state.h), sample)
            feats.append(state.features())
            acts.append(a)
        f = torch.stack(feats, 1)
        conts = torch.sigmoid(self.continue_head(f).squeeze(-1))
        return Imagination(f, self.predict_reward(f), conts, torch.stack(acts, 1))

    def imagined_returns(self, imag: Imagination, values: Tensor) -> Tensor:
        """Lambda-returns [B, H] of an imagination given values [B, H + 1] of its start and imagined states."""
        h = self.hparams
        return dm.lambda_returns(imag.rewards, values, imag.continues, h.gamma, h.lam)

    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        future: Tensor | None = None,
    ) -> Rollout:
        """Observe context uint8 [B, Tc, C, H, W], then predict `horizon` frames open-loop from the prior.

        actions: [B, Tc + horizon, A]; row Tc - 1 leads from the last context frame to the first prediction.
        Latents are the model features [B, horizon, D + S*K]; target_latents are the posterior features
        of `future` (observed after the context with the true actions) when it is given.
        """
        B, Tc = context.shape[:2]
        context = context.to(self.device)
        future = future.to(self.device) if future is not None else None
        acts = self._actions(actions, B, Tc + horizon, context.float())
        post, _ = self.observe(context, acts[:, :Tc], sample=False)
        imag = self.imagine(last_state(post), horizon, actions=acts[:, Tc - 1: Tc - 1 + horizon], sample=False)
        frames = self.decode(imag.features).clamp(0, 1)
        target = None
        if future is not None:
            full, _ = self.observe(torch.cat([context, future[:, :horizon]], 1), acts, sample=False)
            target = full.features()[:, Tc:]
        return Rollout(frames=frames, latents=imag.features, target_latents=target, rewards=imag.rewards)

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        """video uint8 [B, T, C, H, W] -> posterior features [B, T, D + S*K] observed with no-op (zero) actions."""
        B, T = video.shape[:2]
        video = video.to(self.device)
        zeros = None if not self.action_dim else torch.zeros(B, T, self.action_dim, device=video.device)
        post, _ = self.observe(video, zeros, sample=False)
        return post.features()
