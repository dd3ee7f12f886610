"""V-JEPA predictors and a light latent-to-pixel decoder. Torch only.

- `MaskedPredictor`: narrow transformer that predicts target-token embeddings from context tokens and
  one learned mask token per mask generator (V-JEPA).
- `FrameCausalPredictor`: action-conditioned predictor over per-frame latents, one action token per
  frame, block-causal in time (V-JEPA 2-AC).
- `TokenDecoder`: linear tokens -> pixel tubelets, trained on detached latents so pixel metrics can score JEPA.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.nn.masks import apply_masks
from pipeline.nn.pos import grid_coords, rope_angles, sincos_3d
from pipeline.nn.vit import Block, init_weights


class MaskedPredictor(nn.Module):
    """forward(ctx [B, Kc, D], grid, ctx_mask [B, Kc], tgt_mask [B, Kt], generator index) -> [B, Kt, D]."""

    def __init__(
        self,
        enc_dim: int,
        dim: int = 384,
        depth: int = 12,
        heads: int = 12,
        num_mask_tokens: int = 2,
        mlp_ratio: float = 4.0,
        use_rope: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.use_rope = dim, heads, use_rope
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, enc_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.mask_tokens, std=0.02)

    def forward(
        self, ctx: Tensor, grid: tuple[int, int, int], ctx_mask: Tensor, tgt_mask: Tensor, gen: int = 0
    ) -> Tensor:
        b, kc = ctx_mask.shape
        kt = tgt_mask.shape[1]
        coords = grid_coords(grid, ctx.device).expand(b, -1, -1)  # (B, N, 3)
        x = self.embed(ctx)
        tgt = self.mask_tokens[gen].expand(b, kt, -1).to(x.dtype)
        if not self.use_rope:
            pos = sincos_3d(self.dim, coords[0]).to(x.dtype).expand(b, -1, -1)
            x, tgt = x + apply_masks(pos, ctx_mask), tgt + apply_masks(pos, tgt_mask)
        x = torch.cat([x, tgt], dim=1)  # (B, Kc + Kt, dim)
        rope = None
        if self.use_rope:
            rope = rope_angles(
                torch.cat([apply_masks(coords, ctx_mask), apply_masks(coords, tgt_mask)], 1), self.dim // self.heads
            )
        for block in self.blocks:
            x = block(x, rope)
        return self.proj(self.norm(x[:, kc:]))


def frame_causal_mask(frames: int, tokens_per_frame: int, device: torch.device | None = None) -> Tensor:
    """Block-causal attention mask: token i may attend to token j iff frame(j) <= frame(i). [L, L] bool."""
    frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return frame[None, :] <= frame[:, None]


class FrameCausalPredictor(nn.Module):
    """Action-conditioned next-frame predictor over per-frame latents.

    forward(z [B, T, N, D], actions [B, T, A], grid_hw (H', W')) -> [B, T, N, D]; output t predicts z[t + 1].
    Each frame contributes one action token (linear embedding of its action) and its N patch tokens;
    attention is causal across frames and full within a frame.
    """

    def __init__(
        self, enc_dim: int, action_dim: int, dim: int = 384, depth: int = 6, heads: int = 12, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(enc_dim, dim)
        self.action_embed = nn.Linear(action_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, enc_dim)
        init_weights(self)

    def forward(self, z: Tensor, actions: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        b, t, n, _ = z.shape
        h, w = grid_hw
        coords = grid_coords((t, h + 1, w), z.device).reshape(t, h + 1, w, 3)
        # patch tokens at rows 1..H', the action token at row 0 of each frame: all positions distinct
        pos = sincos_3d(self.dim, coords.reshape(-1, 3)).reshape(t, h + 1, w, self.dim).to(z.dtype)
        x = self.embed(z) + pos[:, 1:].reshape(1, t, n, self.dim)
        a = self.action_embed(actions.to(z.dtype))[:, :, None] + pos[:, 0, 0].reshape(1, t, 1, self.dim)
        x = torch.cat([a, x], dim=2).reshape(b, t * (n + 1), self.dim)  # (B, T*(1+N), dim)
        mask = frame_causal_mask(t, n + 1, z.device)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        x = self.norm(x).reshape(b, t, n + 1, self.dim)[:, :, 1:]
        return self.proj(x)


class TokenDecoder(nn.Module):
    """Tokens [B, T'*H'*W', D] on a [T', H', W'] grid -> video [B, T'*tt, C, H'*p, W'*p] (unbounded floats)."""

    def __init__(self, enc_dim: int, patch_size: int, tubelet_size: int, channels: int = 3) -> None:
        super().__init__()
        self.p, self.tt, self.c = patch_size, tubelet_size, channels
        self.norm = nn.LayerNorm(enc_dim)
        self.proj = nn.Linear(enc_dim, tubelet_size * channels * patch_size * patch_size)

    def forward(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        t, h, w = grid
        b, p, tt, c = tokens.shape[0], self.p, self.tt, self.c
        x = self.proj(self.norm(tokens)).reshape(b, t, h, w, tt, c, p, p)
        # (B, t, h, w, tt, C, p, p) -> (B, t, tt, C, h, p, w, p)
        return x.permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(b, t * tt, c, h * p, w * p)
