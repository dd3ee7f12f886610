"""Video diffusion transformer (DiT) over per-frame patches. Torch only.

Each frame is patchified on its own; attention runs over space and time, either factorised
(alternating spatial blocks within a frame and temporal blocks across frames at one patch position)
or full (every token of the clip attends to every token). Every block is conditioned by adaLN-Zero
on a per-frame vector: the embedding of that frame's noise level plus the embedding of the action
that led to it, so one network serves any mix of clean context frames and noised future frames.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attention = Literal["factorised", "full"]


def sincos_1d(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """positions: [...] float -> [..., dim] sin-cos features (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sin-cos position table: [h * w, dim] (half the channels per axis, dim divisible by 4)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.cat([sincos_1d(ys.flatten(), dim // 2), sincos_1d(xs.flatten(), dim // 2)], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class NoiseLevelEmbedder(nn.Module):
    """Scalar noise level (the objective's c_noise) per frame -> [..., dim] via sin-cos features and an MLP."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 10.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        """c_noise: [B, T] -> [B, T, dim]. c_noise is of order 1 (EDM: ln(sigma) / 4, flow: t); the scale sets the
        fastest frequency, smooth within near-equal levels yet far apart between near-clean and noised frames."""
        return self.mlp(sincos_1d(c_noise * self.scale, self.freq_dim))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: [B, G, L, D], attention within L (G independent groups); mask: [L, L] bool, True = may attend."""
        b, g, seq, d = x.shape
        # (B*G, 3, heads, L, hd) -> three (B*G, heads, L, hd)
        q, k, v = self.qkv(x).reshape(b * g, seq, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(out.transpose(1, 2).reshape(b, g, seq, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (shift, scale, gate for attention and MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, mod: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x: [B, G, L, D]; mod: self.ada(cond) broadcastable to [B, G, L, 6D]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask, causal)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class VideoDiT(nn.Module):
    """Denoiser network F(x, c_noise, actions) for clips: [B, T, C, H, W] -> [B, T, C_out, H, W].

    With causal=True a frame attends only to itself and earlier frames, so context frames are never
    influenced by the noised future and any context length works with the same weights.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        patch_size: int = 4,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        action_dim: int = 0,
        attention: Attention = "factorised",
        causal: bool = True,
    ) -> None:
        super().__init__()
        if attention not in ("factorised", "full"):
            raise ValueError(f"attention must be 'factorised' or 'full', got {attention!r}")
        if attention == "factorised" and depth % 2:
            raise ValueError(f"factorised attention alternates spatial/temporal blocks: depth must be even ({depth})")
        if width % 4:
            raise ValueError(f"width must be divisible by 4 for the 2-D position table, got {width}")
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.patch_size, self.width, self.attention, self.causal = patch_size, width, attention, causal
        self.action_dim = action_dim
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.noise_embed = NoiseLevelEmbedder(width)
        self.action_embed = nn.Linear(action_dim, width) if action_dim > 0 else None
        # learned "no action" embedding: the unconditional branch of classifier-free guidance
        self.null_action = nn.Parameter(torch.zeros(width)) if action_dim > 0 else None
        self.blocks = nn.ModuleList([DiTBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, patch_size * patch_size * self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.noise_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.noise_embed.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output layer starts at zero
        for block in self.blocks:
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        for layer in (self.final_ada[1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, c_noise: Tensor, actions: Tensor | None, drop_actions: Tensor | None = None) -> Tensor:
        """Per-frame conditioning vector [B, T, D].

        c_noise: [B, T] the objective's noise input per frame; actions: [B, T, A] (row t = the action
        that led to frame t) or None for the unconditional branch; drop_actions: [B] bool, True uses
        the null action for that clip (classifier-free guidance dropout).
        """
        cond = self.noise_embed(c_noise)
        if self.action_embed is None:
            return cond
        null = self.null_action.to(cond.dtype).expand_as(cond)
        if actions is None:
            return cond + null
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions have {actions.shape[-1]} dims, the model was built for {self.action_dim}")
        act = self.action_embed(actions.to(cond.dtype))
        if drop_actions is not None:
            act = torch.where(drop_actions[:, None, None], null, act)
        return cond + act

    def forward(
        self, x: Tensor, c_noise: Tensor, actions: Tensor | None = None, drop_actions: Tensor | None = None
    ) -> Tensor:
        """x [B, T, C, H, W], c_noise [B, T], actions [B, T, A] | None, drop_actions [B] bool -> [B, T, C_out, H, W]."""
        b, t, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"frame size {h}x{w} is not divisible by patch size {p}")
        gh, gw = h // p, w // p
        tokens = self.patch_embed(x.reshape(b * t, c, h, w)).flatten(2).transpose(1, 2)  # (B*T, N, D)
        tokens = tokens.reshape(b, t, gh * gw, self.width)
        pos = sincos_2d(gh, gw, self.width, x.device)[None, None] + sincos_1d(
            torch.arange(t, device=x.device), self.width
        )[None, :, None]
        tokens = tokens + pos.to(tokens.dtype)
        cond = self.condition(c_noise, actions, drop_actions)  # (B, T, D)
        tokens = self._blocks(tokens, cond)
        shift, scale = self.final_ada(cond)[:, :, None].chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))  # (B, T, N, p*p*C_out)
        out = out.reshape(b, t, gh, gw, p, p, self.out_channels).permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(b, t, self.out_channels, h, w)

    def _blocks(self, tokens: Tensor, cond: Tensor) -> Tensor:
        """tokens: [B, T, N, D]; cond: [B, T, D] -> [B, T, N, D]."""
        b, t, n, d = tokens.shape
        if self.attention == "full":
            x = tokens.reshape(b, 1, t * n, d)
            frame = torch.arange(t, device=tokens.device).repeat_interleave(n)
            mask = frame[:, None] >= frame[None, :] if self.causal else None  # frame-causal block mask
            for block in self.blocks:
                mod = block.ada(cond).repeat_interleave(n, dim=1)[:, None]  # (B, 1, T*N, 6D)
                x = block(x, mod, mask=mask)
            return x.reshape(b, t, n, d)
        x = tokens
        for i, block in enumerate(self.blocks):
            mod = block.ada(cond)  # (B, T, 6D)
            if i % 2 == 0:  # spatial: attention among the N patches of each frame
                x = block(x, mod[:, :, None])
            else:  # temporal: attention across the T frames at each patch position
                x = block(x.transpose(1, 2), mod[:, None], causal=self.causal).transpose(1, 2)
        return x
