"""Video Vision Transformer: tubelet patches, 3-D sin-cos positions or 3-D RoPE, pre-norm blocks. Torch only.

Attention goes through `F.scaled_dot_product_attention`, so the fused kernels (flash / memory-efficient)
run on GPUs and bf16 autocast needs nothing special.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.nn.masks import apply_masks
from pipeline.nn.pos import apply_rope, grid_coords, rope_angles, sincos_3d

Rope = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Multi-head self-attention; optional rotary positions and attention mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """x: [B, N, D]; attn_mask: [N, N] bool (True = may attend) or None -> [B, N, D]."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, rope: Rope | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (the ViT / V-JEPA recipe)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: video [B, C, T, H, W] -> tokens [B, T/tt * H/p * W/p, D] (time-major)."""

    def __init__(self, dim: int, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=kernel, stride=kernel)

    def grid(self, video_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a [B, C, T, H, W] video; sizes must be multiples of the tubelet."""
        t, h, w = video_shape[-3:]
        tt, p = self.tubelet_size, self.patch_size
        if t % tt or h % p or w % p:
            raise ValueError(f"video of {t}x{h}x{w} is not divisible into {tt}x{p}x{p} tubelets")
        return t // tt, h // p, w // p

    def forward(self, video: Tensor) -> Tensor:
        self.grid(video.shape)
        # weights cast to bf16 by DeepSpeed (no autocast there) need the pixels in their dtype too
        return self.proj(video.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


class VideoViT(nn.Module):
    """Video ViT encoder (V-JEPA's context / target encoder).

    forward(video [B, C, T, H, W] float, mask [B, K] long token indices or None) -> [B, K or N, D];
    positions are added (or rotated in) before masking, so kept tokens keep their place in the clip.
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        use_rope: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.use_rope = dim, heads, use_rope
        self.patch_embed = PatchEmbed3D(dim, patch_size, tubelet_size, in_chans)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        init_weights(self)

    def forward(self, video: Tensor, mask: Tensor | None = None) -> Tensor:
        grid = self.patch_embed.grid(video.shape)
        x = self.patch_embed(video)  # (B, N, D)
        coords = grid_coords(grid, x.device).expand(x.shape[0], -1, -1)  # (B, N, 3)
        rope = None
        if not self.use_rope:
            x = x + sincos_3d(self.dim, coords[0]).to(x.dtype)
        if mask is not None:
            x, coords = apply_masks(x, mask), apply_masks(coords, mask)
        if self.use_rope:
            rope = rope_angles(coords, self.dim // self.heads)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)
