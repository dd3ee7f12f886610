from __future__ import annotations

import pytest
import torch

from pipeline.nn.rssm import ConvDecoder, ConvEncoder, RSSMCore, last_state, sample_straight_through


def test_conv_encoder_decoder_shapes_and_bad_resolution() -> None:
    enc = ConvEncoder(3, depth=8, resolution=64)
    x = torch.rand(5, 3, 64, 64)
    e = enc(x)
    assert e.shape == (5, 8 * 8 * 16) == (5, enc.out_dim)
    dec = ConvDecoder(feat_dim=20, channels=3, depth=8, resolution=64)
    assert dec(torch.randn(5, 20)).shape == (5, 3, 64, 64)
    assert ConvDecoder(20, 3, 8, 32)(torch.randn(2, 20)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="resolution must be 4 \\* 2\\^k"):
        ConvEncoder(3, 8, 48)


def test_straight_through_sample_is_one_hot_with_probability_gradient() -> None:
    logits = torch.randn(6, 4, 5, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    z = sample_straight_through(logits, g)
    assert z.shape == (6, 4, 5)
    torch.testing.assert_close(z.detach().sum(-1), torch.ones(6, 4))
    torch.testing.assert_close(z.detach(), z.detach().round())  # one-hot up to float rounding
    (z * torch.arange(5.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # seeded: the same generator seed gives the same sample
    z2 = sample_straight_through(logits.detach(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.detach(), z2)


def test_core_observe_imagine_shapes_unimix_and_action_shift() -> None:
    torch.manual_seed(0)
    core = RSSMCore(embed_dim=12, action_dim=3, deter=16, stoch=4, classes=5, hidden=16, unimix=0.01)
    B, T = 2, 6
    embeds, actions = torch.randn(B, T, 12), torch.eye(3)[torch.randint(0, 3, (B, T))]
    post, prior = core.observe(embeds, actions)
    assert post.h.shape == (B, T, 16) and post.z.shape == (B, T, 4, 5) and prior.logits.shape == (B, T, 4, 5)
    assert post.features().shape == (B, T, 16 + 20) and core.feat_dim == 36
    # 1% uniform mix: no class below 0.01 / K
    assert post.logits.exp().min() >= 0.01 / 5 - 1e-6 and prior.logits.exp().min() >= 0.01 / 5 - 1e-6
    torch.testing.assert_close(post.logits.exp().sum(-1), torch.ones(B, T, 4))
    # the last action of the clip is taken after the last frame: it cannot change any state of the clip
    other = actions.clone()
    other[:, -1] = torch.tensor([0.0, 0.0, 1.0]) - other[:, -1]
    post2, _ = core.observe(embeds, other, sample=False)
    post1, _ = core.observe(embeds, actions, sample=False)
    torch.testing.assert_close(post1.h, post2.h)
    # ... but an earlier one changes the states after it, not before
    other[:, 2] = 1 - other[:, 2]
    post3, _ = core.observe(embeds, other, sample=False)
    torch.testing.assert_close(post1.h[:, :3], post3.h[:, :3])
    assert not torch.allclose(post1.h[:, 3:], post3.h[:, 3:])
    imag = core.imagine(last_state(post1), torch.eye(3)[torch.zeros(B, 7, dtype=torch.long)], sample=False)
    assert imag.h.shape == (B, 7, 16) and imag.z.shape == (B, 7, 4, 5)
