from __future__ import annotations

import math

import pytest
import torch

from pipeline.nn import dreamer_math as dm


def test_symlog_symexp_are_inverse_and_match_formula() -> None:
    x = torch.tensor([-1e6, -300.0, -1.0, -1e-3, 0.0, 1e-3, 2.5, 1e4], dtype=torch.float64)
    torch.testing.assert_close(dm.symexp(dm.symlog(x)), x, rtol=1e-10, atol=1e-12)
    assert dm.symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert dm.symlog(torch.tensor(-(math.e**2 - 1))).item() == pytest.approx(-2.0)
    y = torch.linspace(-20, 20, 101, dtype=torch.float64)
    torch.testing.assert_close(dm.symlog(dm.symexp(y)), y)


def test_twohot_encode_weights_and_round_trip() -> None:
    bins = dm.twohot_bins(255)
    assert bins.shape == (255,) and bins[0] == -20 and bins[-1] == 20 and bins[127] == 0
    x = torch.tensor([-25.0, -20.0, -3.21, 0.0, 0.05, 7.77, 20.0, 33.0])
    code = dm.twohot_encode(x, bins)
    assert code.shape == (8, 255)
    torch.testing.assert_close(code.sum(-1), torch.ones(8))
    assert ((code > 0).sum(-1) <= 2).all()
    # mass sits on the two neighbouring bins with linear weights: expectation reproduces x (clamped)
    torch.testing.assert_close((code * bins).sum(-1), x.clamp(-20, 20), atol=1e-5, rtol=0)
    step = 40 / 254
    assert code[4, 127].item() == pytest.approx(1 - 0.05 / step, abs=1e-5)
    assert code[4, 128].item() == pytest.approx(0.05 / step, abs=1e-5)
    # decode(log code) -> symexp of the expectation: real-space round trip through symlog
    rewards = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1.0, 42.0])
    logits = dm.twohot_encode(dm.symlog(rewards), bins).clamp_min(1e-30).log()
    torch.testing.assert_close(dm.twohot_decode(logits, bins), rewards, rtol=1e-4, atol=1e-4)


def test_twohot_loss_is_minimal_at_the_target_code() -> None:
    bins = dm.twohot_bins(255)
    target = torch.tensor([3.0])
    good = dm.twohot_encode(dm.symlog(target), bins).clamp_min(1e-9).log()
    bad = dm.twohot_encode(dm.symlog(-target), bins).clamp_min(1e-9).log()
    assert dm.twohot_loss(good, target, bins) < dm.twohot_loss(bad, target, bins)
    # zero logits (zero-initialised head) give the uniform cross-entropy log(K)
    assert dm.twohot_loss(torch.zeros(1, 255), target, bins).item() == pytest.approx(math.log(255), rel=1e-5)


def test_unimix_floors_every_probability() -> None:
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0]])
    probs = dm.unimix_logits(logits, 0.01).exp()
    torch.testing.assert_close(probs, torch.tensor([[0.99 + 0.0025, 0.0025, 0.0025, 0.0025]]))
    assert dm.unimix_logits(logits, 0.0) is logits


def test_kl_categorical_known_values() -> None:
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()  # S=2 variables, K=2 classes
    q = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).log()
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # second variable contributes 0
    assert dm.kl_categorical(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert dm.kl_categorical(q, q).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_balance_weights_free_bits_and_gradient_routing() -> None:
    q = torch.tensor([[[0.5, 0.5]]]).log()  # [B=1, S=1, K=2]
    p = torch.tensor([[[0.99, 0.01]]]).log()
    kl = dm.kl_categorical(q, p).item()  # ~1.61 nats, above the 1-nat budget
    assert kl > 1
    post, prior = q.clone().requires_grad_(), p.clone().requires_grad_()
    loss, dyn, rep = dm.kl_balance(post, prior, 0.5, 0.1, 1.0)
    assert loss.item() == pytest.approx(0.6 * kl, rel=1e-6)
    assert dyn.item() == pytest.approx(kl) and rep.item() == pytest.approx(kl)
    # the dynamics term moves the prior only, the representation term the posterior only
    dyn.sum().backward()
    assert post.grad is None and prior.grad.abs().sum() > 0
    # under the free-bits budget the loss is the constant 0.6 nats and carries no gradient
    post2 = torch.tensor([[[0.5, 0.5]]]).log().requires_grad_()
    prior2 = torch.tensor([[[0.6, 0.4]]]).log().requires_grad_()
    loss2, dyn2, _ = dm.kl_balance(post2, prior2, 0.5, 0.1, 1.0)
    assert dyn2.item() < 1 and loss2.item() == pytest.approx(0.6)
    loss2.sum().backward()
    assert post2.grad.abs().sum() == 0 and prior2.grad.abs().sum() == 0
    loss3, _, _ = dm.kl_balance(q, p, dyn_scale=1.0, rep_scale=0.0, free_bits=2.0)
    assert loss3.item() == pytest.approx(2.0)


def test_lambda_returns_hand_computed_with_terminal() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 3.0, 10.0]])
    continues = torch.tensor([[1.0, 0.0, 1.0]])  # the second step ends the episode
    g, lam = 0.9, 0.5
    r2 = 2.0 + g * 1.0 * ((1 - lam) * 10.0 + lam * 10.0)  # 11.0
    r1 = 0.0 + g * 0.0 * ((1 - lam) * 3.0 + lam * r2)  # 0: nothing after the terminal counts
    r0 = 1.0 + g * 1.0 * ((1 - lam) * 1.0 + lam * r1)  # 1.45
    out = dm.lambda_returns(rewards, values, continues, g, lam)
    torch.testing.assert_close(out, torch.tensor([[r0, r1, r2]]))
    assert out[0].tolist() == pytest.approx([1.45, 0.0, 11.0])
    # lam=1: Monte-Carlo return bootstrapped by the last value; lam=0: one-step TD targets
    mc = dm.lambda_returns(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    torch.testing.assert_close(mc, torch.tensor([[13.0, 12.0, 12.0]]))
    td = dm.lambda_returns(rewards, values, torch.ones(1, 3), 1.0, 0.0)
    torch.testing.assert_close(td, torch.tensor([[2.0, 3.0, 12.0]]))
    with pytest.raises(ValueError, match="values"):
        dm.lambda_returns(rewards, values[:, :3], continues)
