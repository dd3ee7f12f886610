from __future__ import annotations

import pytest
import torch

from pipeline.nn.dit import NoiseLevelEmbedder, VideoDiT, sincos_2d
from pipeline.nn.edm import EDM


def _randomise_zero_init(net: VideoDiT, seed: int = 0) -> VideoDiT:
    """adaLN-Zero starts every block as the identity and the output at 0: give those layers values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in net.blocks:
            block.ada[1].weight.copy_(0.2 * torch.randn(block.ada[1].weight.shape, generator=gen))
        for layer in (net.final_ada[1], net.final):
            layer.weight.copy_(0.2 * torch.randn(layer.weight.shape, generator=gen))
        if net.null_action is not None:
            net.null_action.copy_(torch.randn(net.null_action.shape, generator=gen))
    return net


def _net(**kw) -> VideoDiT:
    torch.manual_seed(0)
    args = dict(in_channels=3, patch_size=4, width=32, depth=2, heads=4, action_dim=4)
    args.update(kw)
    return _randomise_zero_init(VideoDiT(**args).eval())


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_shapes_and_adaln_zero_start(attention: str) -> None:
    torch.manual_seed(0)
    net = VideoDiT(3, patch_size=4, width=32, depth=2, heads=4, attention=attention)
    x = torch.randn(2, 5, 3, 16, 24)
    out = net(x, torch.zeros(2, 5))
    assert out.shape == (2, 5, 3, 16, 24)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    out = _randomise_zero_init(net)(x, torch.zeros(2, 5))
    assert out.abs().mean() > 0.01 and torch.isfinite(out).all()


def test_noise_level_embedding_distinguishes_context_from_future() -> None:
    torch.manual_seed(0)
    emb = NoiseLevelEmbedder(32)
    edm = EDM()
    _, _, _, c_ctx = edm.scalings(torch.tensor([0.02, 0.03]))
    _, _, _, c_fut = edm.scalings(torch.tensor([1.0, 5.0]))
    e = emb(torch.stack([c_ctx, c_fut])[None])[0]  # (2, 2, 32): [context pair, future pair]
    within_ctx = (e[0, 0] - e[0, 1]).norm()
    across = (e[0, 0] - e[1, 0]).norm()
    assert across > 2.5 * within_ctx
    cos = torch.nn.functional.cosine_similarity(e[0, 0], e[1, 1], dim=0)
    assert cos < 0.8


def test_each_frame_is_conditioned_on_its_own_level_and_causality_holds() -> None:
    net = _net()
    x = torch.randn(1, 4, 3, 16, 16)
    levels = torch.tensor([[-1.0, -1.0, 0.5, 0.5]])
    base = net(x, levels, torch.zeros(1, 4, 4))
    changed = levels.clone()
    changed[0, 2] = -1.0  # frame 2 now looks like a context frame
    out = net(x, changed, torch.zeros(1, 4, 4))
    diff = (out - base).abs().flatten(2).amax(-1)[0]
    assert diff[:2].max() == 0  # earlier frames never see later frames (causal)
    assert diff[2] > 1e-3 and diff[3] > 1e-6  # the frame itself and the later frame that attends to it


def test_full_attention_is_frame_causal_too() -> None:
    net = _net(attention="full")
    x = torch.randn(1, 3, 3, 8, 8)
    base = net(x, torch.zeros(1, 3))
    x2 = x.clone()
    x2[:, 2] += 1.0
    diff = (net(x2, torch.zeros(1, 3)) - base).abs().flatten(2).amax(-1)[0]
    assert diff[:2].max() == 0 and diff[2] > 1e-3
    acausal = _net(attention="full", causal=False)
    d2 = (acausal(x2, torch.zeros(1, 3)) - acausal(x, torch.zeros(1, 3))).abs().flatten(2).amax(-1)[0]
    assert d2[0] > 1e-4


def test_actions_condition_their_frames_and_dropout_uses_the_null_action() -> None:
    net = _net()
    x, lv = torch.randn(2, 3, 3, 8, 8), torch.zeros(2, 3)
    a = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2], [3, 3, 3]]), 4).float()
    b = a.clone()
    b[:, 1] = torch.nn.functional.one_hot(torch.tensor([2, 0]), 4).float()
    assert (net(x, lv, a) - net(x, lv, b)).abs().max() > 1e-3
    # dropping the actions of clip 0 equals passing no actions for it
    drop = torch.tensor([True, False])
    mixed = net(x, lv, a, drop)
    torch.testing.assert_close(mixed[0], net(x, lv, None)[0])
    torch.testing.assert_close(mixed[1], net(x, lv, a)[1])
    with pytest.raises(ValueError, match="actions have 3 dims"):
        net(x, lv, torch.zeros(2, 3, 3))


def test_bad_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="depth must be even"):
        VideoDiT(depth=3)
    with pytest.raises(ValueError, match="attention must be"):
        VideoDiT(attention="axial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not divisible by patch size"):
        VideoDiT(patch_size=4)(torch.zeros(1, 1, 3, 10, 8), torch.zeros(1, 1))
    assert sincos_2d(2, 3, 8).shape == (6, 8)
