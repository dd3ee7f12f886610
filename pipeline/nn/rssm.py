"""Recurrent state-space model (DreamerV3 style) building blocks. Torch only.

State: deterministic GRU state h [B, D] and stochastic state z of S categoricals with K classes
(one-hot samples [B, S, K], straight-through gradients). Features = cat(h, flat z) [B, D + S*K].
Action convention of the project: row t of `actions` is the action taken after frame t, so the
state of frame t is reached with action t-1 (zeros before the first frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.nn.dreamer_math import unimix_logits


class ChannelNorm(nn.Module):
    """LayerNorm over the channel dim of [B, C, H, W] maps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _stages(resolution: int) -> int:
    """Stride-2 stages from `resolution` down to 4x4 (64 -> 4 stages)."""
    stages = int(math.log2(resolution // 4)) if resolution >= 8 else 0
    if stages < 1 or 4 * 2**stages != resolution:
        raise ValueError(f"resolution must be 4 * 2^k with k >= 1 (8, 16, 32, 64, ...), got {resolution}")
    return stages


class ConvEncoder(nn.Module):
    """Frames [N, C, H, W] float in [0, 1] -> embeddings [N, out_dim]; stride-2 convs down to 4x4."""

    def __init__(self, channels: int = 3, depth: int = 32, resolution: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i in range(_stages(resolution)):
            cout = depth * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), ChannelNorm(cout), nn.SiLU()]
            cin = cout
        self.net = nn.Sequential(*layers)
        self.out_dim = cin * 16

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x - 0.5).flatten(1)


class ConvDecoder(nn.Module):
    """Features [N, F] -> frames [N, C, H, W] (mean of a unit-variance Gaussian, around [0, 1])."""

    def __init__(self, feat_dim: int, channels: int = 3, depth: int = 32, resolution: int = 64) -> None:
        super().__init__()
        stages = _stages(resolution)
        self.cin = depth * 2 ** (stages - 1)
        self.proj = nn.Linear(feat_dim, self.cin * 16)
        layers: list[nn.Module] = []
        cin = self.cin
        for i in reversed(range(stages - 1)):
            cout = depth * 2**i
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), ChannelNorm(cout), nn.SiLU()]
            cin = cout
        layers.append(nn.ConvTranspose2d(cin, channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        x = self.proj(feat).view(-1, self.cin, 4, 4)  # (N, C, 4, 4)
        return self.net(x) + 0.5


def mlp(din: int, hidden: int, dout: int, layers: int = 1, zero_out: bool = False) -> nn.Sequential:
    """`layers` x (Linear, LayerNorm, SiLU) then a Linear to `dout` (zero-initialised if zero_out)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(din if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.SiLU()]
    out = nn.Linear(hidden if layers else din, dout)
    if zero_out:
        # DreamerV3 zero-initialises reward/value outputs so early predictions are exactly 0
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
    mods.append(out)
    return nn.Sequential(*mods)


@dataclass
class RSSMState:
    """h: [B, D] deterministic; z: [B, S, K] one-hot sample; logits: [B, S, K] of its distribution."""

    h: Tensor
    z: Tensor
    logits: Tensor

    def features(self) -> Tensor:
        """[B, D + S*K] (or [B, T, D + S*K] for a stacked state)."""
        return torch.cat([self.h, self.z.flatten(-2)], -1)


def sample_straight_through(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One-hot sample of each categorical in logits [..., K]; gradients flow through the probabilities."""
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    idx = torch.multinomial(flat.detach().float(), 1, generator=generator).view(probs.shape[:-1])
    onehot = nn.functional.one_hot(idx, probs.shape[-1]).to(probs)
    return onehot + probs - probs.detach()


def mode_straight_through(logits: Tensor) -> Tensor:
    """Most likely class of each categorical as one-hot [..., K] (deterministic imagination)."""
    probs = logits.softmax(-1)
    onehot = nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs)
    return onehot + probs - probs.detach()


class RSSMCore(nn.Module):
    """GRU dynamics with categorical latents: prior p(z | h) and posterior q(z | h, embed)."""

    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        deter: int = 512,
        stoch: int = 32,
        classes: int = 32,
        hidden: int = 512,
        unimix: float = 0.01,
    ) -> None:
        super().__init__()
        self.deter, self.stoch, self.classes, self.unimix = deter, stoch, classes, unimix
        self.action_dim = action_dim
        self.img_in = nn.Sequential(nn.Linear(stoch * classes + action_dim, hidden), nn.LayerNorm(hidden), nn.SiLU())
        self.gru = nn.GRUCell(hidden, deter)
        self.prior_net = mlp(deter, hidden, stoch * classes)
        self.post_net = mlp(deter + embed_dim, hidden, stoch * classes)

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    def initial(self, batch: int, device: torch.device | None = None) -> RSSMState:
        """All-zero state (h = 0, z = 0, uniform logits) before the first frame."""
        z = torch.zeros(batch, self.stoch, self.classes, device=device)
        return RSSMState(torch.zeros(batch, self.deter, device=device), z, z.clone())

    def _logits(self, net: nn.Module, x: Tensor) -> Tensor:
        return unimix_logits(net(x).view(-1, self.stoch, self.classes), self.unimix)

    def _draw(self, logits: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        return sample_straight_through(logits, generator) if sample else mode_straight_through(logits)

    def img_step(
        self, state: RSSMState, action: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> RSSMState:
        """Prior step: previous state [B, ...] and action [B, A] -> next prior state."""
        x = self.img_in(torch.cat([state.z.flatten(1), action], -1))
        h = self.gru(x, state.h)
        logits = self._logits(self.prior_net, h)
        return RSSMState(h, self._draw(logits, sample, generator), logits)

    def obs_step(
        self,
        state: RSSMState,
        action: Tensor,
        embed: Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """Posterior step with the frame's embedding [B, E] -> (posterior, prior) states."""
        prior = self.img_step(state, action, sample, generator)
        logits = self._logits(self.post_net, torch.cat([prior.h, embed], -1))
        return RSSMState(prior.h, self._draw(logits, sample, generator), logits), prior

    def observe(
        self,
        embeds: Tensor,
        actions: Tensor,
        state: RSSMState | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """embeds [B, T, E], actions [B, T, A] (row t taken after frame t) -> stacked (post, prior).

        Stacked states have time on dim 1: h [B, T, D], z and logits [B, T, S, K].
        """
        B, T = embeds.shape[:2]
        state = state or self.initial(B, embeds.device)
        # the state of frame t is reached with the action taken after frame t-1
        prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
        posts, priors = [], []
        for t in range(T):
            state, prior = self.obs_step(state, prev[:, t], embeds[:, t], sample, generator)
            posts.append(state)
            priors.append(prior)
        return stack_states(posts), stack_states(priors)

    def imagine(
        self, state: RSSMState, actions: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> RSSMState:
        """Roll the prior from `state` [B, ...] under actions [B, H, A] -> stacked prior states [B, H, ...]."""
        out = []
        for t in range(actions.shape[1]):
            state = self.img_step(state, actions[:, t], sample, generator)
            out.append(state)
        return stack_states(out)


def stack_states(states: list[RSSMState]) -> RSSMState:
    """List over time of [B, ...] states -> one state with time on dim 1."""
    return RSSMState(*(torch.stack([getattr(s, k) for s in states], 1) for k in ("h", "z", "logits")))


def last_state(states: RSSMState) -> RSSMState:
    """The final time step of a stacked state: [B, T, ...] -> [B, ...]."""
    return RSSMState(states.h[:, -1], states.z[:, -1], states.logits[:, -1])
