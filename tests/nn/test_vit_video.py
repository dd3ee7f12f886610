"""Video ViT: tubelet grid, 3-D sin-cos positions, RoPE, masking after positions."""

from __future__ import annotations

import pytest
import torch

from pipeline.nn.pos import apply_rope, grid_coords, rope_angles, sincos_3d, sincos_split
from pipeline.nn.vit import VideoViT


def test_tokens_of_a_clip_follow_the_tubelet_grid() -> None:
    enc = VideoViT(dim=32, depth=2, heads=4, patch_size=8, tubelet_size=2)
    out = enc(torch.randn(2, 3, 8, 32, 48))
    assert out.shape == (2, 4 * 4 * 6, 32)
    assert enc.patch_embed.proj.kernel_size == (2, 8, 8)
    assert VideoViT(dim=64, depth=1, heads=4).patch_embed.proj.kernel_size == (2, 16, 16)  # default 2x16x16
    with pytest.raises(ValueError, match="not divisible into 2x8x8 tubelets"):
        enc(torch.randn(1, 3, 7, 32, 32))


def test_sincos_3d_positions_are_distinct_and_split_over_axes() -> None:
    assert sincos_split(1024) == (256, 384, 384)
    coords = grid_coords((4, 3, 5))
    assert coords.shape == (60, 3) and coords[7].tolist() == [0, 1, 2]  # time-major layout
    emb = sincos_3d(32, coords)
    assert emb.shape == (60, 32)
    assert torch.cdist(emb, emb).add(torch.eye(60) * 1e3).min() > 1e-3  # every token has its own position
    # the time channels only depend on t, the others only on (h, w)
    same_t = emb[(coords[:, 0] == 1)][:, :8]
    torch.testing.assert_close(same_t, same_t[:1].expand_as(same_t))


def test_masked_encoding_keeps_each_tokens_position() -> None:
    torch.manual_seed(0)
    enc = VideoViT(dim=32, depth=0, heads=4, patch_size=8, tubelet_size=2)  # no attention: tokens are independent
    video = torch.randn(2, 3, 4, 32, 32)
    mask = torch.tensor([[0, 5, 17, 31], [3, 4, 20, 30]])
    full = enc(video)
    torch.testing.assert_close(enc(video, mask), torch.gather(full, 1, mask[..., None].expand(-1, -1, 32)))


def test_rope_scores_depend_on_relative_positions_only() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)

    def score(pq: list[int], pk: list[int]) -> float:
        cq, sq = rope_angles(torch.tensor([[pq]]), 12)
        ck, sk = rope_angles(torch.tensor([[pk]]), 12)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score([1, 2, 3], [0, 0, 0]) == pytest.approx(score([3, 5, 7], [2, 3, 4]), abs=1e-5)
    assert score([1, 2, 3], [0, 0, 0]) != pytest.approx(score([1, 2, 3], [0, 1, 0]), abs=1e-3)
    cos, sin = rope_angles(torch.tensor([[[2, 1, 0]]]), 14)  # 14 = 3 * 4 rotated + 2 passed through
    x = torch.randn(1, 1, 1, 14)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(), x.norm())
    torch.testing.assert_close(y[..., 12:], x[..., 12:])


def test_rope_encoder_rotates_instead_of_adding_positions() -> None:
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = torch.tensor([[0, 1, 2], [5, 6, 7]])
    assert VideoViT(dim=48, depth=2, heads=4, patch_size=8, tubelet_size=2, use_rope=True)(video, mask).shape == (
        2,
        3,
        48,
    )
    flat = VideoViT(dim=48, depth=0, heads=4, patch_size=8, tubelet_size=2, use_rope=True)
    plain = flat.norm(flat.patch_embed(video))  # no additive table: positions live in the attention only
    torch.testing.assert_close(flat(video, mask), torch.gather(plain, 1, mask[..., None].expand(-1, -1, 48)))
