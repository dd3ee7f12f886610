"""VideoDiffusionModule on synthetic clips: sampling, rollout, actions, guidance, EMA, latent space."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.models.diffusion import VideoDiffusionModule
from pipeline.models.protocol import WorldModel
from pipeline.nn.autoencoder import FrameAutoencoder
from pipeline.nn.dit import VideoDiT


def _module(**kw) -> VideoDiffusionModule:
    torch.manual_seed(0)
    args = dict(frames=8, context_frames=4, resolution=16, action_dim=4, patch_size=4, width=32, depth=2, heads=4)
    args.update(kw)
    return VideoDiffusionModule(**args).eval()


def _randomise(net: VideoDiT, seed: int = 0) -> None:
    """Give the zero-initialised adaLN and output layers values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [b.ada[1] for b in net.blocks] + [net.final_ada[1], net.final]:
            layer.weight.copy_(0.2 * torch.randn(layer.weight.shape, generator=gen))
        if net.null_action is not None:
            net.null_action.copy_(torch.randn(net.null_action.shape, generator=gen))


def _clip(b: int = 2, t: int = 4, side: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, side, side), generator=gen, dtype=torch.uint8)


def _actions(b: int, t: int, seed: int = 0) -> torch.Tensor:
    idx = torch.randint(0, 4, (b, t), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.one_hot(idx, 4).float()


def test_module_implements_the_world_model_contract() -> None:
    m = _module()
    assert isinstance(m, WorldModel) and m.context_frames == 4
    with pytest.raises(ValueError, match="context_frames must be in"):
        _module(context_frames=8)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        _module(patch_size=6)


def test_seeded_sampling_is_deterministic() -> None:
    m = _module()
    _randomise(m.ema_net)
    ctx, act = _clip(), _actions(2, 8)
    a = m.rollout(ctx, act, 4).frames
    b = m.rollout(ctx, act, 4).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = m.rollout(ctx, act, 4, generator=torch.Generator().manual_seed(123)).frames
    assert (a - c).abs().mean() > 1e-3  # another seed, another sample
    heun = _module(sampler="heun")
    heun.load_state_dict(m.state_dict())
    torch.testing.assert_close(heun.rollout(ctx, act, 4).frames, heun.rollout(ctx, act, 4).frames, rtol=0, atol=0)


def test_rollout_of_16_frames_past_a_window_of_8() -> None:
    m = _module()
    _randomise(m.ema_net)
    calls: list[int] = []
    m.ema_net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[1]))
    out = m.rollout(_clip(), _actions(2, 4 + 16), 16)
    frames = out.frames
    assert frames.shape == (2, 16, 3, 16, 16) and out.horizon == 16
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert frames.std() > 0.01
    # 4 chunks of 4 frames, 3 Euler steps each, every call sees 4 context + 4 new frames = the window
    assert calls == [8] * 12
    # chunks are autoregressive: the second chunk depends on the first
    assert (frames[:, 4:8] - frames[:, :4]).abs().mean() > 1e-3


def test_actions_change_the_prediction() -> None:
    m = _module()
    _randomise(m.ema_net)
    ctx, act = _clip(), _actions(2, 8)
    base = m.rollout(ctx, act, 4).frames
    other = act.clone()
    other[:, 4:] = act[:, 4:].roll(1, dims=-1)  # different actions after the context
    changed = m.rollout(ctx, other, 4).frames
    assert (changed - base).abs().mean() > 1e-3
    torch.testing.assert_close(m.rollout(ctx, act.clone(), 4).frames, base)
    with pytest.raises(ValueError, match="actions must be"):
        m.rollout(ctx, act[:, :6], 4)


def test_guidance_scale_one_equals_the_conditional_prediction() -> None:
    m = _module()
    _randomise(m.ema_net)
    x0 = m.encode(_clip(t=8))
    ctx, fut = x0[:, :4], torch.randn_like(x0[:, 4:])
    level = torch.full((2, 4), 0.7)
    act = m.frame_actions(_actions(2, 8))
    cond = m.guided_denoiser(m.ema_net, ctx, act, 1.0)(fut, level)
    uncond = m.guided_denoiser(m.ema_net, ctx, None, 1.0)(fut, level)
    assert (cond - uncond).abs().mean() > 1e-3  # the null action is a different condition
    guided = m.guided_denoiser(m.ema_net, ctx, act, 3.0)(fut, level)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    near_one = m.guided_denoiser(m.ema_net, ctx, act, 1.0 + 1e-7)(fut, level)  # takes the two-branch path
    torch.testing.assert_close(near_one, cond, rtol=1e-5, atol=1e-5)
    guided_rollout = _module(guidance_scale=3.0)
    guided_rollout.load_state_dict(m.state_dict())
    ctx, act = _clip(), _actions(2, 8)
    assert (guided_rollout.rollout(ctx, act, 4).frames - m.rollout(ctx, act, 4).frames).abs().mean() > 1e-3


