from __future__ import annotations

import math

import pytest
import torch

from pipeline.nn.edm import (
    EDM,
    RectifiedFlow,
    build_objective,
    cfg_combine,
    masked_frame_mean,
    network_evaluations,
    sample,
)


def test_edm_scalings_match_the_formulas() -> None:
    edm = EDM(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 2.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.scalings(sigma)
    for i, s in enumerate(sigma.tolist()):
        var = s**2 + 0.25
        assert c_skip[i].item() == pytest.approx(0.25 / var, rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * 0.5 / math.sqrt(var), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(var), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
    # at sigma = sigma_data: c_skip = 1/2, c_out = sigma_data / sqrt(2), c_in = 1 / (sigma_data sqrt(2))
    assert c_skip[1].item() == pytest.approx(0.5)
    assert c_out[1].item() == pytest.approx(0.5 / math.sqrt(2))
    assert c_in[1].item() == pytest.approx(math.sqrt(2))
    # the EDM loss weight is 1 / c_out^2 (unit-variance effective training target)
    torch.testing.assert_close(edm.loss_weight(sigma), 1 / c_out**2)


def test_edm_denoiser_returns_its_input_as_sigma_goes_to_zero() -> None:
    edm = EDM()
    x = torch.randn(2, 3, 3, 4, 4)

    def wild_net(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return 100 * torch.sin(x_in * 7) + 5  # whatever the network says

    err = [(edm.denoise(wild_net, x, torch.full((2, 3), s)) - x).abs().max().item() for s in (1e-2, 1e-4, 1e-6)]
    assert err[0] > err[1] > err[2] and err[2] < 1e-3
    # and at large sigma the output is the network's (c_skip -> 0)
    big = edm.denoise(wild_net, x, torch.full((2, 3), 1e4))
    torch.testing.assert_close(big, 0.5 * wild_net(x / 1e4, None), rtol=1e-3, atol=1e-3)


def test_per_frame_levels_scale_each_frame_separately() -> None:
    edm = EDM()
    x0, noise = torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 2, 1, 2, 2)
    noisy = edm.add_noise(x0, torch.tensor([[0.1, 3.0]]), noise)
    assert noisy[0, 0].unique().tolist() == [pytest.approx(0.1)] and noisy[0, 1].unique().tolist() == [3.0]
    flow = RectifiedFlow()
    x0 = torch.full((1, 2, 1, 2, 2), 2.0)
    mixed = flow.add_noise(x0, torch.tensor([[0.0, 1.0]]), noise)
    assert mixed[0, 0].unique().tolist() == [2.0] and mixed[0, 1].unique().tolist() == [1.0]


def test_masked_frame_mean_counts_only_masked_frames() -> None:
    per = torch.tensor([[1.0, 3.0, 100.0]])[..., None, None, None].expand(1, 3, 2, 2, 2)
    assert masked_frame_mean(per, torch.tensor([[True, True, False]])).item() == pytest.approx(2.0)


def test_edm_log_normal_training_levels() -> None:
    edm = EDM(p_mean=-1.2, p_std=1.2)
    s = edm.train_levels((20000,), torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.03)
    t = RectifiedFlow().train_levels((20000,), torch.Generator().manual_seed(0))
    assert 0 < t.min().item() and t.max().item() < 1 and t.median().item() == pytest.approx(0.5, abs=0.02)


def test_sampling_schedules() -> None:
    edm = EDM(sigma_min=0.002, sigma_max=5.0, rho=7.0)
    lv = edm.sampling_levels(3)
    assert lv.tolist()[0] == pytest.approx(5.0) and lv.tolist()[2] == pytest.approx(0.002) and lv[-1] == 0
    mid = ((5.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # rho-spaced midpoint
    assert lv[1].item() == pytest.approx(mid, rel=1e-5)
    assert torch.all(lv[1:] < lv[:-1])
    torch.testing.assert_close(RectifiedFlow().sampling_levels(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = RectifiedFlow(shift=3.0).sampling_levels(2)
    assert shifted[1].item() == pytest.approx(1.5 / 2.0)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert network_evaluations(3, "euler") == 3 and network_evaluations(3, "heun") == 5
    with pytest.raises(ValueError, match="steps"):
        edm.sampling_levels(0)


def _gaussian_oracle(objective: EDM | RectifiedFlow, s: float):
    """The exact denoiser E[x0 | x] for data x0 ~ N(0, s^2) per element."""

    def denoise(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        lv = level[..., None, None, None].double()
        if isinstance(objective, EDM):
            return x * s**2 / (lv**2 + s**2)
        return x * (1 - lv) * s**2 / ((1 - lv) ** 2 * s**2 + lv**2)

    return denoise


@pytest.mark.parametrize("name", ["edm", "rectified_flow"])
def test_samplers_integrate_the_probability_flow_ode(name: str) -> None:
    s = 0.5
    objective = build_objective(name)
    noise = torch.randn(2, 1, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for steps in (10, 40):
        lv = objective.sampling_levels(steps).double()
        # Gaussian data: the flow is linear, x(0) = s * x(l_max) / sqrt(l_max^2 + s^2) (EDM) or s * n (flow)
        exact = noise * s * lv[0] / math.sqrt(lv[0] ** 2 + s**2) if name == "edm" else noise * s
        for method in ("euler", "heun"):
            out = sample(_gaussian_oracle(objective, s), noise, lv, method)
            errors[method, steps] = (out - exact).abs().max().item()
    assert errors["heun", 40] < 5e-3 and errors["heun", 40] < errors["euler", 40] < 0.06
    # first order: 4x the steps cut the error ~4x; second order (Heun): ~16x
    assert 3.0 < errors["euler", 10] / errors["euler", 40] < 5.5
    assert errors["heun", 10] / errors["heun", 40] > 10.0


def test_sampler_reaches_a_point_mass_in_one_euler_step() -> None:
    target = torch.full((1, 2, 1, 2, 2), 0.3)
    noise = torch.randn(1, 2, 1, 2, 2)
    out = sample(lambda x, lv: target.expand_as(x), noise, EDM().sampling_levels(1), "euler")
    torch.testing.assert_close(out, target)
    with pytest.raises(ValueError, match="sampler"):
        sample(lambda x, lv: x, noise, EDM().sampling_levels(1), "ddim")  # type: ignore[arg-type]


def test_rectified_flow_denoiser_inverts_the_interpolation() -> None:
    flow = RectifiedFlow()
    gen = torch.Generator().manual_seed(1)
    x0, n = torch.randn(2, 3, 1, 4, 4, generator=gen), torch.randn(2, 3, 1, 4, 4, generator=gen)
    t = torch.rand(2, 3, generator=gen)

    def true_velocity(x_in: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return n - x0

    torch.testing.assert_close(flow.denoise(true_velocity, flow.add_noise(x0, t, n), t), x0)
    assert flow.loss(true_velocity, x0, t, n, torch.ones(2, 3, dtype=torch.bool)).item() == pytest.approx(0.0)
    assert flow.loss(lambda a, b: torch.zeros_like(a), x0, t, n, torch.ones(2, 3)).item() > 1.0


def test_cfg_combine() -> None:
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), torch.tensor([3.0, -2.0]))


def test_bad_objective_settings_fail() -> None:
    with pytest.raises(ValueError, match="objective"):
        build_objective("ddpm")
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(sigma_min=1.0, sigma_max=0.5)
