"""JEPA L1 loss on layer-normed targets and the collapse monitors."""

from __future__ import annotations

import pytest
import torch

from pipeline.nn.losses import collapse_monitors, effective_rank, embedding_std, jepa_l1, normed_targets
from pipeline.nn.vit import VideoViT


def test_targets_are_layer_normed_without_affine() -> None:
    h = torch.randn(2, 5, 16) * 7 + 3
    t = normed_targets(h)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(normed_targets(h * 10 + 1), t, atol=1e-4, rtol=0)  # scale-free regression target


def test_l1_is_averaged_over_mask_generators() -> None:
    p1, t1 = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    p2, t2 = torch.zeros(2, 5, 4), torch.full((2, 5, 4), 3.0)
    assert jepa_l1([p1], [t1]).item() == pytest.approx(1.0)
    assert jepa_l1([p1, p2], [t1, t2]).item() == pytest.approx(2.0)  # not weighted by token counts (15 vs 25)
    with pytest.raises(ValueError, match="one target per prediction"):
        jepa_l1([p1], [])


def test_monitors_read_zero_std_and_unit_rank_for_a_collapsed_encoder() -> None:
    torch.manual_seed(0)
    enc = VideoViT(dim=32, depth=2, heads=4, patch_size=8, tubelet_size=2)
    video = torch.randn(6, 3, 4, 32, 32)
    healthy = collapse_monitors(enc(video))
    with torch.no_grad():  # a collapsed encoder: every token of every clip maps to the same vector
        enc.norm.weight.zero_()
        enc.norm.bias.copy_(torch.linspace(-1, 1, 32))
    collapsed = collapse_monitors(enc(video))
    assert collapsed["target_std"].item() < 1e-6
    assert collapsed["target_rank"].item() == pytest.approx(1.0, abs=1e-3)
    assert healthy["target_std"].item() > 1e-2
    assert healthy["target_rank"].item() > 10.0


def test_effective_rank_of_known_spectra() -> None:
    assert effective_rank(torch.eye(8)).item() == pytest.approx(8.0, rel=1e-4)
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))).item() == pytest.approx(2.0, rel=1e-4)
    assert embedding_std(torch.tensor([[0.0, 2.0], [2.0, 2.0]])).item() == pytest.approx(0.5)
