"""Predictors: masked (one mask token per generator), frame-causal with action tokens, and the pixel decoder."""

from __future__ import annotations

import torch

from pipeline.nn.predictor import FrameCausalPredictor, MaskedPredictor, TokenDecoder, frame_causal_mask


def test_masked_predictor_outputs_one_embedding_per_target_and_uses_the_generators_token() -> None:
    torch.manual_seed(0)
    pred = MaskedPredictor(enc_dim=32, dim=16, depth=2, heads=4, num_mask_tokens=2)
    assert pred.mask_tokens.shape == (2, 1, 1, 16)
    ctx = torch.randn(2, 5, 32)
    cm, tm = torch.tensor([[0, 1, 2, 3, 4]] * 2), torch.tensor([[10, 11, 12]] * 2)
    out0, out1 = pred(ctx, (2, 4, 4), cm, tm, 0), pred(ctx, (2, 4, 4), cm, tm, 1)
    assert out0.shape == (2, 3, 32)
    assert not torch.allclose(out0, out1)
    other = pred(ctx, (2, 4, 4), cm, torch.tensor([[20, 21, 22]] * 2), 0)  # positions of the targets matter
    assert not torch.allclose(out0, other)


def test_frame_causal_predictor_never_sees_later_frames_or_actions() -> None:
    torch.manual_seed(0)
    pred = FrameCausalPredictor(enc_dim=32, action_dim=4, dim=16, depth=2, heads=4)
    z, a = torch.randn(2, 4, 6, 32), torch.randn(2, 4, 4)
    out = pred(z, a, (2, 3))
    assert out.shape == (2, 4, 6, 32)
    z2, a2 = z.clone(), a.clone()
    z2[:, 2:] += 5.0
    a2[:, 2:] += 5.0
    out2 = pred(z2, a2, (2, 3))
    torch.testing.assert_close(out2[:, :2], out[:, :2])
    assert not torch.allclose(out2[:, 2:], out[:, 2:])
    a3 = a.clone()
    a3[:, 1] += 1.0  # the action after frame 1 changes the prediction from frame 1 on
    out3 = pred(z, a3, (2, 3))
    torch.testing.assert_close(out3[:, :1], out[:, :1])
    assert not torch.allclose(out3[:, 1], out[:, 1])
    assert frame_causal_mask(2, 2).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_token_decoder_inverts_the_tubelet_layout() -> None:
    b, t, c, h, w, p, tt = 2, 4, 3, 16, 24, 8, 2
    video = torch.randn(b, t, c, h, w)
    # patchify in the encoder's token order (t', h', w') with channels (tt, C, p, p)
    tokens = video.reshape(b, t // tt, tt, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
    tokens = tokens.reshape(b, -1, tt * c * p * p)
    dec = TokenDecoder(enc_dim=tt * c * p * p, patch_size=p, tubelet_size=tt, channels=c)
    dec.norm = torch.nn.Identity()
    with torch.no_grad():
        dec.proj.weight.copy_(torch.eye(tt * c * p * p))
        dec.proj.bias.zero_()
    torch.testing.assert_close(dec(tokens, (t // tt, h // p, w // p)), video)
