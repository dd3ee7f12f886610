from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from pipeline.eval.fvd import FrechetDistance, frechet_distance, frechet_distance_from_features, trace_sqrt_product


def scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent reference: np.cov + scipy.linalg.sqrtm of the (non-symmetric) product."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim,n", [(16, 200), (64, 300)])
def test_matches_scipy_sqrtm(dim: int, n: int) -> None:
    g = torch.Generator().manual_seed(dim)
    f1 = torch.randn(n, dim, generator=g, dtype=torch.float64)
    f2 = torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g).double() * 0.3 + 0.5
    ours = float(frechet_distance_from_features(f1, f2))
    ref = scipy_frechet(f1.numpy(), f2.numpy())
    assert ref > 1.0
    assert abs(ours - ref) / ref < 1e-6


def test_identical_sets_give_zero() -> None:
    f = torch.randn(100, 32, generator=torch.Generator().manual_seed(0))
    assert float(frechet_distance_from_features(f, f)) == pytest.approx(0.0, abs=1e-8)


def test_rank_deficient_covariances_are_clamped() -> None:
    # 5 samples in 40 dims: both covariances have rank 4, eigenvalues at round-off level (some negative).
    g = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(5, 40, generator=g).double(), torch.randn(5, 40, generator=g).double()
    value = frechet_distance_from_features(f1, f2)
    assert torch.isfinite(value) and value > 0
    ref = scipy_frechet(f1.numpy(), f2.numpy())
    assert abs(float(value) - ref) / ref < 1e-6
    # the square-root trace of a PSD matrix with itself is its trace, even at rank 4 of 40
    cov = torch.cov(f1.T)
    assert torch.linalg.eigvalsh(cov).min() < 0  # round-off negatives exist: without the clamp sqrt gives NaN
    assert float(trace_sqrt_product(cov, cov)) == pytest.approx(float(torch.trace(cov)), rel=1e-6)


def test_known_closed_form() -> None:
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d + 4d - 2 * 2d = |m|^2 + d
    d = 8
    mu2 = torch.full((d,), 0.5, dtype=torch.float64)
    value = frechet_distance(torch.zeros(d), torch.eye(d), mu2, 4 * torch.eye(d))
    assert float(value) == pytest.approx(0.25 * d + d, rel=1e-12)


def test_streaming_metric_equals_one_shot_and_merges_states() -> None:
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(60, 12, generator=g), torch.randn(60, 12, generator=g) + 0.3
    one_shot = float(frechet_distance_from_features(real, fake))
    metric = FrechetDistance(dim=12)
    for i in range(0, 60, 16):  # uneven chunks
        metric.update(real[i : i + 16], real=True)
        metric.update(fake[i : i + 16], real=False)
    assert float(metric.compute()) == pytest.approx(one_shot, rel=1e-10)
    assert metric.real_sum.dtype == torch.float64
    # two "ranks" holding halves: summing their states (what dist_reduce_fx='sum' does) gives the same number
    a, b = FrechetDistance(dim=12), FrechetDistance(dim=12)
    a.update(real[:25], real=True), a.update(fake[:40], real=False)
    b.update(real[25:], real=True), b.update(fake[40:], real=False)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(one_shot, rel=1e-10)


def test_bad_shapes_and_too_few_samples_fail() -> None:
    metric = FrechetDistance(dim=4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        metric.update(torch.zeros(3, 5), real=True)
    metric.update(torch.zeros(1, 4), real=True)
    metric.update(torch.zeros(3, 4), real=False)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metric.compute()