def test_training_loss_ignores_context_targets_and_needs_actions() -> None:
    m = _module(random_context=False).train()
    batch = {"video": _clip(t=8), "actions": _actions(2, 8)}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = m.diffusion_loss(batch, gen())
    assert torch.isfinite(base) and base.item() > 0
    # changing the last context frame's pixels changes the inputs, not which frames are scored:
    # with a zero network (adaLN-Zero start) the loss depends only on the future frames
    edited = {**batch, "video": batch["video"].clone()}
    edited["video"][:, :4] = 0
    torch.testing.assert_close(m.diffusion_loss(edited, gen()), base)
    with pytest.raises(KeyError, match="no 'actions'"):
        m.diffusion_loss({"video": batch["video"]}, gen())


def test_ema_weights_trail_the_online_weights() -> None:
    m = _module(ema_decay=0.9, lr=1e-2, warmup_steps=1).train()
    opt = torch.optim.AdamW(m.net.parameters(), lr=1e-2)
    init = [p.detach().clone() for p in m.net.parameters()]
    m.update_ema(0)  # step 0: decay min(0.9, 1/10) = 0.1, online == ema still
    for step in range(6):
        opt.zero_grad()
        m.diffusion_loss({"video": _clip(t=8, seed=step), "actions": _actions(2, 8, step)}).backward()
        opt.step()
        before = [p.detach().clone() for p in m.ema_net.parameters()]
        m.update_ema(0)
    # last update followed ema <- d * ema + (1 - d) * online, d = min(0.9, (1 + step) / (10 + step))
    d = min(0.9, 1 / 10)  # step 0 passed each time
    for e, b, o in zip(m.ema_net.parameters(), before, m.net.parameters(), strict=True):
        torch.testing.assert_close(e, d * b + (1 - d) * o)
    online_move = sum((o - i).norm() for o, i in zip(m.net.parameters(), init, strict=True))
    ema_move = sum((e - i).norm() for e, i in zip(m.ema_net.parameters(), init, strict=True))
    gap = sum((e - o).norm() for e, o in zip(m.ema_net.parameters(), m.net.parameters(), strict=True))
    assert gap > 1e-4 and 0 < ema_move < online_move
    assert not any(p.requires_grad for p in m.ema_net.parameters())


def test_latent_space_with_a_frozen_autoencoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    FrameAutoencoder(hidden=8, latent_channels=4, levels=1).save_pretrained(tmp_path / "ae")
    m = _module(autoencoder=str(tmp_path / "ae"), patch_size=2).train()
    assert m.net.in_channels == 4
    ae_before = {k: v.clone() for k, v in m.autoencoder.state_dict().items()}
    batch = {"video": _clip(t=8), "actions": _actions(2, 8)}
    assert m.encode(batch["video"]).shape == (2, 8, 4, 8, 8)
    loss = m.diffusion_loss(batch)
    loss.backward()
    assert all(p.grad is None for p in m.autoencoder.parameters())
    names = {n for g in m.configure_optimizers()["optimizer"].param_groups for n in map(id, g["params"])}
    assert not names & {id(p) for p in m.autoencoder.parameters()}
    for k, v in m.autoencoder.state_dict().items():
        assert torch.equal(v, ae_before[k])
    frames = m.eval().rollout(_clip(), _actions(2, 10), 6).frames
    assert frames.shape == (2, 6, 3, 16, 16) and torch.isfinite(frames).all()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        _module(autoencoder=str(tmp_path / "missing"))


def test_rectified_flow_and_full_attention_variants_train_and_sample() -> None:
    m = _module(objective="rectified_flow", attention="full", sampler="heun", sampling_steps=2).train()
    loss = m.diffusion_loss({"video": _clip(t=8), "actions": _actions(2, 8)})
    loss.backward()
    assert torch.isfinite(loss) and m.net.final.weight.grad.abs().sum() > 0  # adaLN-Zero: the output layer learns first
    frames = m.eval().rollout(_clip(), None, 5).frames
    assert frames.shape == (2, 5, 3, 16, 16) and torch.isfinite(frames).all()
