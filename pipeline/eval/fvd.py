"""Fréchet distance between two feature sets, in float64, from streaming sums. Torch only.

The square-root trace term uses symmetric eigendecompositions only: with A = S1^1/2,
tr sqrt(S1 S2) = tr sqrt(A S2 A), and A S2 A is symmetric positive semi-definite, so its eigenvalues
come from `eigvalsh` (clamped at 0 against round-off). Taking `eigvalsh` of the non-symmetric
product S1 S2 would be wrong; `scipy.linalg.sqrtm` of it is right but slow (see `wm bench frechet`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def _psd_sqrt(cov: Tensor) -> Tensor:
    """Symmetric square root of a covariance [D, D] (eigenvalues clamped at 0)."""
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    """tr sqrt(cov1 @ cov2) for symmetric PSD [D, D] matrices, via eigh / eigvalsh only."""
    a = _psd_sqrt(cov1.double())
    m = a @ cov2.double() @ a
    m = 0.5 * (m + m.T)  # symmetric up to round-off; make it exact for eigvalsh
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr sqrt(cov1 cov2), a float64 scalar.

    mu: [D]; cov: [D, D].
    """
    mu1, mu2, cov1, cov2 = mu1.double(), mu2.double(), cov1.double(), cov2.double()
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"cov {tuple(cov1.shape)}/{tuple(cov2.shape)}")
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2)
    return value.clamp_min(0)  # a distance; tiny negatives are round-off


def stats_from_sums(total: Tensor, outer: Tensor, count: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] from sum x [D], sum x x^T [D, D] and the count."""
    n = float(count)
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {int(n)}")
    mu = total.double() / n
    cov = (outer.double() - n * torch.outer(mu, mu)) / (n - 1.0)
    return mu, 0.5 * (cov + cov.T)


def frechet_distance_from_features(feats1: Tensor, feats2: Tensor) -> Tensor:
    """Fréchet distance between two feature sets [N1, D] and [N2, D] (float64 statistics)."""
    stats = []
    for f in (feats1, feats2):
        f = f.double()
        stats.append(stats_from_sums(f.sum(0), f.T @ f, f.shape[0]))
    return frechet_distance(*stats[0], *stats[1])


class FrechetDistance(Metric):
    """Streaming Fréchet distance: float64 sums of x and x x^T per set, summed across ranks.

    update(features [N, D], real: bool); compute() -> float64 scalar. Needs >= 2 samples per set.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, dim: int = 400, **kwargs) -> None:
        """dim: feature dimension (400 I3D logits)."""
        super().__init__(**kwargs)
        self.dim = dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def set_dtype(self, dst_type: torch.dtype) -> Metric:
        """Keep the float64 states: precision is the point of this metric."""
        return self

    def update(self, features: Tensor, real: bool) -> None:
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got {tuple(features.shape)}")
        f = features.detach().double()
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])

    def compute(self) -> Tensor:
        mu1, cov1 = stats_from_sums(self.real_sum, self.real_outer, self.real_count)
        mu2, cov2 = stats_from_sums(self.fake_sum, self.fake_outer, self.fake_count)
        return frechet_distance(mu1, cov1, mu2, cov2)
