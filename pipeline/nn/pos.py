"""Positions of video tokens: fixed 3-D sin-cos embeddings and 3-D rotary embeddings (RoPE). Torch only.

Tokens are laid out time-major: index = (t * H + h) * W + w on a [T, H, W] token grid.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_coords(grid: tuple[int, int, int], device: torch.device | None = None) -> Tensor:
    """Integer (t, h, w) coordinates of every token of a [T, H, W] grid: [T*H*W, 3] long, time-major."""
    t, h, w = grid
    axes = [torch.arange(n, device=device) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """Sin-cos embedding of positions: pos [N] -> [N, dim] (dim even), as in the MAE / V-JEPA code."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_split(dim: int) -> tuple[int, int, int]:
    """Channels given to (t, h, w): a quarter to time, the rest shared by height and width, all even."""
    dt = (dim // 4) // 2 * 2
    dh = ((dim - dt) // 2) // 2 * 2
    return dt, dh, dh


def sincos_3d(dim: int, coords: Tensor) -> Tensor:
    """Fixed 3-D sin-cos position embedding: coords [N, 3] (t, h, w) -> [N, dim] float32.

    Channels left over when `dim` does not split evenly are zero.
    """
    dt, dh, dw = sincos_split(dim)
    parts = [sincos_1d(d, coords[:, i]) for i, d in enumerate((dt, dh, dw)) if d > 0]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb


def rope_split(head_dim: int) -> int:
    """Channels of each axis (t, h, w) rotated by 3-D RoPE: an even third of the head dimension."""
    return (head_dim // 3) // 2 * 2


def rope_angles(coords: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles: coords [B, N, 3] -> two tensors [B, 1, N, 3 * rope_split(head_dim) / 2]."""
    d = rope_split(head_dim)
    if d == 0:
        raise ValueError(f"head dimension {head_dim} is too small for 3-D RoPE (needs >= 6)")
    freqs = 1.0 / base ** (torch.arange(0, d, 2, device=coords.device, dtype=torch.float32) / d)
    angles = torch.cat([coords[..., i : i + 1].float() * freqs for i in range(3)], dim=-1)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first channels of queries or keys: x [B, heads, N, head_dim]; cos, sin from `rope_angles`.

    Channel pairs (2i, 2i+1) of the rotated part are rotated by the angle of pair i; the channels after
    the rotated part (head_dim not divisible by 6) pass through unchanged.
    """
    n = 2 * cos.shape[-1]
    rot, rest = x[..., :n].float(), x[..., n:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([out.to(x.dtype), rest], dim=-1)
